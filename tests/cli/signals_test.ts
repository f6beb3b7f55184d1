/**
 * SIGTERM/SIGINT at any moment of a `ckpt merge`: from the moment the CLI's listeners are in place
 * (before any command's code loads; it says so through a test-only file), through a chat template
 * that would render for ever, each ends with exit 130, a coded line, no stack trace and nothing
 * left beside the output. The time each takes is measured by `deno task bench latency`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, mergeArgs, spawnCkpt } from "./_cli.ts";

const BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** A demo run whose tokenizer's chat template loops 10^10 times. */
async function bombRun(dir: string) {
  const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
  const cfgPath = join(run.base, "tokenizer_config.json");
  const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
  cfg.chat_template = BOMB;
  await Deno.writeTextFile(cfgPath, JSON.stringify(cfg));
  return run;
}

Deno.test("a loop-bomb chat template fails the run with TEMPLATE_TIMEOUT (its render runs beside the stages), nothing written", async () => {
  await withTempDir(async (dir) => {
    const run = await bombRun(dir);
    const out = join(dir, "exports", "out");
    const r = await ckpt(mergeArgs(run, out, "--log", "json"));
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /"code":"TEMPLATE_TIMEOUT".*5000 ms limit/);
    assert.doesNotMatch(r.stdout + r.stderr, /"pipeline-end"|^\s+at /m);
    assert.deepEqual(await names(dir), ["run"]);
  });
});

Deno.test("SIGTERM or SIGINT at start-up, while loading and while a template renders: exit 130, no staging", async (t) => {
  await withTempDir(async (dir) => {
    const run = await bombRun(dir);
    // written by the CLI once its signal listeners are in place (cli/_signals.ts, test-only)
    const ready = join(dir, "signals-ready");
    const listening = async (child: Deno.ChildProcess) => {
      let exited = false;
      void child.status.then(() => exited = true);
      while (!exited && !(await exists(ready))) await new Promise((r) => setTimeout(r, 1));
      assert.ok(!exited, "the CLI ended before its signal listeners were in place");
    };
    // `ms` after spawn, and never before the listeners are in place (a busy machine may take
    // longer than 300 ms to get there)
    const afterSpawn = (ms: number) => async (child: Deno.ChildProcess) => {
      const spawned = performance.now();
      await listening(child);
      await new Promise((r) => setTimeout(r, Math.max(0, ms - (performance.now() - spawned))));
    };
    const moments: Array<[string, Deno.Signal, (child: Deno.ChildProcess) => Promise<void>]> = [
      ["as soon as its listeners are in place", "SIGTERM", listening],
      ["300 ms after spawn", "SIGTERM", afterSpawn(300)],
      ["1 s after spawn", "SIGINT", afterSpawn(1000)],
      ["3 s after spawn (the template renders)", "SIGTERM", afterSpawn(3000)],
    ];
    for (const [what, signal, wait] of moments) {
      await t.step(`${signal} ${what}`, async () => {
        const parent = join(dir, what.replaceAll(/[^a-z0-9]/g, "-"));
        await Deno.mkdir(parent);
        await Deno.remove(ready).catch(() => {});
        const child = spawnCkpt(mergeArgs(run, join(parent, "out")), undefined, {
          CKPT_TEST_SIGNALS_READY: ready,
        });
        await wait(child);
        child.kill(signal);
        const r = await child.output();
        const stderr = new TextDecoder().decode(r.stderr);
        // it exited by itself (a process the signal killed has no exit status of its own)
        assert.equal(r.signal, null, `${what}: killed by ${r.signal}`);
        assert.equal(r.code, 130, `${what}: ${r.code}\n${stderr}`);
        assert.match(stderr, /abort/i);
        assert.doesNotMatch(stderr, /^\s+at |\[INTERNAL\]/m);
        assert.deepEqual(await names(parent), [], `${what}: left behind`);
      });
    }
  });
});

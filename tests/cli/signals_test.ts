/**
 * SIGTERM/SIGINT at any moment of a `ckpt merge`: from the first moment the process catches the
 * signal (its handler is installed before any command's code loads), through a chat template
 * that would render for ever, each ends with exit 130, a coded line, no stack trace and nothing
 * left beside the output. The time each takes is measured by `deno task bench latency`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, mergeArgs, spawnCkpt } from "./_cli.ts";

const BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";

/** True once `pid` catches SIGTERM (bit 15 of SigCgt in /proc/<pid>/status). */
async function catchesSigterm(pid: number): Promise<boolean> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const hex = /^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    return hex !== undefined && (BigInt(`0x${hex}`) & (1n << 14n)) !== 0n;
  } catch {
    return false;
  }
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

Deno.test("a loop-bomb chat template is refused in preflight with TEMPLATE_TIMEOUT, nothing written", async () => {
  await withTempDir(async (dir) => {
    const run = await bombRun(dir);
    const out = join(dir, "exports", "out");
    const r = await ckpt(mergeArgs(run, out, "--log", "json"));
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /"code":"TEMPLATE_TIMEOUT".*5000 ms limit/);
    assert.doesNotMatch(r.stdout + r.stderr, /"stage-start"|^\s+at /m);
    assert.deepEqual(await names(dir), ["run"]);
  });
});

Deno.test("SIGTERM or SIGINT at start-up, while loading and while a template renders: exit 130, no staging", async (t) => {
  await withTempDir(async (dir) => {
    const run = await bombRun(dir);
    const moments: Array<[string, Deno.Signal, (child: Deno.ChildProcess) => Promise<void>]> = [
      ["as soon as the process catches it", "SIGTERM", async (child) => {
        while (!(await catchesSigterm(child.pid))) await new Promise((r) => setTimeout(r, 1));
      }],
      ["300 ms after spawn", "SIGTERM", () => new Promise((r) => setTimeout(r, 300))],
      ["1 s after spawn", "SIGINT", () => new Promise((r) => setTimeout(r, 1000))],
      [
        "3 s after spawn (the template renders)",
        "SIGTERM",
        () => new Promise((r) => setTimeout(r, 3000)),
      ],
    ];
    for (const [what, signal, wait] of moments) {
      await t.step(`${signal} ${what}`, async () => {
        const parent = join(dir, what.replaceAll(/[^a-z0-9]/g, "-"));
        await Deno.mkdir(parent);
        const child = spawnCkpt(mergeArgs(run, join(parent, "out")));
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

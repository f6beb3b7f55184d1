import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, spawnCkpt } from "./_cli.ts";

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

async function metricsRun(dir: string, from = "eval.json"): Promise<string> {
  await Deno.writeTextFile(join(dir, "eval.json"), '{"loss/eval": 0.5, "counter": 64}');
  const cfg = join(dir, "p.jsonc");
  await Deno.writeTextFile(
    cfg,
    `// metrics only\n{ "vars": { "out": "out" }, "output": "\${out}",
      "stages": [{ "use": "writeMetrics", "from": "${from}" }] }`,
  );
  return cfg;
}

Deno.test("`ckpt run --help` prints the options and presets", async () => {
  const r = await ckpt(["run", "--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--overwrite/);
  assert.match(r.stdout, /ppo-final/);
});

Deno.test("`ckpt run` exits 2 on wrong usage", async () => {
  assert.equal((await ckpt(["run"])).code, 2);
  assert.equal((await ckpt(["run", "x.jsonc", "--bogus"])).code, 2);
  assert.equal((await ckpt(["run", "x.jsonc", "--log", "loud"])).code, 2);
});

Deno.test("`ckpt run` runs a config, logs JSON lines and refuses to overwrite", async () => {
  await withTempDir(async (dir) => {
    const cfg = await metricsRun(dir);
    const r = await ckpt(["run", cfg, "--log", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const events = r.stderr.trim().split("\n").map((l) => JSON.parse(l))
      .filter((e) => e.type !== "log" && e.type !== "progress");
    assert.deepEqual(events.map((e) => e.type), [
      "pipeline-start",
      "stage-start",
      "stage-end",
      "pipeline-end",
    ]);
    assert.match(events[3].manifestSha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(await entries(join(dir, "out")), ["ckpt-manifest.json", "metrics.json"]);

    const again = await ckpt(["run", cfg, "--log", "json"]);
    assert.equal(again.code, 1);
    assert.equal(JSON.parse(again.stderr.trim().split("\n").pop()!).code, "OUTPUT_EXISTS");
    assert.equal((await ckpt(["run", cfg, "--overwrite", "--log", "quiet"])).code, 0);
  });
});

Deno.test("`ckpt run --var` overrides config vars; an undefined var is a coded error", async () => {
  await withTempDir(async (dir) => {
    const cfg = await metricsRun(dir);
    const r = await ckpt(["run", cfg, "--var", "out=other", "--log", "quiet"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await entries(dir), ["eval.json", "other", "p.jsonc"]);
    await Deno.writeTextFile(
      cfg,
      `{ "output": "\${nope}", "stages": [{ "use": "writeMetrics", "from": "eval.json" }] }`,
    );
    const bad = await ckpt(["run", cfg]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /CONFIG_VAR_UNDEFINED/);
    const json = await ckpt(["run", cfg, "--log", "json"]);
    assert.equal(json.code, 1);
    const event = JSON.parse(json.stderr.trim());
    assert.equal(event.type, "pipeline-error");
    assert.equal(event.code, "CONFIG_VAR_UNDEFINED");
  });
});

Deno.test("`ckpt run --dry-run` prints the plan and writes nothing", async () => {
  await withTempDir(async (dir) => {
    const cfg = await metricsRun(dir);
    const r = await ckpt(["run", cfg, "--dry-run", "--log", "quiet"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /metrics\.json/);
    assert.deepEqual(await entries(dir), ["eval.json", "p.jsonc"]);
  });
});

Deno.test("`ckpt run` stopped by SIGTERM exits 130 and leaves no staging folder", async () => {
  await withTempDir(async (dir) => {
    // The stage blocks reading a FIFO nobody writes: the run is stuck midway until the signal.
    const fifo = join(dir, "eval.fifo");
    const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(mk.success);
    const cfg = await metricsRun(dir, "eval.fifo");
    const child = spawnCkpt(["run", cfg, "--log", "json"]);
    // Wait for the stage to start, then terminate.
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes('"stage-start"')) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
    }
    assert.ok(
      (await entries(dir)).some((n) => n.startsWith(".ckpt-staging-")),
      "staging exists midway",
    );
    child.kill("SIGTERM");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
    }
    const status = await child.status;
    await child.stdout.cancel();
    assert.equal(status.code, 130, seen);
    assert.deepEqual(await entries(dir), ["eval.fifo", "eval.json", "p.jsonc"]);
  });
});

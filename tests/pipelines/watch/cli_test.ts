import assert from "node:assert/strict";
import { join } from "node:path";
import { UsageError } from "../../../cli/_args.ts";
import { run } from "../../../cli/watch.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { ckpt, spawnCkpt } from "../../cli/_cli.ts";
import { age, halosCheckpoint, writeTree } from "./_files.ts";

/**
 * `root/runs` holding one quiet HALOs checkpoint (`step-64`, aged 2 minutes) and `root/c.jsonc`,
 * a config exporting its metrics from `${checkpoint}/<metrics>` (with `watch` settings if given).
 */
async function quietRun(
  root: string,
  metrics: string,
  watch?: Record<string, unknown>,
): Promise<{ runs: string; config: string }> {
  const runs = join(root, "runs");
  await writeTree(join(runs, "step-64"), halosCheckpoint(64));
  await age(runs, 120);
  const config = join(root, "c.jsonc");
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      output: "${run}/../exports/${name}",
      stages: [{ use: "writeMetrics", from: `\${checkpoint}/${metrics}` }],
      ...(watch ? { watch } : {}),
    }),
  );
  return { runs, config };
}

Deno.test("`ckpt watch` rejects wrong usage with UsageError (exit 2)", async (t) => {
  const cases: Array<[string, string[]]> = [
    ["no runs folder", ["--config", "x.jsonc"]],
    ["two runs folders", ["a", "b", "--config", "x.jsonc"]],
    ["missing --config", ["runs"]],
    ["bad --keep", ["runs", "--config", "x", "--keep", "0"]],
    ["bad --quiet-seconds", ["runs", "--config", "x", "--quiet-seconds", "soon"]],
    ["bad --log", ["runs", "--status", "--log", "xml"]],
    ["unknown option", ["runs", "--config", "x", "--frobnicate"]],
    ["--split-over alone", ["runs", "--config", "x", "--split-over", "1GB"]],
    ["bad --split-commands", ["runs", "--config", "x", "--split-commands", "0"]],
    ["bad --split-over", ["runs", "--config", "x", "--split-commands", "2", "--split-over", "big"]],
  ];
  for (const [name, args] of cases) {
    await t.step(name, async () => {
      await assert.rejects(run(args), UsageError);
    });
  }
});

Deno.test("`ckpt watch` exports once, reports --status, and refuses a bad --schedule", async () => {
  await withTempDir(async (root) => {
    const { runs, config } = await quietRun(root, "metrics.json", { pattern: "step-*" });
    const tick = await ckpt(["watch", runs, "--config", config, "--log", "json"]);
    assert.equal(tick.code, 0, tick.stderr);
    const events = tick.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(events.map((e) => e.event), [
      "tick-start",
      "found",
      "started",
      "stage",
      "done",
      "tick-end",
    ]);
    assert.equal(events[4].output, join(root, "exports", "step-64"));
    const status = await ckpt(["watch", runs, "--status", "--log", "json"]);
    assert.equal(status.code, 0);
    const summary = JSON.parse(status.stdout);
    assert.deepEqual(summary.counts, { done: 1 });
    assert.equal(summary.checkpoints[0].manifestSha256, events[4].manifestSha256);
    const text = await ckpt(["watch", runs, "--status", "--log", "text"]);
    assert.match(text.stdout, /step-64\s+done\s+tries=1/);
    const bad = await ckpt(["watch", runs, "--config", config, "--schedule", "every minute"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /Cannot schedule/);
  });
});

Deno.test("`ckpt watch` exits 1 when an export fails", async () => {
  await withTempDir(async (root) => {
    const { runs, config } = await quietRun(root, "missing.json");
    const tick = await ckpt([
      "watch",
      runs,
      "--config",
      config,
      "--log",
      "json",
      "--max-tries",
      "1",
    ]);
    assert.equal(tick.code, 1);
    const failed = tick.stdout.trim().split("\n").map((l) => JSON.parse(l)).find((e) =>
      e.event === "failed"
    );
    assert.equal(failed.final, true);
    assert.equal(typeof failed.code, "string");
  });
});

Deno.test("`ckpt watch --schedule` ticks at once and exits 0 on SIGTERM", async () => {
  await withTempDir(async (root) => {
    const { runs, config } = await quietRun(root, "metrics.json");
    const child = spawnCkpt(["watch", runs, "--config", config, "--schedule", "0 0 1 1 *"]);
    let text = "";
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    while (!text.includes('"tick-end"')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    // The process stays up (Deno.cron keeps it alive) until SIGTERM.
    const early = await Promise.race([
      child.status.then(() => "exited"),
      new Promise((r) => setTimeout(() => r("alive"), 300)),
    ]);
    assert.equal(early, "alive");
    child.kill("SIGTERM");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    const status = await child.status;
    await child.stderr.cancel();
    assert.equal(status.code, 0);
    const events = text.trim().split("\n").map((l) => JSON.parse(l).event);
    assert.deepEqual(events.filter((e) => e === "done" || e === "tick-end"), ["done", "tick-end"]);
  });
});

Deno.test("`ckpt watch --split-commands` logs the split-export commands of a large checkpoint instead of exporting it", async () => {
  await withTempDir(async (root) => {
    const { runs, config } = await quietRun(root, "metrics.json");
    const r = await ckpt([
      "watch",
      runs,
      "--config",
      config,
      "--split-commands",
      "4",
      "--split-over",
      "100B",
      "--log",
      "json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    const handed = events.find((e) => e.event === "handed-off");
    assert.equal(handed?.checkpoint, "step-64");
    assert.equal(handed?.parts, 4);
    assert.match(handed?.finish, /^ckpt run \S+c\.jsonc --var .* --finish 4$/);
    await assert.rejects(Deno.stat(join(root, "exports", "step-64")), Deno.errors.NotFound);
    // Over the threshold only: a 1 GB floor exports the small checkpoint here, as usual.
    await Deno.remove(join(runs, ".ckpt-watch"), { recursive: true });
    const small = await ckpt([
      "watch",
      runs,
      "--config",
      config,
      "--split-commands",
      "4",
      "--split-over",
      "1GB",
      "--log",
      "json",
    ]);
    assert.equal(small.code, 0, small.stderr);
    assert.ok(!small.stdout.includes("handed-off"));
    assert.ok((await Deno.stat(join(root, "exports", "step-64", "metrics.json"))).isFile);
  });
});

/** `root/runs` with one quiet checkpoint whose chat template loops 10^10 times, and its config. */
async function bombRun(root: string): Promise<{ runs: string; config: string }> {
  const runs = join(root, "runs");
  const { "tokenizer.json": _tok, ...files } = halosCheckpoint(64);
  await writeTree(join(runs, "step-64"), {
    ...files,
    "tokenizer_config.json": JSON.stringify({
      chat_template:
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    }),
  });
  await age(runs, 120);
  const config = join(root, "c.jsonc");
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      output: "${run}/../exports/${name}",
      stages: [{ use: "writeTokenizer", from: "${checkpoint}" }],
    }),
  );
  return { runs, config };
}

Deno.test("`ckpt watch` with a loop-bomb chat template: the export fails with TEMPLATE_TIMEOUT, or stops on SIGTERM, and the lock is free again", async () => {
  await withTempDir(async (root) => {
    const { runs, config } = await bombRun(root);
    const tick = await ckpt(["watch", runs, "--config", config, "--log", "json"]);
    assert.equal(tick.code, 1, tick.stderr);
    const events = tick.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(events.find((e) => e.event === "failed")?.code, "TEMPLATE_TIMEOUT");

    // SIGTERM while the template renders: exit 0 (watch's stop), and the next tick gets the lock
    const child = spawnCkpt(["watch", runs, "--config", config, "--log", "json", "--retry-failed"]);
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes('"started"')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    await new Promise((r) => setTimeout(r, 500));
    child.kill("SIGTERM");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    const status = await child.status;
    await child.stderr.cancel();
    assert.equal(status.signal, null);
    assert.equal(status.code, 0, text);
    // the next tick takes the watcher's lock and tries again (not WATCH_LOCK_TIMEOUT)
    const next = await ckpt(["watch", runs, "--config", config, "--log", "json"]);
    assert.doesNotMatch(next.stdout + next.stderr, /WATCH_LOCK/);
    const again = next.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.ok(again.some((e) => e.event === "started"), next.stdout);
  });
});

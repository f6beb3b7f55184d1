import assert from "node:assert/strict";
import { join } from "node:path";
import { parseWatchSettings } from "../../../pipelines/watch/config.ts";
import type { WatchEvent } from "../../../pipelines/watch/events.ts";
import { pipelineRunner } from "../../../pipelines/watch/runner.ts";
import { splitHandoffRunner } from "../../../pipelines/watch/split_handoff.ts";
import { watchOnce } from "../../../pipelines/watch/watch.ts";
import { verifyCheckpoint } from "../../../pipelines/verify.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { age, halosCheckpoint, safetensorsBytes, writeTree } from "./_files.ts";

async function bash(command: string, env: Record<string, string> = {}) {
  const r = await new Deno.Command("bash", {
    args: [
      "-c",
      `ckpt() { "${Deno.execPath()}" run -A "${join(REPO_ROOT, "cli.ts")}" "$@"; }\n${command}`,
    ],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

Deno.test("`splitHandoffRunner()` hands large checkpoints to a split export whose logged commands export them", async () => {
  await withTempDir(async (root) => {
    const runs = join(root, "runs");
    await writeTree(join(runs, "step-32"), halosCheckpoint(32));
    await writeTree(join(runs, "step-64"), {
      ...halosCheckpoint(64),
      "model.safetensors": safetensorsBytes(8192),
    });
    await age(runs, 120);
    const cfg = join(root, "export.jsonc");
    await Deno.writeTextFile(
      cfg,
      JSON.stringify({
        output: "${run}/../exports/${name}",
        stages: [
          { use: "gatherShards", from: "${checkpoint}" },
          { use: "writeModel", dtype: "bfloat16" },
          { use: "writeMetrics", from: "${checkpoint}/metrics.json" },
        ],
      }),
    );
    const events: WatchEvent[] = [];
    const verified: string[] = [];
    const tick = await watchOnce({
      runsDir: runs,
      settings: parseWatchSettings({}),
      runner: splitHandoffRunner(cfg, {
        count: 3,
        overBytes: 20_000,
        inner: pipelineRunner(cfg, { env: {} }),
      }),
      verify: (output) => Promise.resolve(void verified.push(output)),
      onEvent: (e) => events.push(e),
    });
    assert.deepEqual(tick.exported.sort(), ["step-32", "step-64"]);
    const small = join(root, "exports", "step-32");
    const large = join(root, "exports", "step-64");
    assert.deepEqual(verified, [small], "only the export made here is verified");
    const handed = events.filter((e) => e.event === "handed-off");
    assert.equal(handed.length, 1);
    const h = handed[0] as Extract<WatchEvent, { event: "handed-off" }>;
    assert.equal(h.checkpoint, "step-64");
    assert.equal(h.output, large);
    assert.equal(h.parts, 3);
    assert.match(h.part, / --var step=64 .* --part auto --parts-count 3$/);
    assert.match(h.slurm, /^CKPT_CONFIG=\S+ CKPT_PARTS=3 examples\/cluster\/submit\.sh --var /);
    await assert.rejects(Deno.stat(large), Deno.errors.NotFound);

    // The commands, run as a Kubernetes Indexed Job would run them, export the checkpoint.
    const parts = [2, 0, 1].map((i) => bash(h.part, { JOB_COMPLETION_INDEX: String(i) }));
    for (const p of await Promise.all(parts)) assert.equal(p.code, 0, p.out);
    const fin = await bash(h.finish);
    assert.equal(fin.code, 0, fin.out);
    const result = await verifyCheckpoint(large);
    assert.ok(result.ok, JSON.stringify(result.checks.filter((c) => !c.ok)));
  });
});

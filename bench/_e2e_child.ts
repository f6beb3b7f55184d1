/**
 * Child process of `bench/e2e.ts` for the per-phase breakdown: runs the pipeline `ckpt merge`
 * runs (gatherShards, mergeLora, writeModel) through the library with the phase clock on, and
 * prints one JSON line: wall time, peak RSS (VmHWM), the merge backend, stage times and the busy
 * time of every phase (`formats/phase_clock.ts`).
 *
 * `deno run -A bench/_e2e_child.ts <base> <adapter> <out> [backend]`
 * @module
 */
import { phaseClock } from "../formats/phase_clock.ts";
import { runPipeline } from "../pipelines/run.ts";
import { peakRssBytes } from "./_util.ts";

const [base, adapter, out, backend] = Deno.args;
if (!base || !adapter || !out) {
  console.error("usage: _e2e_child.ts <base> <adapter> <out> [backend]");
  Deno.exit(2);
}
phaseClock.enable();
const t0 = performance.now();
const result = await runPipeline(
  {
    output: out,
    stages: [
      { use: "gatherShards", from: base },
      { use: "mergeLora", adapter },
      { use: "writeModel" },
    ],
  },
  backend ? { backend: backend as "auto" | "cpu" | "webgpu" } : {},
);
const ms = performance.now() - t0;
console.log(JSON.stringify({
  ms,
  peakRss: peakRssBytes(),
  backend: result.manifest.backend,
  stages: result.stages,
  runnerMs: result.ms - result.stages.reduce((t, s) => t + s.ms, 0),
  phases: phaseClock.snapshot(),
}));

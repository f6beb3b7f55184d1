/**
 * Child process of `bench/e2e.ts`: runs one measured job and prints a JSON line with its wall time
 * and the process's peak resident memory (VmHWM), so each job's memory is its own.
 *
 * `deno run -A bench/_e2e_child.ts pipeline <run> <out> [backend]` or `... copy <src> <dst>`.
 * @module
 */
import { join } from "node:path";
import { loadPreset } from "../pipelines/presets.ts";
import { runPipeline } from "../pipelines/run.ts";
import { copyPlain, peakRssBytes } from "./_util.ts";

async function copyTree(src: string, dst: string): Promise<number> {
  await Deno.mkdir(dst, { recursive: true });
  let bytes = 0;
  for await (const e of Deno.readDir(src)) {
    const s = join(src, e.name);
    const d = join(dst, e.name);
    if (e.isDirectory) bytes += await copyTree(s, d);
    // A streamed copy in 16 MiB blocks: what a tool that only moves bytes costs.
    else bytes += await copyPlain(s, d);
  }
  return bytes;
}

const [job, a, b, backend] = Deno.args;
const t0 = performance.now();
let bytes = 0;
let manifestBackend = "";
let stages: Array<{ name: string; ms: number }> = [];
let manifestMs = 0;
if (job === "pipeline") {
  const config = await loadPreset("halos-final", { vars: { run: a!, out: b! } });
  const result = await runPipeline(config, {
    ...(backend ? { backend: backend as "auto" | "cpu" | "webgpu" } : {}),
  });
  bytes = result.manifest.files.reduce((s, f) => s + f.size, 0);
  manifestBackend = result.manifest.backend;
  stages = result.stages;
  manifestMs = result.ms - result.stages.reduce((t, st) => t + st.ms, 0);
} else if (job === "copy") {
  bytes = await copyTree(a!, b!);
} else {
  console.error("usage: _e2e_child.ts pipeline <run> <out> [backend] | copy <src> <dst>");
  Deno.exit(2);
}
const ms = performance.now() - t0;
console.log(
  JSON.stringify({
    job,
    ms,
    bytes,
    peakRss: peakRssBytes(),
    backend: manifestBackend,
    stages,
    manifestMs,
  }),
);

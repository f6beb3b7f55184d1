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

function peakRssBytes(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  const kb = Number(status.match(/VmHWM:\s+(\d+) kB/)?.[1] ?? NaN);
  return kb * 1024;
}

async function copyTree(src: string, dst: string): Promise<number> {
  await Deno.mkdir(dst, { recursive: true });
  let bytes = 0;
  for await (const e of Deno.readDir(src)) {
    const s = join(src, e.name);
    const d = join(dst, e.name);
    if (e.isDirectory) bytes += await copyTree(s, d);
    else {
      // A streamed copy in 16 MiB blocks: what a tool that only moves bytes costs.
      const inp = await Deno.open(s, { read: true });
      const out = await Deno.open(d, { write: true, create: true, truncate: true });
      const buf = new Uint8Array(16 * 2 ** 20);
      for (;;) {
        const n = await inp.read(buf);
        if (n === null) break;
        let off = 0;
        while (off < n) off += await out.write(buf.subarray(off, n));
        bytes += n;
      }
      inp.close();
      out.close();
    }
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

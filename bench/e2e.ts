/**
 * `deno task bench e2e`: the HALOs final save (`halos-final` preset: merge, pytorch_model.bin in
 * bf16, tokenizer, optimizer, scheduler, metrics, manifest with sha256 of every file) of a ~1 GB
 * synthetic Llama-shaped model with a rank-16 LoRA on every linear layer, beside a plain streamed
 * copy of the same run folder. Reports wall time, throughput (input weight bytes per second) and
 * peak RSS of each, measured in separate processes.
 *
 * Options: `--size tiny|small|1gb` (default 1gb), `--backend auto|cpu|webgpu`, `--keep`.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type DEMO_SHAPES, makeDemoRun } from "../examples/_demo_run.ts";
import { formatBytes, formatDuration } from "../pipelines/progress.ts";
import { runChild } from "./_util.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "1gb" },
    backend: { type: "string" },
    keep: { type: "boolean" },
  },
});
const size = values.size as keyof typeof DEMO_SHAPES;
const root = await Deno.makeTempDir({ dir: "/tmp", prefix: "ckpt-bench-e2e-" });
interface Measured {
  job: string;
  ms: number;
  bytes: number;
  peakRss: number;
  backend: string;
  stages?: Array<{ name: string; ms: number }>;
  manifestMs?: number;
}

function child(args: string[]): Promise<Measured> {
  return runChild<Measured>(
    new URL("./_e2e_child.ts", import.meta.url).pathname,
    args,
    `bench child failed: ${args.join(" ")}`,
  );
}

try {
  const t = performance.now();
  const run = await makeDemoRun(join(root, "run"), { size });
  const inputBytes = run.baseBytes;
  console.log(
    `synthetic run: ${size} (${JSON.stringify(run.shape)}), base weights ${
      formatBytes(inputBytes)
    }, built in ${formatDuration(performance.now() - t)}`,
  );
  // Warm the page cache the same way for both jobs.
  const copy = await child(["copy", run.dir, join(root, "copy")]);
  await Deno.remove(join(root, "copy"), { recursive: true });
  const copy2 = await child(["copy", run.dir, join(root, "copy")]);
  const pipe = await child([
    "pipeline",
    run.dir,
    join(root, "FINAL"),
    ...(values.backend ? [values.backend] : []),
  ]);
  const row = (name: string, m: Measured) =>
    `| ${name.padEnd(34)} | ${formatDuration(m.ms).padStart(8)} | ${
      (inputBytes / 1e6 / (m.ms / 1000)).toFixed(0).padStart(7)
    } MB/s | ${formatBytes(m.bytes).padStart(9)} | ${formatBytes(m.peakRss).padStart(9)} |`;
  console.log("");
  console.log(
    `| job                                |     wall | base throughput | written   | peak RSS  |`,
  );
  console.log(
    `| ---------------------------------- | -------- | --------------- | --------- | --------- |`,
  );
  console.log(row("plain streamed copy of the run", copy.ms < copy2.ms ? copy : copy2));
  console.log(row(`halos-final (merge on ${pipe.backend})`, pipe));
  console.log(
    `\nratio halos-final / copy: ${(pipe.ms / Math.min(copy.ms, copy2.ms)).toFixed(2)}x wall`,
  );
  const parts = (pipe.stages ?? []).map((s) => `${s.name} ${formatDuration(s.ms)}`);
  parts.push(`checks+manifest+rename ${formatDuration(pipe.manifestMs ?? 0)}`);
  console.log(`halos-final stages: ${parts.join(", ")}`);
} finally {
  if (values.keep) console.log(`kept ${root}`);
  else await Deno.remove(root, { recursive: true });
}

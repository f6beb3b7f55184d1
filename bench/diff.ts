/**
 * `deno task bench diff`: `ckpt diff` on a ~1 GB synthetic Llama-shaped model (bf16, rank-16 LoRA on
 * every linear layer), each job in its own process: the model against itself, the base against its
 * merged export, and the base against base + adapter merged on the fly; beside the floor, both
 * folders' weights streamed once and not compared. Reports wall time, throughput (bytes of both
 * sides per second) and peak RSS: the diff streams by row blocks, so its memory is bounded by the
 * block size and the largest adapter factors, not by the model.
 *
 * Options: `--size tiny|small|1gb` (default 1gb), `--keep`.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type DEMO_SHAPES, makeDemoRun } from "../examples/_demo_run.ts";
import { formatBytes, formatDuration } from "../pipelines/progress.ts";
import { mergeArgs } from "../tests/cli/_cli.ts";
import { runChild } from "./_util.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { size: { type: "string", default: "1gb" }, keep: { type: "boolean" } },
});
const size = values.size as keyof typeof DEMO_SHAPES;
const root = await Deno.makeTempDir({ dir: "/tmp", prefix: "ckpt-bench-diff-" });

interface Measured {
  job: string;
  ms: number;
  peakRss: number;
  equal?: boolean;
  differing: number;
}

function child(args: string[]): Promise<Measured> {
  return runChild<Measured>(
    new URL("./_diff_child.ts", import.meta.url).pathname,
    args,
    `bench child failed: ${args.join(" ")}`,
  );
}

try {
  const run = await makeDemoRun(join(root, "run"), { size });
  const merged = join(root, "merged");
  const merge = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../cli.ts", import.meta.url).pathname,
      ...mergeArgs(run, merged, "--log", "quiet"),
    ],
    stdout: "null",
  }).output();
  if (!merge.success) throw new Error("ckpt merge failed");
  const bytes = 2 * run.baseBytes;
  console.log(`synthetic model: ${size}, weights ${formatBytes(run.baseBytes)} per side`);
  await child(["read", run.base, merged]); // warm the page cache for every job alike
  const jobs: [string, Measured][] = [
    ["floor: stream both sides, no compare", await child(["read", run.base, merged])],
    ["diff base base (equal)", await child(["diff", run.base, run.base])],
    ["diff base merged", await child(["diff", run.base, merged])],
    [
      "diff base (base + adapter, on the fly)",
      await child(["diff", run.base, run.base, run.adapter]),
    ],
  ];
  console.log("");
  console.log(
    `| job                                      |     wall | throughput | peak RSS  | verdict |`,
  );
  console.log(
    `| ---------------------------------------- | -------- | ---------- | --------- | ------- |`,
  );
  for (const [name, m] of jobs) {
    const verdict = m.equal === undefined ? "" : m.equal ? "equal" : "differ";
    console.log(
      `| ${name.padEnd(40)} | ${formatDuration(m.ms).padStart(8)} | ${
        (bytes / 1e6 / (m.ms / 1000)).toFixed(0).padStart(5)
      } MB/s | ${formatBytes(m.peakRss).padStart(9)} | ${verdict.padEnd(7)} |`,
    );
  }
  console.log(`\nload: ${(await Deno.readTextFile("/proc/loadavg")).trim()}`);
} finally {
  if (!values.keep) await Deno.remove(root, { recursive: true });
  else console.log(`kept ${root}`);
}

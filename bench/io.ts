/**
 * `deno task bench io`: reading and writing a 1 GB safetensors file (openSafetensors +
 * writeSafetensors) against a plain Deno read-then-write copy of the same bytes with a 16 MiB
 * buffer, side by side in one run. Each measurement runs in its own child process so that its
 * peak memory (VmHWM) is its own, and `sync` runs before each so that one run's writeback does not
 * land in the next. Times exclude fsync (both sides leave data in the page cache). Prints a
 * Markdown table.
 *
 * Options: `--size=1GB` (any parseSize spelling), `--rounds=3`, `--dir=/tmp`.
 * Target: ckpt at least 0.8x the copy's throughput, peak RSS under 256 MiB.
 * @module
 */
import { join } from "node:path";
import { openSafetensors, writeSafetensors } from "../formats/safetensors.ts";
import { formatSize, parseSize } from "../formats/size.ts";
import {
  copyPlain,
  markdownTable,
  measureChild,
  median,
  option,
  peakRssBytes,
  sameFiles,
  syntheticBf16,
} from "./_util.ts";

/** Child: our reader into our writer. */
async function copyCkpt(src: string, dst: string): Promise<void> {
  await using sd = await openSafetensors(src);
  await writeSafetensors(dst, sd, { metadata: sd.metadata });
}

async function child(mode: string, src: string, dst: string): Promise<void> {
  let sampled = 0;
  const timer = setInterval(() => (sampled = Math.max(sampled, Deno.memoryUsage().rss)), 5);
  const t0 = performance.now();
  if (mode === "copy") await copyPlain(src, dst);
  else await copyCkpt(src, dst);
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(timer);
  console.log(JSON.stringify({ seconds, hwm: peakRssBytes(), sampled }));
}

interface Run {
  seconds: number;
  hwm: number;
  sampled: number;
}

async function main(): Promise<void> {
  if (Deno.args[0] === "--child") {
    await child(Deno.args[1]!, Deno.args[2]!, Deno.args[3]!);
    return;
  }
  const size = parseSize(option("size", "1GB"));
  const rounds = Number(option("rounds", "3"));
  const dir = await Deno.makeTempDir({ dir: option("dir", "/tmp"), prefix: "ckpt-bench-io-" });
  try {
    const src = join(dir, "input.safetensors");
    const t0 = performance.now();
    const { bytes } = await writeSafetensors(src, syntheticBf16(size));
    const genSeconds = (performance.now() - t0) / 1000;
    console.log(
      `input: ${formatSize(bytes)} synthetic BF16 safetensors written in ${
        genSeconds.toFixed(2)
      } s`,
    );
    const runs: Record<string, Run[]> = { copy: [], ckpt: [] };
    for (let r = 0; r < rounds; r++) {
      for (const mode of r % 2 === 0 ? ["copy", "ckpt"] : ["ckpt", "copy"]) {
        const dst = join(dir, `out-${mode}.safetensors`);
        runs[mode]!.push(await measureChild<Run>(import.meta.filename!, mode, src, dst));
        if (mode === "ckpt" && r === 0 && !(await sameFiles(src, dst))) {
          throw new Error("ckpt's re-written file differs from its input");
        }
        await Deno.remove(dst);
      }
    }
    const gbps = (s: number) => bytes / s / 1e9;
    const copyS = median(runs.copy!.map((x) => x.seconds));
    const ckptS = median(runs.ckpt!.map((x) => x.seconds));
    const copyBest = Math.min(...runs.copy!.map((x) => x.seconds));
    const ckptBest = Math.min(...runs.ckpt!.map((x) => x.seconds));
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    const row = (name: string, med: number, best: number, ratio: string, rs: Run[]) => [
      name,
      med.toFixed(3),
      gbps(med).toFixed(2),
      best.toFixed(3),
      gbps(best).toFixed(2),
      ratio,
      mib(Math.max(...rs.map((x) => x.hwm))),
    ];
    console.log("");
    console.log(markdownTable(
      [
        `${formatSize(bytes)}, ${rounds} runs each`,
        "median (s)",
        "GB/s",
        "best (s)",
        "GB/s",
        "ratio to copy (median / best)",
        "peak RSS (MiB, VmHWM)",
      ],
      [
        row(
          "plain Deno read+write copy (16 MiB buffer)",
          copyS,
          copyBest,
          "1.00 / 1.00",
          runs.copy!,
        ),
        row(
          "ckpt openSafetensors + writeSafetensors",
          ckptS,
          ckptBest,
          `${(copyS / ckptS).toFixed(2)} / ${(copyBest / ckptBest).toFixed(2)}`,
          runs.ckpt!,
        ),
      ],
    ));
    console.log("");
    console.log(
      `all runs (s): copy ${runs.copy!.map((x) => x.seconds.toFixed(3)).join(", ")}; ckpt ${
        runs.ckpt!.map((x) => x.seconds.toFixed(3)).join(", ")
      }`,
    );
    console.log(
      `target: ckpt >= 0.80x the copy and peak < 256 MiB -> ${
        copyS / ckptS >= 0.8 && Math.max(...runs.ckpt!.map((x) => x.hwm)) < 256 * 2 ** 20
          ? "met"
          : "NOT met"
      }`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

await main();

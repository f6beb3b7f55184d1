/**
 * `deno task bench io` (second part): torch.save write and read of a 1 GB state dict with ckpt
 * (`openTorchStateDict` + `saveTorchStateDict`, and `openTorchStateDict` + reading every tensor in
 * 16 MiB row blocks) against the floors: a plain Deno read-then-write copy and a plain read of the
 * same file with a 16 MiB buffer. Each measurement runs in its own child process (its own VmHWM),
 * with `sync` before each. Prints a Markdown table.
 *
 * Options: `--size=1GB`, `--rounds=3`, `--dir=/tmp`. Target: ckpt at least 0.8x the copy floor's
 * throughput (write and read), peak RSS under 256 MiB; the read is also shown against a read-only floor.
 * @module
 */
import { join } from "node:path";
import { formatSize, parseSize } from "../formats/size.ts";
import { rowCount, rowNumel } from "../formats/state_dict.ts";
import { DTYPES } from "../formats/dtype.ts";
import { saveTorchStateDict } from "../formats/torch/save.ts";
import { openTorchStateDict } from "../formats/torch/state_dict.ts";
import {
  BLOCK,
  copyPlain,
  markdownTable,
  measureChild,
  median,
  option,
  peakRssBytes,
  sameFiles,
  syntheticBf16,
} from "./_util.ts";

async function readPlain(src: string): Promise<void> {
  const buf = new Uint8Array(BLOCK);
  using input = await Deno.open(src);
  for (;;) {
    const n = await input.read(buf);
    if (n === null || n === 0) break;
  }
}

async function readCkpt(src: string): Promise<void> {
  await using sd = await openTorchStateDict(src);
  for (const [, t] of sd) {
    const rowBytes = Math.max(1, rowNumel(t.shape) * DTYPES[t.dtype].size);
    const step = Math.max(1, Math.floor(BLOCK / rowBytes));
    const rows = rowCount(t.shape);
    for (let r = 0; r < rows; r += step) await t.read(r, Math.min(rows, r + step));
  }
}

async function writeCkpt(src: string, dst: string): Promise<void> {
  await using sd = await openTorchStateDict(src);
  await saveTorchStateDict(dst, sd);
}

async function child(mode: string, src: string, dst: string): Promise<void> {
  const t0 = performance.now();
  if (mode === "copy") await copyPlain(src, dst);
  else if (mode === "write") await writeCkpt(src, dst);
  else if (mode === "read-plain") await readPlain(src);
  else await readCkpt(src);
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ seconds, hwm: peakRssBytes() }));
}

interface Run {
  seconds: number;
  hwm: number;
}

async function main(): Promise<void> {
  if (Deno.args[0] === "--child") {
    await child(Deno.args[1]!, Deno.args[2]!, Deno.args[3]!);
    return;
  }
  const size = parseSize(option("size", "1GB"));
  const rounds = Number(option("rounds", "3"));
  const dir = await Deno.makeTempDir({ dir: option("dir", "/tmp"), prefix: "ckpt-bench-torch-" });
  try {
    const src = join(dir, "pytorch_model.bin");
    await Deno.mkdir(join(dir, "out"));
    const dst = join(dir, "out", "pytorch_model.bin"); // same basename: same archive prefix, same bytes
    const t0 = performance.now();
    const { bytes } = await saveTorchStateDict(src, syntheticBf16(size));
    const genSeconds = (performance.now() - t0) / 1000;
    console.log(
      `input: ${
        formatSize(bytes)
      } torch.save state dict (BF16) written from memory by saveTorchStateDict in ${
        genSeconds.toFixed(2)
      } s (${(bytes / genSeconds / 1e9).toFixed(2)} GB/s)`,
    );
    const modes = ["copy", "write", "read-plain", "read"];
    const runs: Record<string, Run[]> = Object.fromEntries(modes.map((m) => [m, []]));
    for (let r = 0; r < rounds; r++) {
      for (const mode of r % 2 === 0 ? modes : [...modes].reverse()) {
        runs[mode]!.push(await measureChild<Run>(import.meta.filename!, mode, src, dst));
        if (mode === "write" && r === 0 && !(await sameFiles(src, dst))) {
          throw new Error("ckpt's re-written torch file differs from its input");
        }
        await Deno.remove(dst).catch(() => {});
      }
    }
    const med = (m: string) => median(runs[m]!.map((x) => x.seconds));
    const best = (m: string) => Math.min(...runs[m]!.map((x) => x.seconds));
    const peak = (m: string) => Math.max(...runs[m]!.map((x) => x.hwm));
    const gbps = (s: number) => (bytes / s / 1e9).toFixed(2);
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    const row = (label: string, m: string, floor: string) => [
      label,
      med(m).toFixed(3),
      gbps(med(m)),
      (med(floor) / med(m)).toFixed(2),
      (best(floor) / best(m)).toFixed(2),
      mib(peak(m)),
    ];
    console.log("");
    console.log(markdownTable(
      [
        `${formatSize(bytes)}, ${rounds} rounds`,
        "median time (s)",
        "GB/s",
        "ratio to floor (medians)",
        "ratio to floor (best runs)",
        "peak RSS (MiB, VmHWM)",
      ],
      [
        row("plain Deno read+write copy (16 MiB buffer)", "copy", "copy"),
        row("ckpt openTorchStateDict + saveTorchStateDict", "write", "copy"),
        row("plain Deno read (16 MiB buffer)", "read-plain", "read-plain"),
        row("ckpt openTorchStateDict + read all (16 MiB blocks)", "read", "read-plain"),
      ],
    ));
    console.log("");
    for (const m of modes) {
      console.log(`runs ${m} (s): ${runs[m]!.map((x) => x.seconds.toFixed(3)).join(", ")}`);
    }
    // The brief's target compares both ckpt runs with the copy floor; the read-only floor is stricter.
    const ok = med("copy") / med("write") >= 0.8 && med("copy") / med("read") >= 0.8 &&
      peak("write") < 256 * 2 ** 20 && peak("read") < 256 * 2 ** 20;
    console.log(
      `ckpt read vs the copy floor: ${
        (med("copy") / med("read")).toFixed(2)
      }x; vs the read-only floor: ${
        (med("read-plain") / med("read")).toFixed(2)
      }x (every TensorRef.read returns a fresh buffer; the floor reuses one)`,
    );
    console.log(
      `target: ckpt >= 0.80x the copy floor and peak < 256 MiB -> ${ok ? "met" : "NOT met"}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

await main();

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
import { rowCount, rowNumel, StateDict, type TensorRef } from "../formats/state_dict.ts";
import { DTYPES } from "../formats/dtype.ts";
import { saveTorchStateDict } from "../formats/torch/save.ts";
import { openTorchStateDict } from "../formats/torch/state_dict.ts";

const BUFFER = 16 * 2 ** 20;

function option(name: string, fallback: string): string {
  const hit = Deno.args.find((a) => a.startsWith(`--${name}=`));
  return hit ? hit.slice(name.length + 3) : fallback;
}

function peakRssBytes(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) * 1024 : Deno.memoryUsage().rss;
}

async function copyPlain(src: string, dst: string): Promise<void> {
  const buf = new Uint8Array(BUFFER);
  using input = await Deno.open(src);
  using output = await Deno.open(dst, { write: true, create: true, truncate: true });
  for (;;) {
    const n = await input.read(buf);
    if (n === null || n === 0) break;
    let done = 0;
    while (done < n) done += await output.write(buf.subarray(done, n));
  }
}

async function readPlain(src: string): Promise<void> {
  const buf = new Uint8Array(BUFFER);
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
    const step = Math.max(1, Math.floor(BUFFER / rowBytes));
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

/** Llama-like BF16 matrices (4096 x 4096) plus norms, filling `total` bytes, from one 16 MiB block. */
function synthetic(total: number): StateDict {
  const block = new Uint8Array(BUFFER);
  for (let i = 0; i < block.length; i++) block[i] = (i * 2654435761) >>> 24;
  const sd = new StateDict();
  const cols = 4096;
  const ref = (rows: number, c: number): TensorRef => ({
    dtype: "BF16",
    shape: c === 0 ? [rows] : [rows, c],
    read(s = 0, e = rows) {
      const bytes = (e - s) * Math.max(c, 1) * 2;
      if (bytes <= block.length) return Promise.resolve(block.subarray(0, bytes));
      const out = new Uint8Array(bytes);
      for (let o = 0; o < bytes; o += block.length) {
        out.set(block.subarray(0, Math.min(block.length, bytes - o)), o);
      }
      return Promise.resolve(out);
    },
  });
  let left = total;
  for (let i = 0; left > 0; i++) {
    const rows = Math.min(4096, Math.floor(left / (cols * 2)));
    if (rows === 0) {
      sd.set(`model.tail_${i}`, ref(Math.max(1, Math.floor(left / 2)), 0));
      break;
    }
    sd.set(`model.layers.${i}.mlp.weight`, ref(rows, cols));
    left -= rows * cols * 2;
    if (left >= cols * 2) {
      sd.set(`model.layers.${i}.norm.weight`, ref(cols, 0));
      left -= cols * 2;
    }
  }
  return sd;
}

interface Run {
  seconds: number;
  hwm: number;
}

async function spawn(mode: string, src: string, dst: string): Promise<Run> {
  await new Deno.Command("sync").output().catch(() => {});
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, "--child", mode, src, dst],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`bench child ${mode} failed`);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as Run;
}

async function sameFiles(a: string, b: string): Promise<boolean> {
  using fa = await Deno.open(a);
  using fb = await Deno.open(b);
  const ba = new Uint8Array(BUFFER);
  const bb = new Uint8Array(BUFFER);
  for (;;) {
    const na = await fa.read(ba);
    if (na === null || na === 0) return (await fb.read(bb.subarray(0, 1))) === null;
    let nb = 0;
    while (nb < na) {
      const r = await fb.read(bb.subarray(nb, na));
      if (r === null) return false;
      nb += r;
    }
    for (let i = 0; i < na; i++) if (ba[i] !== bb[i]) return false;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
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
    const { bytes } = await saveTorchStateDict(src, synthetic(size));
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
        runs[mode]!.push(await spawn(mode, src, dst));
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
    const row = (label: string, m: string, floor: string) =>
      `| ${label} | ${med(m).toFixed(3)} | ${gbps(med(m))} | ${
        (med(floor) / med(m)).toFixed(2)
      } | ${(best(floor) / best(m)).toFixed(2)} | ${mib(peak(m))} |`;
    console.log("");
    console.log(
      `| ${
        formatSize(bytes)
      }, ${rounds} rounds | median time (s) | GB/s | ratio to floor (medians) | ratio to floor (best runs) | peak RSS (MiB, VmHWM) |`,
    );
    console.log("|---|---|---|---|---|---|");
    console.log(row("plain Deno read+write copy (16 MiB buffer)", "copy", "copy"));
    console.log(row("ckpt openTorchStateDict + saveTorchStateDict", "write", "copy"));
    console.log(row("plain Deno read (16 MiB buffer)", "read-plain", "read-plain"));
    console.log(row("ckpt openTorchStateDict + read all (16 MiB blocks)", "read", "read-plain"));
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

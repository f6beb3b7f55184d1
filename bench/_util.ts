/**
 * Helpers shared by the benchmarks in `bench/`: `--name=value` options, peak RSS (VmHWM), plain
 * streamed copies (the floors the benches compare against), measured child processes, medians,
 * Markdown tables and synthetic data.
 * @module
 */
import { StateDict, type TensorRef } from "../formats/state_dict.ts";

/** The block size of the plain floors and of the synthetic data: 16 MiB. */
export const BLOCK = 16 * 2 ** 20;

/** The value of `--name=value` among `Deno.args`, or `fallback`. */
export function option(name: string, fallback: string): string {
  const hit = Deno.args.find((a) => a.startsWith(`--${name}=`));
  return hit ? hit.slice(name.length + 3) : fallback;
}

/** This process's peak resident memory in bytes (VmHWM), or the current RSS without /proc. */
export function peakRssBytes(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) * 1024 : Deno.memoryUsage().rss;
}

/** Plain Deno read-then-write copy of one file through `buf`; returns the bytes copied. */
export async function copyPlain(
  src: string,
  dst: string,
  buf: Uint8Array = new Uint8Array(BLOCK),
): Promise<number> {
  using input = await Deno.open(src);
  using output = await Deno.open(dst, { write: true, create: true, truncate: true });
  let bytes = 0;
  for (;;) {
    const n = await input.read(buf);
    if (n === null || n === 0) break;
    let done = 0;
    while (done < n) done += await output.write(buf.subarray(done, n));
    bytes += n;
  }
  return bytes;
}

/** Flushes dirty pages so that one run's writeback does not land in the next run's time. */
export async function syncDisks(): Promise<void> {
  await new Deno.Command("sync").output().catch(() => {});
}

/**
 * Runs `deno run -A <script> ...args` as a child (stderr inherited) and parses the last line of
 * its stdout as JSON; throws `failure` when the child fails.
 */
export async function runChild<T>(script: string, args: string[], failure: string): Promise<T> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(failure);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as T;
}

/**
 * One measured run: `sync`, then `script --child <mode> <src> <dst>` in its own process (so its
 * VmHWM is its own); returns the JSON line it prints.
 */
export async function measureChild<T>(
  script: string,
  mode: string,
  src: string,
  dst: string,
): Promise<T> {
  await syncDisks();
  return await runChild<T>(script, ["--child", mode, src, dst], `bench child ${mode} failed`);
}

/** Whether two files hold the same bytes (compared in 16 MiB blocks). */
export async function sameFiles(a: string, b: string): Promise<boolean> {
  using fa = await Deno.open(a);
  using fb = await Deno.open(b);
  const ba = new Uint8Array(BLOCK);
  const bb = new Uint8Array(BLOCK);
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

/** The median of `xs` (the upper one for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** A Markdown table: the header row, the `|---|` separator, then one line per row. */
export function markdownTable(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
  return [line(header), `|${"---|".repeat(header.length)}`, ...rows.map(line)].join("\n");
}

/** Deterministic pseudo-random f32s in [-scale/2, scale/2) (an LCG seeded by `seed`). */
export function seeded(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * scale;
  }
  return out;
}

/**
 * A synthetic Llama-like stack of BF16 matrices (4096 × 4096) plus norms, filling `total` bytes;
 * every tensor reads from one 16 MiB block of fixed pseudo-random bytes.
 */
export function syntheticBf16(total: number): StateDict {
  const block = new Uint8Array(BLOCK);
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

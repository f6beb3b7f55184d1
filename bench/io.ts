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
import { StateDict, type TensorRef } from "../formats/state_dict.ts";

const COPY_BUFFER = 16 * 2 ** 20;

function option(name: string, fallback: string): string {
  const hit = Deno.args.find((a) => a.startsWith(`--${name}=`));
  return hit ? hit.slice(name.length + 3) : fallback;
}

function peakRssBytes(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  const m = /VmHWM:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : Deno.memoryUsage().rss;
}

/** Child: plain copy with a reused 16 MiB buffer. */
async function copyPlain(src: string, dst: string): Promise<void> {
  const buf = new Uint8Array(COPY_BUFFER);
  using input = await Deno.open(src);
  using output = await Deno.open(dst, { write: true, create: true, truncate: true });
  for (;;) {
    const n = await input.read(buf);
    if (n === null || n === 0) break;
    let done = 0;
    while (done < n) done += await output.write(buf.subarray(done, n));
  }
}

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

/** A synthetic Llama-like layer stack of BF16 matrices plus norms, filling `total` bytes. */
function synthetic(total: number): StateDict {
  const block = new Uint8Array(16 * 2 ** 20);
  for (let i = 0; i < block.length; i++) block[i] = (i * 2654435761) >>> 24;
  const sd = new StateDict();
  const cols = 4096;
  const matrixRows = 4096;
  let left = total;
  let i = 0;
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
  while (left > 0) {
    const rows = Math.min(matrixRows, Math.floor(left / (cols * 2)));
    if (rows === 0) {
      const n = Math.max(1, Math.floor(left / 2));
      sd.set(`model.tail_${i}`, ref(n, 0));
      break;
    }
    sd.set(`model.layers.${i}.mlp.weight`, ref(rows, cols));
    left -= rows * cols * 2;
    if (left >= cols * 2) {
      sd.set(`model.layers.${i}.norm.weight`, ref(cols, 0));
      left -= cols * 2;
    }
    i++;
  }
  return sd;
}

interface Run {
  seconds: number;
  hwm: number;
  sampled: number;
}

/** Flushes dirty pages so that one run's writeback does not land in the next run's time. */
async function syncDisks(): Promise<void> {
  await new Deno.Command("sync").output().catch(() => {});
}

async function spawn(mode: string, src: string, dst: string): Promise<Run> {
  await syncDisks();
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
  const ba = new Uint8Array(COPY_BUFFER);
  const bb = new Uint8Array(COPY_BUFFER);
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
  const dir = await Deno.makeTempDir({ dir: option("dir", "/tmp"), prefix: "ckpt-bench-io-" });
  try {
    const src = join(dir, "input.safetensors");
    const t0 = performance.now();
    const { bytes } = await writeSafetensors(src, synthetic(size));
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
        runs[mode]!.push(await spawn(mode, src, dst));
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
    const row = (name: string, med: number, best: number, ratio: string, rs: Run[]) =>
      `| ${name} | ${med.toFixed(3)} | ${gbps(med).toFixed(2)} | ${best.toFixed(3)} | ${
        gbps(best).toFixed(2)
      } | ${ratio} | ${mib(Math.max(...rs.map((x) => x.hwm)))} |`;
    console.log("");
    console.log(
      `| ${
        formatSize(bytes)
      }, ${rounds} runs each | median (s) | GB/s | best (s) | GB/s | ratio to copy (median / best) | peak RSS (MiB, VmHWM) |`,
    );
    console.log("|---|---|---|---|---|---|---|");
    console.log(
      row("plain Deno read+write copy (16 MiB buffer)", copyS, copyBest, "1.00 / 1.00", runs.copy!),
    );
    console.log(
      row(
        "ckpt openSafetensors + writeSafetensors",
        ckptS,
        ckptBest,
        `${(copyS / ckptS).toFixed(2)} / ${(copyBest / ckptBest).toFixed(2)}`,
        runs.ckpt!,
      ),
    );
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

/**
 * `deno task bench merge`: merged weights per second of each merge backend, bf16 weights, for a
 * 4096 × 4096 and an 11008 × 4096 matrix at r = 8, 16 and 64, kernel alone and with the transfers
 * (copy into the workers' shared memory and back on the CPU; upload and read-back on WebGPU), fed
 * as row blocks of about 16 MiB of W with two blocks in flight, like the mergeLora transform does.
 * Prints a Markdown table with wall-clock rates and rates per CPU-second of the whole process (all
 * worker and llvmpipe threads): on a shared machine the second is the steadier figure.
 * `--quick` runs only r = 16 on 4096 × 4096.
 * @module
 */
import { type CpuMergeBackend, createCpuBackend } from "../kernels/cpu/backend.ts";
import { createWebGpuBackend, type WebGpuMergeBackend } from "../gpu/merge_webgpu.ts";
import { mergeRowsReference } from "../kernels/reference.ts";
import type { MergeRowsRequest } from "../kernels/types.ts";
import process from "node:process";
import { markdownTable, seeded } from "./_util.ts";

const quick = Deno.args.includes("--quick");
const shapes: [number, number][] = quick ? [[4096, 4096]] : [[4096, 4096], [11008, 4096]];
const ranks = quick ? [16] : [8, 16, 64];
const BLOCK_BYTES = 16 << 20;

function makeWeights(rows: number, cols: number): Uint8Array {
  const f = seeded(rows * cols, 7, 0.1);
  const u16 = new Uint16Array(f.length);
  const u32 = new Uint32Array(f.buffer);
  for (let i = 0; i < f.length; i++) u16[i] = u32[i]! >>> 16;
  return new Uint8Array(u16.buffer);
}

function request(w: Uint8Array, rows: number, cols: number, rank: number): MergeRowsRequest {
  return {
    name: `bench.${rows}x${cols}.r${rank}`,
    w,
    wDtype: "BF16",
    outDtype: "BF16",
    rows,
    cols,
    rank,
    a: seeded(rank * cols, 11, 0.02),
    b: seeded(rows * rank, 13, 0.02),
    scale: 2,
  };
}

/** Merges `req` as row blocks of ~16 MiB with two in flight; returns seconds. */
async function streamed(
  backend: { mergeRows(r: MergeRowsRequest): Promise<Uint8Array> },
  req: MergeRowsRequest,
): Promise<number> {
  const rowsPer = Math.max(1, Math.floor(BLOCK_BYTES / (req.cols * 2)));
  const t0 = performance.now();
  const inflight: Promise<Uint8Array>[] = [];
  let bytes = 0;
  for (let r0 = 0; r0 < req.rows; r0 += rowsPer) {
    const r1 = Math.min(req.rows, r0 + rowsPer);
    if (inflight.length >= 2) bytes += (await inflight.shift()!).byteLength;
    inflight.push(backend.mergeRows({
      ...req,
      rows: r1 - r0,
      w: req.w.subarray(r0 * req.cols * 2, r1 * req.cols * 2),
      b: req.b.subarray(r0 * req.rank, r1 * req.rank),
    }));
  }
  for (const p of inflight) bytes += (await p).byteLength;
  if (bytes !== req.rows * req.cols * 2) throw new Error("bench: wrong output size");
  return (performance.now() - t0) / 1000;
}

function mps(weights: number, seconds: number): string {
  return (weights / seconds / 1e6).toFixed(0);
}

/**
 * Kernel-alone time of `n` runs on the GPU: wall time as `timeKernel` reports it (queue time
 * only), CPU time as the difference between a call with `n + 1` runs and a call with
 * one run (so the one-off copy or upload of the inputs cancels out). Best of `reps`.
 */
async function kernelTime(
  be: { timeKernel(r: MergeRowsRequest, reps: number): Promise<number> },
  req: MergeRowsRequest,
  n: number,
  reps: number,
): Promise<{ wall: number; cpu: number }> {
  let wall = Infinity, cpu = Infinity;
  for (let r = 0; r < reps; r++) {
    const c0 = process.cpuUsage();
    await be.timeKernel(req, 1);
    const c1 = process.cpuUsage();
    wall = Math.min(wall, n * await be.timeKernel(req, n));
    const c2 = process.cpuUsage();
    const one = (c1.user - c0.user + c1.system - c0.system) / 1e6;
    const many = (c2.user - c1.user + c2.system - c1.system) / 1e6;
    cpu = Math.min(cpu, Math.max(many - one, 1e-9) * n / (n - 1)); // n ≥ 2
  }
  return { wall, cpu };
}

/** Best wall time and least process CPU time (all threads: workers, llvmpipe) over `reps` runs. */
async function best(
  reps: number,
  fn: () => Promise<number>,
): Promise<{ wall: number; cpu: number }> {
  let wall = Infinity, cpu = Infinity;
  for (let r = 0; r < reps; r++) {
    const c0 = process.cpuUsage();
    wall = Math.min(wall, await fn());
    const c = process.cpuUsage(c0);
    cpu = Math.min(cpu, (c.user + c.system) / 1e6);
  }
  return { wall, cpu };
}

const rows: (string | number)[][] = [];
const row = (...cells: (string | number)[]) => rows.push(cells);

// scalar reference baseline (one core): 256 rows of 4096 at r = 16
{
  const cols = 4096, n = 256;
  const req = request(makeWeights(n, cols), n, cols, 16);
  mergeRowsReference(req);
  const t0 = performance.now();
  mergeRowsReference(req);
  const s = (performance.now() - t0) / 1000;
  row("reference (scalar JS, 1 thread)", `${n}x${cols}`, 16, mps(n * cols, s), "-", "-", "-");
}

const cpu: CpuMergeBackend = await createCpuBackend();
const cpu1: CpuMergeBackend = await createCpuBackend({ workers: 1 });
let gpu: WebGpuMergeBackend | undefined;
try {
  gpu = await createWebGpuBackend();
} catch (e) {
  console.error(`bench merge: no WebGPU (${(e as Error).message}); CPU rows only`);
}

for (const [r, c] of shapes) {
  const w = makeWeights(r, c);
  for (const rank of ranks) {
    const req = request(w, r, c, rank);
    const weights = r * c;
    // CPU: kernel alone on the whole matrix, then streamed blocks with copies
    for (const [label, be] of [[cpu.description, cpu], [cpu1.description, cpu1]] as const) {
      if (be === cpu1 && rank !== 16) continue;
      await be.timeKernel(req, 1); // warm-up: compile, tier up
      // three whole-matrix kernel runs per call (the one copy-in is small beside them)
      const k = await best(2, async () => 3 * await be.timeKernel(req, 3));
      await streamed(be, req);
      const t = await best(3, () => streamed(be, req));
      row(
        label,
        `${r}x${c}`,
        rank,
        mps(3 * weights, k.wall),
        mps(3 * weights, k.cpu),
        mps(weights, t.wall),
        mps(weights, t.cpu),
      );
    }
    if (gpu) {
      // llvmpipe is slow: kernel timed on one 16 MiB block, fewer runs
      const rowsPer = Math.floor(BLOCK_BYTES / (c * 2));
      const blockReq = {
        ...req,
        rows: rowsPer,
        w: w.subarray(0, rowsPer * c * 2),
        b: req.b.subarray(0, rowsPer * rank),
      };
      await gpu.timeKernel(blockReq, 1);
      const k = await kernelTime(gpu, blockReq, 3, 2); // three kernel runs on one block
      await streamed(gpu, req);
      const t = await best(2, () => streamed(gpu!, req));
      row(
        gpu.description,
        `${r}x${c}`,
        rank,
        mps(3 * rowsPer * c, k.wall),
        mps(3 * rowsPer * c, k.cpu),
        mps(weights, t.wall),
        mps(weights, t.cpu),
      );
    }
  }
}

console.log("\nmerged weights per second (millions), bf16 in and out:\n");
console.log(markdownTable(
  [
    "backend",
    "shape",
    "r",
    "kernel alone (M/s)",
    "kernel (M per CPU-s)",
    "with transfers (M/s)",
    "with transfers (M per CPU-s)",
  ],
  rows,
));
if (gpu) {
  console.log(
    `\nWebGPU plan for 4096x4096 r=16: ${
      JSON.stringify(gpu.plan(request(new Uint8Array(4096 * 4096 * 2), 4096, 4096, 16)).spec)
    }`,
  );
}
await cpu.dispose();
await cpu1.dispose();
await gpu?.dispose();

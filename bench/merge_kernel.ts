/**
 * `deno task bench merge_kernel`: the CPU merge kernel on one thread, no workers and no copies:
 * `runCpuTask` (wasm SIMD kernel, scalar tail, and with "+ΔW" the ‖ΔW‖ sums pass) over one block
 * already in the shared memory, the share of a 16 MiB block one of two workers gets. Prints
 * million merged weights per second, best of `--reps=N` (default 5).
 *
 * `--against=DIR` also times the same cases with the `kernels/cpu/_rows.ts` of another checkout
 * (for example `git archive main | tar -x -C DIR`), the two interleaved run by run, so an A/B on a
 * shared machine compares figures taken under the same load. `--quick`: bf16 r = 16 only.
 * @module
 */
import type { CpuTask, KernelCache } from "../kernels/cpu/_rows.ts";
import type { MergeChangeSums, MergeDType } from "../kernels/types.ts";
import { markdownTable, option, seeded } from "./_util.ts";

interface RowsModule {
  /** `kernel.ts`'s A layout, where that checkout's kernel reads A packed by column tiles. */
  packA?: (a: Float32Array, rank: number, cols: number, out: Float32Array) => Float32Array;
  KernelCache: new (mem: WebAssembly.Memory) => KernelCache;
  runCpuTask(
    mem: WebAssembly.Memory,
    cache: KernelCache,
    t: CpuTask,
  ): MergeChangeSums | undefined;
}

interface Case {
  w: MergeDType;
  out: MergeDType;
  rows: number;
  cols: number;
  rank: number;
  change: boolean;
}

const quick = Deno.args.includes("--quick");
const reps = Number(option("reps", "5"));
const against = option("against", "");

const cases: Case[] = quick
  ? [{ w: "BF16", out: "BF16", rows: 1024, cols: 4096, rank: 16, change: false }]
  : [
    { w: "BF16", out: "BF16", rows: 1024, cols: 4096, rank: 8, change: false },
    { w: "BF16", out: "BF16", rows: 1024, cols: 4096, rank: 16, change: false },
    { w: "BF16", out: "BF16", rows: 1024, cols: 4096, rank: 16, change: true },
    { w: "BF16", out: "BF16", rows: 1024, cols: 4096, rank: 64, change: false },
    { w: "BF16", out: "BF16", rows: 1023, cols: 4100, rank: 16, change: false },
    { w: "BF16", out: "BF16", rows: 256, cols: 4096, rank: 256, change: false },
    { w: "F16", out: "F16", rows: 1024, cols: 4096, rank: 16, change: true },
    { w: "F32", out: "F32", rows: 512, cols: 4096, rank: 16, change: false },
  ];

const SIZE: Record<MergeDType, number> = { BF16: 2, F16: 2, F32: 4 };

/** Lays the case out in a fresh shared memory: W, A, B, then the output. */
function setUp(c: Case, m: RowsModule): { mem: WebAssembly.Memory; task: CpuTask } {
  const n = c.rows * c.cols;
  const wBytes = n * SIZE[c.w], aBytes = c.rank * c.cols * 4, bBytes = c.rows * c.rank * 4;
  const align = (x: number) => Math.ceil(x / 64) * 64;
  const wPtr = 0, aPtr = align(wBytes), bPtr = aPtr + align(aBytes), outPtr = bPtr + align(bBytes);
  const total = outPtr + n * SIZE[c.out];
  const mem = new WebAssembly.Memory({
    initial: Math.ceil(total / 65536),
    maximum: 65536,
    shared: true,
  });
  const buf = mem.buffer as unknown as ArrayBuffer;
  const w = seeded(n, 7, 0.2);
  if (c.w === "F32") new Float32Array(buf, wPtr, n).set(w);
  else {
    const bits = new Uint32Array(w.buffer), u16 = new Uint16Array(buf, wPtr, n);
    // bf16 bits from the f32's top half; for f16, the same bits are just some f16 values
    for (let i = 0; i < n; i++) u16[i] = bits[i]! >>> 16;
  }
  const a = seeded(c.rank * c.cols, 11, 0.02), aMem = new Float32Array(buf, aPtr, a.length);
  if (m.packA) m.packA(a, c.rank, c.cols, aMem);
  else aMem.set(a);
  new Float32Array(buf, bPtr, c.rows * c.rank).set(seeded(c.rows * c.rank, 13, 0.02));
  const task: CpuTask = {
    key: "",
    wDtype: c.w,
    outDtype: c.out,
    wPtr,
    aPtr,
    bPtr,
    outPtr,
    yPtr: 0,
    magPtr: 0,
    dora: false,
    row0: 0,
    row1: c.rows,
    cols: c.cols,
    rank: c.rank,
    scale: 2,
    change: c.change,
  };
  return { mem, task };
}

async function load(root: URL): Promise<RowsModule> {
  const rows = await import(new URL("kernels/cpu/_rows.ts", root).href);
  const kernel = await import(new URL("kernels/cpu/kernel.ts", root).href);
  return { ...rows, packA: kernel.packA };
}

const here = await load(new URL("../", import.meta.url));
const other = against ? await load(new URL(`file://${Deno.realPathSync(against)}/`)) : undefined;
const impls: [string, RowsModule][] = [["this checkout", here]];
if (other) impls.push([against, other]);

const table: (string | number)[][] = [];
for (const c of cases) {
  const runs = impls.map(([label, m]) => {
    const { mem, task } = setUp(c, m);
    const cache = new m.KernelCache(mem);
    for (let i = 0; i < 3; i++) m.runCpuTask(mem, cache, task); // compile, tier up
    return { label, run: () => m.runCpuTask(mem, cache, task), best: Infinity, mem, task };
  });
  const inner = Math.max(1, Math.round(2e8 / (c.rows * c.cols * Math.max(c.rank, 8))));
  for (let r = 0; r < reps; r++) {
    for (const x of runs) {
      const t0 = performance.now();
      for (let i = 0; i < inner; i++) x.run();
      x.best = Math.min(x.best, (performance.now() - t0) / 1000 / inner);
    }
  }
  if (runs.length === 2) {
    const [a, b] = runs as [(typeof runs)[0], (typeof runs)[0]];
    const outA = new Uint8Array(a.mem.buffer as unknown as ArrayBuffer, a.task.outPtr);
    const outB = new Uint8Array(b.mem.buffer as unknown as ArrayBuffer, b.task.outPtr);
    const len = c.rows * c.cols * SIZE[c.out];
    for (let i = 0; i < len; i++) {
      if (outA[i] !== outB[i]) throw new Error(`bench: outputs differ at byte ${i} (${label(c)})`);
    }
  }
  const mps = (s: number) => (c.rows * c.cols / s / 1e6).toFixed(0);
  const cells: (string | number)[] = [label(c), `${c.rows}x${c.cols}`, c.rank];
  for (const x of runs) cells.push(mps(x.best));
  if (runs.length === 2) cells.push((runs[1]!.best / runs[0]!.best).toFixed(2));
  table.push(cells);
}

function label(c: Case): string {
  return `${c.w} > ${c.out}${c.change ? " + ΔW sums" : ""}`;
}

console.log(
  `\nCPU merge kernel, one thread, million merged weights per second (best of ${reps}):\n`,
);
console.log(markdownTable(
  [
    "case",
    "shape",
    "r",
    ...impls.map(([l]) => l),
    ...(impls.length === 2 ? ["speed-up"] : []),
  ],
  table,
));

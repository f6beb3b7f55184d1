/**
 * `deno task bench merge_lora`: the whole lazy transform (`mergeLora` over an in-memory bf16 base,
 * adapter factors in f32), read back the way a writer reads it (row ranges of `--read-mib`, default
 * 32 MiB), against the backend's bare `mergeRows` over the same blocks. Prints a Markdown table of
 * merged weights per second for r = 8, 16, 64, for a 4096 × 4096 and an 11008 × 4096 matrix, on the
 * CPU backend and on WebGPU. Flags: `--quick` (one shape, r = 16), `--backend=cpu|webgpu`, `--reps=N` (best of N, default 3).
 * @module
 */
import { encodeF32 } from "../formats/dtype.ts";
import { parseLoraConfig } from "../formats/peft_config.ts";
import { StateDict, tensorFromBytes } from "../formats/state_dict.ts";
import { createMergeBackend } from "../merge/backend.ts";
import { mergeLora } from "../merge/lora.ts";
import type { MergeBackend } from "../kernels/types.ts";
import { option, seeded } from "./_util.ts";

const quick = Deno.args.includes("--quick");
const only = option("backend", "");
const reps = Number(option("reps", "3"));
const readMiB = Number(option("read-mib", "32"));

async function timeLora(
  backend: MergeBackend,
  rows: number,
  cols: number,
  r: number,
): Promise<{ transform: number; bare: number }> {
  const w = encodeF32("BF16", seeded(rows * cols, 1, 0.2));
  const a = seeded(r * cols, 2, 0.05);
  const b = seeded(rows * r, 3, 0.05);
  const base = new StateDict([["m.weight", tensorFromBytes("BF16", [rows, cols], w)]]);
  const tensors = new StateDict([
    [
      "base_model.model.m.lora_A.weight",
      tensorFromBytes("F32", [r, cols], new Uint8Array(a.buffer)),
    ],
    [
      "base_model.model.m.lora_B.weight",
      tensorFromBytes("F32", [rows, r], new Uint8Array(b.buffer)),
    ],
  ]);
  const config = parseLoraConfig({ peft_type: "LORA", r, lora_alpha: 2 * r });
  const step = Math.max(1, Math.floor((readMiB << 20) / (cols * 2)));
  const viaTransform = async (): Promise<number> => {
    // a fresh transform each time: factor preparation is part of the cost
    const { stateDict } = await mergeLora(base, [{ name: "a", config, tensors }], { backend });
    const ref = stateDict.require("m.weight");
    const t0 = performance.now();
    for (let s = 0; s < rows; s += step) await ref.read(s, Math.min(rows, s + step));
    return (performance.now() - t0) / 1000;
  };
  // bare backend over 8 MiB blocks, three in flight (what the transform does)
  const blk = Math.max(1, Math.floor((8 << 20) / (cols * 2)));
  const starts: number[] = [];
  for (let s = 0; s < rows; s += blk) starts.push(s);
  let next = 0;
  const worker = async () => {
    while (next < starts.length) {
      const s = starts[next++]!;
      const e = Math.min(rows, s + blk);
      await backend.mergeRows({
        name: "m.weight",
        w: w.subarray(s * cols * 2, e * cols * 2),
        wDtype: "BF16",
        outDtype: "BF16",
        rows: e - s,
        cols,
        rank: r,
        a,
        b: b.subarray(s * r, e * r),
        scale: 2,
      });
    }
  };
  const viaBare = async (): Promise<number> => {
    next = 0;
    const t1 = performance.now();
    await Promise.all([worker(), worker(), worker()]);
    return (performance.now() - t1) / 1000;
  };
  let transform = Infinity;
  let bare = Infinity;
  for (let rep = 0; rep < reps; rep++) {
    transform = Math.min(transform, await viaTransform());
    bare = Math.min(bare, await viaBare());
  }
  return { transform, bare };
}

const shapes: [number, number][] = quick ? [[4096, 4096]] : [[4096, 4096], [11008, 4096]];
const ranks = quick ? [16] : [8, 16, 64];
const kinds = (only ? [only] : ["cpu", "webgpu"]) as ("cpu" | "webgpu")[];
console.log(
  "| backend | shape | r | mergeLora read (M weights/s) | bare mergeRows (M weights/s) |",
);
console.log("|---|---|---|---|---|");
for (const kind of kinds) {
  let backend: MergeBackend;
  try {
    backend = (await createMergeBackend(kind)).backend;
  } catch (e) {
    console.log(`| ${kind} | - | - | unavailable: ${(e as Error).message} | |`);
    continue;
  }
  try {
    await timeLora(backend, 512, 4096, 16); // warm-up (pipelines, wasm, workers)
    for (const [rows, cols] of shapes) {
      for (const r of ranks) {
        const { transform, bare } = await timeLora(backend, rows, cols, r);
        const n = rows * cols / 1e6;
        console.log(
          `| ${kind} (${backend.description}) | ${rows}x${cols} | ${r} | ${
            (n / transform).toFixed(0)
          } | ${(n / bare).toFixed(0)} |`,
        );
      }
    }
  } finally {
    await backend.dispose();
  }
}

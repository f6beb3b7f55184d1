/**
 * Tiny stages for runner and config tests: they write small files, fail, or wait for an abort.
 * @module
 */
import { z } from "zod";
import { CkptError } from "../../errors.ts";
import type { Stage } from "../../pipelines/stage.ts";

/** Writes `name` with `text`; records `from` as an input when given. */
export const writeText: Stage = {
  name: "writeText",
  summary: "writes a text file",
  options: z.strictObject({
    name: z.string(),
    text: z.string().default("hello"),
    from: z.string().optional(),
    repeat: z.number().int().positive().default(1),
  }),
  async run(ctx, raw) {
    const o = raw as { name: string; text: string; from?: string; repeat: number };
    if (o.from !== undefined) ctx.addInput(ctx.resolve(o.from), "source");
    const text = o.text.repeat(o.repeat);
    const bytes = new TextEncoder().encode(text).length;
    ctx.report("writeText", { files: [{ path: o.name, bytes }], dtype: "BF16" });
    if (ctx.dryRun) return;
    await Deno.writeTextFile(`${ctx.outDir}/${o.name}`, text);
    ctx.emit({ type: "progress", stage: "writeText", done: bytes, total: bytes, unit: "bytes" });
  },
};

/** Always fails with `TENSOR_MISSING` (after writing a partial file). */
export const fail: Stage = {
  name: "fail",
  summary: "fails",
  options: z.strictObject({}),
  async run(ctx) {
    if (!ctx.dryRun) await Deno.writeTextFile(`${ctx.outDir}/partial.bin`, "partial");
    throw new CkptError("TENSOR_MISSING", "Cannot go on: told to fail");
  },
};

/** Writes a file, then waits until the signal aborts (or `ms` pass). */
export const wait: Stage = {
  name: "wait",
  summary: "waits for an abort",
  options: z.strictObject({ ms: z.number().default(10_000) }),
  async run(ctx, raw) {
    const { ms } = raw as { ms: number };
    ctx.report("wait", { files: [{ path: "started.txt", bytes: 1 }] });
    if (!ctx.dryRun) await Deno.writeTextFile(`${ctx.outDir}/started.txt`, "x");
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      ctx.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(ctx.signal.reason);
      }, { once: true });
    });
  },
};

/** Reports a backend like the merge stage does. */
export const fakeMerge: Stage = {
  name: "fakeMerge",
  summary: "reports a backend",
  options: z.strictObject({ adapter: z.string().optional() }),
  run(ctx) {
    ctx.report("fakeMerge", { backend: ctx.backend ?? "cpu" });
    return Promise.resolve();
  },
};

/** The fake registry. */
export const FAKE_STAGES: Record<string, Stage> = { writeText, fail, wait, fakeMerge };

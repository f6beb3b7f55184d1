/**
 * A tiny fake {@linkcode StageContext} for stage unit tests: records events, inputs and reports.
 * @module
 */
import { isAbsolute, join } from "node:path";
import type { PipelineEvent, StageContext } from "../../pipelines/stage.ts";
import { type StateDict, tensorFromBytes, type TensorRef } from "../../formats/state_dict.ts";

/** A fake context plus what the stage did with it. */
export interface FakeContext extends StageContext {
  events: PipelineEvent[];
  inputs: { path: string; role: string }[];
  reports: { stage: string; data: Record<string, unknown> }[];
}

/** Creates a fake context writing into `outDir`, resolving against `baseDir` (default outDir). */
export function fakeContext(
  outDir: string,
  init: {
    baseDir?: string;
    dryRun?: boolean;
    signal?: AbortSignal;
    stateDict?: StateDict;
    modelConfig?: Record<string, unknown>;
    modelDir?: string;
    adapterDir?: string;
  } = {},
): FakeContext {
  const baseDir = init.baseDir ?? outDir;
  const ctx: FakeContext = {
    outDir,
    baseDir,
    signal: init.signal ?? new AbortController().signal,
    dryRun: init.dryRun ?? false,
    stateDict: init.stateDict,
    modelConfig: init.modelConfig,
    modelDir: init.modelDir,
    adapterDir: init.adapterDir,
    events: [],
    inputs: [],
    reports: [],
    resolve: (p: string) => (isAbsolute(p) ? p : join(baseDir, p)),
    emit(event: PipelineEvent) {
      ctx.events.push(event);
    },
    addInput(path: string, role: string) {
      ctx.inputs.push({ path, role });
    },
    report(stage: string, data: Record<string, unknown>) {
      ctx.reports.push({ stage, data });
    },
  };
  return ctx;
}

/** Lists the files (relative paths) under `dir`, sorted. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, prefix: string) => {
    for await (const e of Deno.readDir(d)) {
      if (e.isDirectory) await walk(join(d, e.name), `${prefix}${e.name}/`);
      else out.push(`${prefix}${e.name}`);
    }
  };
  await walk(dir, "");
  return out.sort();
}

/** An in-memory F32 tensor whose element `i` (row-major) is `value(i)`. */
export function f32Tensor(shape: number[], value: (i: number) => number): TensorRef {
  const n = shape.reduce((a, b) => a * b, 1);
  return tensorFromBytes(
    "F32",
    shape,
    new Uint8Array(new Float32Array(n).map((_, i) => value(i)).buffer),
  );
}

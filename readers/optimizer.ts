/**
 * Where optimizer state can come from besides torch files and JSON descriptions: a closed table
 * of {@linkcode OptimizerSource}s (the torch.distributed.checkpoint optimizer folder) that writeOptim
 * asks first; a program passes further sources explicitly (`optimizerSources: [...]`).
 *
 * @example Finding the source of a DCP optimizer folder
 * ```ts
 * import { findOptimizerSource } from "./optimizer.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/lora_w2/optim", import.meta.url).pathname;
 * assert.equal((await findOptimizerSource(dir))?.name, "dcp");
 * assert.equal(await findOptimizerSource(new URL("./optimizer.ts", import.meta.url).pathname), undefined);
 * ```
 * @module
 */
import { DCP_HF_OPTIMIZER_SOURCE, DCP_OPTIMIZER_SOURCE } from "./dcp.ts";
import { probeInput } from "./probe.ts";
import type { OptimizerSource } from "./types.ts";

export type { LoadedValue, OptimizerSource } from "./types.ts";

/** The built-in optimizer sources, asked in order. */
export const BUILTIN_OPTIMIZER_SOURCES: readonly OptimizerSource[] = [
  DCP_OPTIMIZER_SOURCE,
  DCP_HF_OPTIMIZER_SOURCE,
];

/** The sources in the order they are asked: `extra` first, then the built-ins not named in `extra`. */
export function optimizerSources(
  extra: readonly OptimizerSource[] = [],
): readonly OptimizerSource[] {
  const taken = new Set(extra.map((s) => s.name));
  return [...extra, ...BUILTIN_OPTIMIZER_SOURCES.filter((s) => !taken.has(s.name))];
}

/**
 * The first source (in {@linkcode optimizerSources} order) that recognises `path`, or undefined
 * (then the input is a torch file or a JSON description). Rejects with the OS error when `path`
 * cannot be `stat`ed.
 */
export async function findOptimizerSource(
  path: string,
  extra: readonly OptimizerSource[] = [],
): Promise<OptimizerSource | undefined> {
  const probe = await probeInput(path);
  for (const source of optimizerSources(extra)) {
    if (await source.detect(probe)) return source;
  }
  return undefined;
}

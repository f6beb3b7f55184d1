/**
 * Pluggable optimizer-state sources for the writeOptim stage: besides torch files and JSON
 * descriptions, `writeOptim` asks every registered source whether it recognises a path (a
 * torch.distributed.checkpoint optimizer folder, for instance) and lets it rebuild the optimizer
 * `state_dict()` value. A module with no dependencies, so format readers can register without
 * import cycles.
 *
 * @example Registering a source
 * ```ts
 * import { optimizerSources, registerOptimizerSource, unregisterOptimizerSource } from "./optimizer_sources.ts";
 * import assert from "node:assert/strict";
 *
 * registerOptimizerSource({
 *   name: "example",
 *   detect: (path) => Promise.resolve(path.endsWith(".example")),
 *   load: () => Promise.reject(new Error("not in this example")),
 * });
 * assert.ok(optimizerSources().some((s) => s.name === "example"));
 * assert.equal(unregisterOptimizerSource("example"), true);
 * ```
 * @module
 */
import type { PyValue } from "../formats/torch/values.ts";

/** A loaded value tree plus what must be closed after writing it. */
export interface LoadedValue {
  /** The Python value. */
  value: PyValue;
  /** Parameter names in optimizer order, when the source knows them (int key `i` is `paramNames[i]`). */
  paramNames?: readonly string[];
  /** Releases open files. */
  close(): Promise<void>;
}

/**
 * A further place optimizer state can come from (a torch.distributed.checkpoint folder, ...):
 * `detect` says whether a path is of this kind, `load` rebuilds the optimizer `state_dict()` value.
 */
export interface OptimizerSource {
  /** Name for reports. */
  readonly name: string;
  /** True when `path` is of this kind; must not throw for other paths. */
  detect(path: string): Promise<boolean>;
  /** Loads the optimizer state (`{'state', 'param_groups'}`, optionally wrapped HALOs-style). */
  load(path: string, options: { keys: "int" | "name" }): Promise<LoadedValue>;
}

const OPTIMIZER_SOURCES: OptimizerSource[] = [];

/** Adds an optimizer source (one with the same name is replaced); asked before torch and JSON files. */
export function registerOptimizerSource(source: OptimizerSource): void {
  const at = OPTIMIZER_SOURCES.findIndex((s) => s.name === source.name);
  if (at >= 0) OPTIMIZER_SOURCES[at] = source;
  else OPTIMIZER_SOURCES.push(source);
}

/** Removes the optimizer source called `name`; true when it was registered. */
export function unregisterOptimizerSource(name: string): boolean {
  const at = OPTIMIZER_SOURCES.findIndex((s) => s.name === name);
  if (at < 0) return false;
  OPTIMIZER_SOURCES.splice(at, 1);
  return true;
}

/** The registered sources, in registration order. */
export function optimizerSources(): readonly OptimizerSource[] {
  return [...OPTIMIZER_SOURCES];
}

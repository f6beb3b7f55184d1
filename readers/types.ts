/**
 * The shape of one input kind: how a path is recognised (`detect`, from an
 * {@linkcode InputProbe}), opened as a lazy {@linkcode StateDict} (`open`) and described for
 * `ckpt inspect` (`inspect`). The built-in kinds form one closed table (`BUILTIN_INPUT_KINDS` in
 * `readers/kinds.ts`); a program adds its own by passing them explicitly (`kinds: [...]`).
 * @module
 */
import type { StateDict } from "../formats/state_dict.ts";
import type { PyValue } from "../formats/torch/values.ts";
import type { InputProbe } from "./probe.ts";
import type { InspectReport } from "./report.ts";

/** Options every input kind's `open` receives. */
export interface InputOpenOptions {
  /** Aborts long opens (many shards). */
  signal?: AbortSignal;
}

/** One kind of weights input ckpt can read. */
export interface InputKind {
  /** Stable name used in configs (`"kind": "hf-shards"`) and reports. */
  readonly name: string;
  /** One-line description for docs and `--help`. */
  readonly summary?: string;
  /** True when the probed path is of this kind; must not throw for other kinds. */
  detect(probe: InputProbe): boolean | Promise<boolean>;
  /** Opens the probed path as a lazy state dict (headers only; tensor data is read on demand). */
  open(probe: InputProbe, options: InputOpenOptions): Promise<StateDict>;
  /**
   * Describes the probed path without reading tensor data. Optional: without it, `inspectPath`
   * opens the state dict and lists its tensors.
   */
  inspect?(probe: InputProbe): Promise<InspectReport>;
}

/** A loaded optimizer (or scheduler) value tree plus what must be closed after writing it. */
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
 * `detect` says whether a probed path is of this kind, `load` rebuilds the optimizer
 * `state_dict()` value. writeOptim asks these before reading torch files and JSON descriptions.
 */
export interface OptimizerSource {
  /** Name for reports. */
  readonly name: string;
  /** True when the probed path is of this kind; must not throw for other paths. */
  detect(probe: InputProbe): boolean | Promise<boolean>;
  /** Loads the optimizer state (`{'state', 'param_groups'}`, optionally wrapped HALOs-style). */
  load(path: string, options: { keys: "int" | "name" }): Promise<LoadedValue>;
}

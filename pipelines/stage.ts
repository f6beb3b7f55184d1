/**
 * The stage contract. A stage is a named async function `(ctx, options) => Promise<void>` with a
 * typed, validated options object. The runner gives every stage the same {@linkcode StageContext}.
 * @module
 */
import type { ZodType } from "zod";

export type { ZodType };

/** The options type a stage's schema produces (defaults applied), i.e. zod's output type. */
export type StageOptions<S extends ZodType> = S extends ZodType<infer O> ? O : never;
import type { StateDict } from "../formats/state_dict.ts";
import type { BackendChoice } from "../merge/types.ts";

/** One event a pipeline emits; the CLI renders them as a live line or as JSON lines. */
export type PipelineEvent =
  | { type: "pipeline-start"; output: string; stages: string[] }
  | { type: "stage-start"; stage: string; index: number }
  | {
    type: "progress";
    stage: string;
    done: number;
    total: number;
    unit: "bytes" | "tensors" | "files";
  }
  | { type: "stage-end"; stage: string; index: number; ms: number }
  | {
    type: "log";
    level: "debug" | "info" | "warn";
    stage?: string;
    message: string;
    data?: Record<string, unknown>;
  }
  | { type: "pipeline-end"; output: string; ms: number; manifestSha256?: string }
  | { type: "pipeline-error"; code: string; message: string; stage?: string };

/** What every stage receives. */
export interface StageContext {
  /** Staging folder: every output file is written here and renamed into place by the runner. */
  readonly outDir: string;
  /** Folder relative input paths resolve against (the config file's folder). */
  readonly baseDir: string;
  /** Aborted on SIGINT/SIGTERM or by the caller; long loops check it. */
  readonly signal: AbortSignal;
  /**
   * True for `--dry-run`: stages plan but write nothing. A stage describes what it would write with
   * `ctx.report(stage, { files: [{ path: "model.safetensors", bytes: 123 }, ...] })` (paths relative
   * to the output folder); the runner collects every report's `files` into the plan it prints.
   */
  readonly dryRun: boolean;
  /** Merge backend the caller asked for (`--backend`); stages fall back to their own option. */
  readonly backend?: BackendChoice;
  /** The model weights as a lazy state dict, set by gatherShards and wrapped by mergeLora. */
  stateDict: StateDict | undefined;
  /** The model's `config.json` object, set by gatherShards when the input has one. */
  modelConfig: Record<string, unknown> | undefined;
  /** Folder the model came from (for config.json, generation_config.json, tokenizer fallbacks). */
  modelDir: string | undefined;
  /** Adapter folder last merged or written, if any (tokenizer files are looked up there first). */
  adapterDir: string | undefined;
  /** Resolves a config path against {@linkcode StageContext.baseDir}. */
  resolve(path: string): string;
  /** Sends an event to the run's sink (progress, logs). */
  emit(event: PipelineEvent): void;
  /** Records an input file for the manifest. */
  addInput(path: string, role: string): void;
  /**
   * Merges `data` into the stage's report in the manifest (and the dry-run plan). Conventional keys:
   * `files` (array of `{ path, bytes }`, the files written or planned), `backend` (merge backend used),
   * `dtype` (output weight dtype); anything else is kept as is.
   */
  report(stage: string, data: Record<string, unknown>): void;
}

/** A stage: its name, its options schema (unknown keys rejected) and its function. */
export interface Stage<S extends ZodType = ZodType> {
  /** Name used in configs (`"use": "gatherShards"`). */
  readonly name: string;
  /** One-line description for `--help` and docs. */
  readonly summary: string;
  /** Options schema; the `use` key is removed before parsing. */
  readonly options: S;
  /** Runs the stage. */
  run(ctx: StageContext, options: StageOptions<S>): Promise<void>;
  /**
   * Optional checks that need no earlier stage (inputs exist, files parse): the runner calls every
   * stage's preflight before the first stage runs, so bad input fails before any work is done.
   * `ctx.stateDict` and `ctx.modelConfig` are not set yet.
   */
  preflight?(ctx: StageContext, options: StageOptions<S>): Promise<void>;
}

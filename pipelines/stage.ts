/**
 * The stage contract. A stage is a named async function `(ctx, options) => Promise<void>` with a
 * typed, validated options object. The runner gives every stage the same {@linkcode StageContext}.
 * @module
 */

/** One problem a schema found (the fields every zod 4 issue has; zod adds more per `code`). */
export interface SchemaIssue {
  /** Issue kind, such as `invalid_type` or `unrecognized_keys`. */
  readonly code: string;
  /** Where in the value, as keys and indexes. */
  readonly path: readonly PropertyKey[];
  /** Human-readable description. */
  readonly message: string;
}

/** What {@linkcode OptionsSchema.safeParse} returns. */
export type SchemaResult<T> =
  | { readonly success: true; readonly data: T }
  | { readonly success: false; readonly error: { readonly issues: readonly SchemaIssue[] } };

/**
 * A stage's options schema: anything with zod's `safeParse` (every zod 4 schema is one; use
 * `z.strictObject` so that unknown keys are errors).
 */
export interface OptionsSchema<T = unknown> {
  /** Validates `input`, applying defaults. */
  safeParse(input: unknown): SchemaResult<T>;
}

/** The options type a stage's schema produces (defaults applied): zod's output type. */
export type StageOptions<S extends OptionsSchema> = S extends { safeParse(input: unknown): infer R }
  ? R extends { success: true; data: infer O } ? O : never
  : never;
import { CkptError } from "../errors.ts";
import type { StateDict } from "../formats/state_dict.ts";
import type { BackendChoice } from "../merge/backend.ts";
import type { MergeReport } from "../merge/lora_types.ts";

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
  /**
   * Staging folder: every output file is written here and renamed into place by the runner. Every
   * file a stage writes must be listed in a report (`ctx.report(stage, { files: [{ path, bytes }] })`,
   * `path` relative to this folder, `bytes` its final size): before the rename, the runner checks
   * the folder holds exactly the reported files with those sizes (`STAGING_UNREPORTED` for
   * anything else, `STAGING_MISMATCH` for a missing file or another size), and the manifest lists
   * them.
   */
  readonly outDir: string;
  /** Folder relative input paths resolve against (the config file's folder). */
  readonly baseDir: string;
  /** Aborted on SIGINT/SIGTERM, by the caller, or when the run failed; long loops check it. */
  readonly signal: AbortSignal;
  /**
   * True for `--dry-run`: stages plan but write nothing. A stage describes what it would write with
   * `ctx.report(stage, { files: [{ path: "model.safetensors", bytes: 123 }, ...] })` (paths relative
   * to the output folder); the runner collects every report's `files` into the plan it prints.
   */
  readonly dryRun: boolean;
  /** Merge backend the caller asked for (`--backend`); stages fall back to their own option. */
  readonly backend?: BackendChoice;
  /**
   * Hashes an output file while it is written, so the manifest needs no second pass over it. A stage
   * that writes a file itself may call this with every byte of it, in file order, right after
   * writing them (`path` relative to {@linkcode StageContext.outDir}, the file's final name, not a
   * temporary one); the writers' `onBytes` options fit it. The bytes are copied before it returns
   * (the caller may reuse its buffer); await a returned promise before writing more (it bounds the
   * bytes queued for hashing). At the end of the stage the runner uses the streamed digest only
   * when the bytes fed add up to the file's size on disk, else it hashes the file as usual. Absent
   * in dry runs and when a stage is called outside the runner.
   */
  readonly onOutputBytes?: (path: string, bytes: Uint8Array) => void | Promise<void>;
  /**
   * Set when the run is one part of a split export (`ckpt run --part I/N`): which part this is,
   * and how a stage that runs in every part (`split: "every-part"`) learns which of its files are
   * this part's to write. Absent in a one-machine run.
   */
  readonly part?: PartContext;
  /**
   * Hands the runner a slow check a preflight started (a promise that rejects with the check's
   * coded error), so the stages need not wait for it: the runner runs them meanwhile, ends the
   * run with the check's error (aborting {@linkcode StageContext.signal} for the stage running)
   * as soon as it fails, and finishes nothing (no manifest, no rename) before every check passed.
   * The check should watch `ctx.signal`, which also stops it when the run fails otherwise. Absent
   * when a stage is called outside the runner: a preflight then awaits its check itself.
   */
  readonly defer?: (check: Promise<void>) => void;
  /**
   * Hands the runner something a preflight opened for its stage's run (a file it loaded), to close
   * when the run ends, whichever way: after the last stage, on a failure or an abort, in a dry run.
   * The runner awaits it before it returns; closing twice must be safe (the run may close it
   * first). Handed over after the runner closed the rest (a preflight it stopped waiting for on an
   * abort), it is closed at once. Absent when a stage is called outside the runner: a preflight
   * then keeps nothing open.
   */
  readonly closeAtEnd?: (close: () => Promise<void>) => void;
  /** The model weights as a lazy state dict, set by gatherShards and wrapped by mergeLora. */
  stateDict: StateDict | undefined;
  /** The model's `config.json` object, set by gatherShards when the input has one. */
  modelConfig: Record<string, unknown> | undefined;
  /** Folder the model came from (for config.json, generation_config.json, tokenizer fallbacks). */
  modelDir: string | undefined;
  /** Adapter folder last merged or written, if any (tokenizer files are looked up there first). */
  adapterDir: string | undefined;
  /**
   * The last LoRA merge's report, set by mergeLora. Live: its `changes` (‖ΔW‖/‖W‖ per module) fill
   * in while the writer reads the merged tensors, so writeReport (after writeModel) sees them all.
   */
  mergeReport?: MergeReport;
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

/** One file a split export's weight plan names: its path in the output and its (planned) size. */
export interface PlannedPartFile {
  /** Path relative to the output folder. */
  path: string;
  /** Size in bytes (the planned size; an estimate for `.bin` shards). */
  bytes: number;
}

/**
 * What a stage that writes its share of a split export records of the whole output, so `--finish`
 * can complete the folder and its manifest without reading any weights.
 */
export interface PartPlan {
  /** Every file the stage writes in a one-machine run, in its report's order. */
  files: string[];
  /** The files shared out between the parts (the weight shards), with planned sizes. */
  shared: PlannedPartFile[];
  /** The shard index the finish writes (path and exact text), when the output has one. */
  index?: { path: string; text: string };
}

/** How one part of a split export sees it (see {@linkcode StageContext.part}). */
export interface PartContext {
  /** This part, 0-based. */
  readonly index: number;
  /** How many parts the export has. */
  readonly count: number;
  /** True for the one part that runs the `one-part` stages and writes the shared small files. */
  readonly lead: boolean;
  /**
   * The files of `files` that are this part's to write, by the byte-balanced plan every part
   * computes alike from the same list (largest first, each to the least-loaded part).
   */
  mine(files: readonly PlannedPartFile[]): Set<string>;
  /** Records the whole output's plan for the stage running (`PARTS_MISMATCH` at finish when parts disagree). */
  record(plan: PartPlan): void;
  /**
   * Marks the running stage's report key `key` as measured per part: an array of objects, each
   * named by its `by` field, filled as this part reads its share (mergeLora's `moduleChanges`).
   * The finish joins every part's items (an item several parts measured must be equal in all)
   * in `order`, the one-machine report's order.
   */
  gather(spec: PartGather): void;
}

/** A report key measured per part; see {@linkcode PartContext.gather}. */
export interface PartGather {
  /** The report key (its value: an array of objects). */
  key: string;
  /** The field naming each item. */
  by: string;
  /** Item names in the one-machine report's order. */
  order: string[];
}

/** A stage: its name, its options schema (unknown keys rejected) and its function. */
export interface Stage<S extends OptionsSchema = OptionsSchema> {
  /** Name used in configs (`"use": "gatherShards"`). */
  readonly name: string;
  /** One-line description for `--help` and docs. */
  readonly summary: string;
  /** Options schema; the `use` key is removed before parsing. */
  readonly options: S;
  /**
   * How the stage runs in a split export (`ckpt run --part I/N`): `"one-part"` runs in the lead
   * part only (its files land once); `"every-part"` runs in every part and writes only what
   * {@linkcode StageContext.part} assigns it (or nothing: readers, transforms). A stage without it
   * cannot run in a split export (`SPLIT_STAGE`).
   */
  readonly split?: "one-part" | "every-part";
  /** Runs the stage. */
  run(ctx: StageContext, options: StageOptions<S>): Promise<void>;
  /**
   * Optional checks that need no earlier stage (inputs exist, files parse): the runner calls every
   * stage's preflight before the first stage runs, so bad input fails before any work is done.
   * `ctx.stateDict` and `ctx.modelConfig` are not set yet. A slow check may be handed to
   * {@linkcode StageContext.defer} instead of awaited: it then runs beside the stages.
   */
  preflight?(ctx: StageContext, options: StageOptions<S>): Promise<void>;
}

/** What {@linkcode defineStage} takes: a stage whose options type is inferred from its schema. */
export interface StageSpec<S extends OptionsSchema> {
  /** Name used in configs (`"use": "gatherShards"`). */
  readonly name: string;
  /** One-line description for `--help` and docs. */
  readonly summary: string;
  /** Options schema (use `z.strictObject` so unknown keys are errors). */
  readonly options: S;
  /** How the stage runs in a split export; see {@linkcode Stage.split}. */
  readonly split?: "one-part" | "every-part";
  /** Runs the stage with validated options (defaults applied). */
  run(ctx: StageContext, options: StageOptions<S>): Promise<void>;
  /** Checks that need no earlier stage; see {@linkcode Stage.preflight}. */
  preflight?(ctx: StageContext, options: StageOptions<S>): Promise<void>;
}

/**
 * Builds a {@linkcode Stage} whose `run` and `preflight` receive the options type its schema
 * produces, so a stage declares its options once (the schema) and never as a second interface.
 * The options a config writes are `z.input<typeof schema>`; the ones `run` sees `z.output<...>`.
 *
 * @example A stage with typed options
 * ```ts
 * import { defineStage, parseStageOptions } from "./stage.ts";
 * import { z } from "zod";
 * import assert from "node:assert/strict";
 *
 * const note = defineStage({
 *   name: "note",
 *   summary: "writes note.txt",
 *   options: z.strictObject({ text: z.string(), times: z.number().default(1) }),
 *   async run(ctx, options) {
 *     const text = options.text.repeat(options.times);
 *     await Deno.writeTextFile(`${ctx.outDir}/note.txt`, text);
 *     ctx.report("note", { files: [{ path: "note.txt", bytes: text.length }] });
 *   },
 * });
 * assert.deepEqual(parseStageOptions(note, { text: "hi" }), { text: "hi", times: 1 });
 * ```
 */
export function defineStage<S extends OptionsSchema>(spec: StageSpec<S>): Stage<S> {
  return spec;
}

/**
 * Validates `input` against a stage's options schema (defaults applied), for library users who call
 * a stage directly rather than through a config. Throws `CONFIG_INVALID` naming the first issue.
 *
 * @example
 * ```ts
 * import { parseStageOptions } from "./stage.ts";
 * import { writeMetricsStage } from "./stages/write_metrics.ts";
 * import assert from "node:assert/strict";
 *
 * const options = parseStageOptions(writeMetricsStage, { from: "eval.json", counter: 64000 });
 * assert.equal((options as { counter: number }).counter, 64000);
 * ```
 */
export function parseStageOptions<S extends OptionsSchema>(
  stage: Stage<S>,
  input: unknown,
): StageOptions<S> {
  const parsed = stage.options.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? ` at ${issue.path.map(String).join(".")}` : "";
    throw new CkptError(
      "CONFIG_INVALID",
      `Cannot use these ${stage.name} options${where}: ${issue?.message ?? "invalid"}`,
      { details: { stage: stage.name, issues: parsed.error.issues } },
    );
  }
  return parsed.data as StageOptions<S>;
}

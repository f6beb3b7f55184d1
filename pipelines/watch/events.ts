/**
 * What `ckpt watch` talks in: the export job a runner gets and what it returns, the log events
 * of a tick (one JSON line each in the CLI), and the options and summary of a tick.
 * @module
 */
import { CkptError } from "../../errors.ts";
import type { PipelineEvent } from "../stage.ts";
import type { WatchSettings } from "./config.ts";
import type { CheckpointFolder } from "./scan.ts";

/** What the runner gets for one checkpoint. */
export interface ExportJob {
  /** The checkpoint folder. */
  readonly checkpoint: CheckpointFolder;
  /**
   * Pipeline variables: `step` (the number in the folder's name, `step-64000` -> `64000`, or the
   * whole name when it has none: `FINAL`), `name` (the folder's name), `run` (its parent folder),
   * `checkpoint` (its absolute path), `counter` (the number in its name, or `""`).
   */
  readonly vars: Readonly<Record<string, string>>;
  /** True when a dead earlier try may have left this checkpoint's output in place: replace it. */
  readonly overwrite: boolean;
  /** Aborted on SIGTERM; the runner must stop and clean up. */
  readonly signal: AbortSignal;
  /** Pipeline events of the export (stage timings are logged from them). */
  readonly onEvent: (event: PipelineEvent) => void;
}

/** What a successful export returns. */
export interface ExportResult {
  /** Absolute path of the finished output folder. */
  output: string;
  /** sha256 of its manifest, if the runner wrote one. */
  manifestSha256: string | undefined;
  /**
   * Set when the runner exported nothing but handed the checkpoint to a split export on a cluster
   * (`split_handoff.ts`): the parts and the commands that do it. Not verified.
   */
  handedOff?: { parts: number; part: string; finish: string; slurm: string };
}

/** Runs the pipeline for one checkpoint (throws on failure). */
export type ExportRunner = (job: ExportJob) => Promise<ExportResult>;

/** Verifies a finished output folder (throws, preferably a CkptError, when it does not verify). */
export type ExportVerifier = (output: string, signal: AbortSignal) => Promise<void>;

/** One machine-readable log event (the CLI prints each as one JSON line). */
export type WatchEvent =
  & { ts: string }
  & (
    | { event: "tick-start"; runsDir: string }
    | { event: "found"; checkpoint: string; step?: number }
    | { event: "skipped-incomplete"; checkpoint: string; reason: string; detail?: string }
    | { event: "skipped-locked"; checkpoint: string }
    | { event: "started"; checkpoint: string; try: number; overwrite: boolean }
    | { event: "stage"; checkpoint: string; stage: string; ms: number }
    | {
      event: "done";
      checkpoint: string;
      output: string;
      manifestSha256: string | null;
      ms: number;
    }
    | {
      event: "failed";
      checkpoint: string;
      code: string;
      message: string;
      try: number;
      final: boolean;
    }
    | {
      event: "handed-off";
      checkpoint: string;
      output: string;
      parts: number;
      part: string;
      finish: string;
      slurm: string;
    }
    | { event: "aborted"; checkpoint: string }
    | { event: "pruned"; checkpoint: string; output: string }
    | { event: "prune-failed"; checkpoint: string; output: string; code: string; message: string }
    | { event: "retry-failed"; checkpoints: string[] }
    | { event: "tick-busy" }
    | { event: "tick-error"; code: string; message: string }
    | {
      event: "tick-end";
      ms: number;
      exported: number;
      failed: number;
      incomplete: number;
      locked: number;
      aborted: boolean;
    }
  );

/** Distributes `Omit` over the union of {@linkcode WatchEvent}. */
export type EventBody = WatchEvent extends infer E ? E extends unknown ? Omit<E, "ts"> : never
  : never;

/** Options of {@linkcode watchOnce}. */
export interface WatchOptions {
  /** The runs folder (checkpoint folders are found under it; state is kept in it). */
  runsDir: string;
  /** Watch settings (see `config.ts`). */
  settings: WatchSettings;
  /** Runs the export of one checkpoint. */
  runner: ExportRunner;
  /** Verifies an output; used when `settings.verify` is true. */
  verify?: ExportVerifier;
  /** Aborts the tick (SIGTERM): the running export is stopped, no new one starts. */
  signal?: AbortSignal;
  /** Receives every log event. */
  onEvent?: (event: WatchEvent) => void;
  /** Clock in ms (tests). Default `Date.now`. */
  now?: () => number;
}

/** What one tick did. */
export interface TickSummary {
  /** Checkpoints exported this tick, in order. */
  exported: string[];
  /** Checkpoints whose try failed this tick. */
  failed: string[];
  /** Checkpoints still incomplete. */
  incomplete: string[];
  /** Checkpoints skipped because another watcher holds them. */
  locked: string[];
  /** Checkpoints already done or failed before this tick. */
  settled: number;
  /** True when the tick was aborted. */
  aborted: boolean;
  /** Duration in ms. */
  ms: number;
}

/** The code and message an export error is logged and recorded with. */
export function errorText(err: unknown): { code: string; message: string } {
  if (err instanceof CkptError) return { code: err.code, message: err.message };
  if (err instanceof Error) {
    return { code: "EXPORT_FAILED", message: `${err.name}: ${err.message}` };
  }
  return { code: "EXPORT_FAILED", message: String(err) };
}

/**
 * The plan every part of a split export computes alike, without talking to the others: which part
 * this process is (`--part I/N`, or `--part auto` from a Slurm job array or a Kubernetes Indexed
 * Job), which weight files each part writes (byte-balanced, {@linkcode assignParts}), and the
 * shared folder the parts write into (its name derived from the output and the config,
 * {@linkcode splitId}). The runner of one part is `run_part.ts`, the finish `finish_parts.ts`.
 *
 * @example Eight parts from a Slurm job array, and a byte-balanced split
 * ```ts
 * import { assignParts, partFromEnv } from "./split.ts";
 * import assert from "node:assert/strict";
 *
 * const env = { SLURM_ARRAY_TASK_ID: "3", SLURM_ARRAY_TASK_COUNT: "8", SLURM_ARRAY_TASK_MIN: "0" };
 * assert.deepEqual(partFromEnv(env), { index: 3, count: 8, source: "slurm" });
 * const files = [{ path: "a", bytes: 5 }, { path: "b", bytes: 3 }, { path: "c", bytes: 3 }];
 * assert.deepEqual(assignParts(files, 2), [0, 1, 1]);
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { CkptError } from "../errors.ts";
import type { PipelineConfig } from "./config.ts";
import type { PlannedPartFile } from "./stage.ts";

/** One part of a split export. */
export interface PartSpec {
  /** This part, 0-based (Kubernetes' `JOB_COMPLETION_INDEX` counts so). */
  index: number;
  /** How many parts. */
  count: number;
  /** Where it came from: the command line, a Slurm array, or a Kubernetes Indexed Job. */
  source: "cli" | "slurm" | "kubernetes";
}

/** Most parts one export may have (each part is a process; more than the weight files is waste). */
export const MAX_PARTS = 4096;

function partError(message: string): CkptError {
  return new CkptError("PART_SPEC", message);
}

/** A count of parts: an integer from 1 to {@linkcode MAX_PARTS}, or `PART_SPEC`. */
export function parsePartCount(text: string, what: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_PARTS) {
    throw partError(
      `Cannot use ${what} "${text}": expected a number of parts from 1 to ${MAX_PARTS}`,
    );
  }
  return n;
}

/**
 * Parses `--part I/N` (0 <= I < N); `PART_SPEC` otherwise.
 *
 * @example
 * ```ts
 * import { parsePartSpec } from "./split.ts";
 * import assert from "node:assert/strict";
 *
 * assert.deepEqual(parsePartSpec("2/8"), { index: 2, count: 8, source: "cli" });
 * assert.throws(() => parsePartSpec("8/8"), /0 to 7/);
 * ```
 */
export function parsePartSpec(text: string): PartSpec {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  if (!m) {
    throw partError(`Cannot use --part "${text}": expected I/N (part I of N, I from 0) or auto`);
  }
  const count = parsePartCount(m[2]!, "--part's count");
  const index = Number(m[1]);
  if (index >= count) {
    throw partError(
      `Cannot use --part "${text}": part ${index} does not exist, the parts are 0 to ${count - 1}`,
    );
  }
  return { index, count, source: "cli" };
}

/**
 * `--part auto`: the part from the environment. A Slurm job array gives `SLURM_ARRAY_TASK_ID` and
 * `SLURM_ARRAY_TASK_COUNT` (with `SLURM_ARRAY_TASK_MIN`/`MAX`: `--array=1-8` is parts 0 to 7; an
 * array with a step or gaps is refused, its ids would not cover 0..N-1). A Kubernetes Indexed Job
 * gives `JOB_COMPLETION_INDEX` but no count: it comes from `count` (`--parts-count`) or the
 * `CKPT_PARTS` variable. `PART_SPEC` when neither scheduler's variables are set.
 */
export function partFromEnv(env: Record<string, string | undefined>, count?: number): PartSpec {
  const slurmId = env.SLURM_ARRAY_TASK_ID;
  if (slurmId !== undefined && slurmId !== "") {
    const total = count ??
      (env.SLURM_ARRAY_TASK_COUNT !== undefined
        ? parsePartCount(env.SLURM_ARRAY_TASK_COUNT, "SLURM_ARRAY_TASK_COUNT")
        : undefined);
    if (total === undefined) {
      throw partError(
        "Cannot use --part auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not " +
          "(pass --parts-count N)",
      );
    }
    const min = env.SLURM_ARRAY_TASK_MIN === undefined ? 0 : Number(env.SLURM_ARRAY_TASK_MIN);
    const max = env.SLURM_ARRAY_TASK_MAX === undefined
      ? undefined
      : Number(env.SLURM_ARRAY_TASK_MAX);
    if (max !== undefined && max - min + 1 !== total) {
      throw partError(
        `Cannot use --part auto: the Slurm array runs ids ${min} to ${max} but has ${total} tasks ` +
          `(an array with a step or gaps, like --array=0-15:2, cannot number the parts 0 to ${
            total - 1
          }; use --array=0-${total - 1})`,
      );
    }
    const index = Number(slurmId) - min;
    if (!Number.isSafeInteger(index) || index < 0 || index >= total) {
      throw partError(
        `Cannot use --part auto: SLURM_ARRAY_TASK_ID ${slurmId} is not one of the ${total} parts ` +
          `(ids ${min} to ${min + total - 1})`,
      );
    }
    return { index, count: total, source: "slurm" };
  }
  const k8s = env.JOB_COMPLETION_INDEX;
  if (k8s !== undefined && k8s !== "") {
    const total = count ??
      (env.CKPT_PARTS !== undefined ? parsePartCount(env.CKPT_PARTS, "CKPT_PARTS") : undefined);
    if (total === undefined) {
      throw partError(
        "Cannot use --part auto: JOB_COMPLETION_INDEX is set but Kubernetes gives no count; pass " +
          "--parts-count N or set CKPT_PARTS to the Job's completions",
      );
    }
    const index = /^\d+$/.test(k8s) ? Number(k8s) : NaN;
    if (!Number.isSafeInteger(index) || index >= total) {
      throw partError(
        `Cannot use --part auto: JOB_COMPLETION_INDEX ${k8s} is not one of the ${total} parts (0 to ${
          total - 1
        })`,
      );
    }
    return { index, count: total, source: "kubernetes" };
  }
  throw partError(
    "Cannot use --part auto: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor " +
      "JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set; pass --part I/N",
  );
}

/**
 * The part (0 to `count - 1`) that writes each of `files`: largest file first, each to the part
 * with the fewest bytes so far, ties to the lower part (files of one size keep their order). The
 * same list and count give the same answer in every process. The last part, which also runs the
 * one-part stages, is the one left lightest when there are fewer files than parts.
 */
export function assignParts(files: readonly PlannedPartFile[], count: number): number[] {
  const order = files.map((_, i) => i).sort((a, b) => files[b]!.bytes - files[a]!.bytes || a - b);
  const loads = new Array<number>(count).fill(0);
  const owner = new Array<number>(files.length).fill(0);
  for (const i of order) {
    let best = 0;
    for (let p = 1; p < count; p++) if (loads[p]! < loads[best]!) best = p;
    owner[i] = best;
    loads[best]! += files[i]!.bytes;
  }
  return owner;
}

/** The part that runs the one-part stages (tokenizer, optimizer, metrics, value head). */
export function leadPart(count: number): number {
  return count - 1;
}

/**
 * The identity of one split export: 16 hex digits of the sha256 of the output, the config's
 * folder, every stage with its resolved options, and the number of parts. Parts started with the
 * same config and count find the same shared folder; a changed config or count gets another.
 */
export function splitId(cfg: PipelineConfig, count: number): string {
  const what = JSON.stringify({
    output: cfg.output,
    baseDir: cfg.baseDir,
    count,
    stages: cfg.stages.map((s) => ({ use: s.use, options: s.options })),
  });
  return createHash("sha256").update(what).digest("hex").slice(0, 16);
}

/** File-name stem of part `index` of `count`: `part-00003-of-00008`. */
export function partName(index: number, count: number): string {
  const pad = (n: number) => String(n).padStart(5, "0");
  return `part-${pad(index)}-of-${pad(count)}`;
}

/** The stages of `cfg` that cannot run split (no `split` mode); `SPLIT_STAGE` names them. */
export function checkSplittable(cfg: PipelineConfig): void {
  const bad = cfg.stages.filter((s) => s.stage.split === undefined);
  if (bad.length === 0) return;
  throw new CkptError(
    "SPLIT_STAGE",
    `Cannot split the export: stage ${
      bad.map((s) => `${s.use} (stages[${s.index}])`).join(", ")
    } does not say how it runs in parts (its definition needs split: "one-part" to run once, ` +
      `or "every-part" if it writes only what ctx.part assigns it)`,
    { details: { stages: bad.map((s) => s.use) } },
  );
}

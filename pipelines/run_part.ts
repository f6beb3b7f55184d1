/**
 * One part of a split export (`ckpt run <config> --part I/N`): runs the config's stages with
 * `ctx.part` set, so the weights sink writes only the shard files the byte-balanced plan gives
 * part I and the one-part stages (tokenizer, optimizer, metrics, value head) run only in the lead
 * part (N−1). Every part writes into its own work folder inside the shared folder, checks it holds
 * exactly what its stages reported, hashes it (while written), moves the files into the shared
 * folder and leaves a receipt (files, sizes, sha256, the weight plan); `finish_parts.ts` turns the
 * receipts into the finished output.
 *
 * Locks (see `_split_receipts.ts` for the names): a part holds its output's lock *shared* for its
 * whole life, so parts run side by side while a one-machine run or a finish (both exclusive) can
 * neither start while a part runs nor be overtaken by one; and it holds its own part lock, so the
 * same part twice at once is `PART_RUNNING`. A part with a receipt does nothing; a part whose
 * output already holds this split's finished manifest does nothing; a part that fails removes its
 * work folder and records why (`--finish` names it).
 *
 * @example Two parts and the finish on a small model
 * ```ts
 * import { runPart } from "./run_part.ts";
 * import { finishParts } from "./finish_parts.ts";
 * import { writeSafetensors } from "../formats/safetensors.ts";
 * import { StateDict, tensorFromBytes } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await writeSafetensors(`${dir}/in.safetensors`, new StateDict([
 *   ["a.weight", tensorFromBytes("U8", [64], new Uint8Array(64).fill(1))],
 *   ["b.weight", tensorFromBytes("U8", [64], new Uint8Array(64).fill(2))],
 * ]));
 * const config = {
 *   output: "out",
 *   stages: [
 *     { use: "gatherShards", from: "in.safetensors" },
 *     { use: "writeModel", maxShardSize: "100B" },
 *   ],
 * };
 * for (const index of [1, 0]) await runPart(config, { baseDir: dir, part: { index, count: 2 } });
 * const done = await finishParts(config, { baseDir: dir, count: 2 });
 * assert.deepEqual(done.manifest.files.map((f) => f.path), [
 *   "model-00001-of-00002.safetensors",
 *   "model-00002-of-00002.safetensors",
 *   "model.safetensors.index.json",
 * ]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { dirname, join } from "node:path";
import { CkptError } from "../errors.ts";
import type { PipelineConfig, RawConfig } from "./config.ts";
import { readManifest, toolInfo } from "./manifest.ts";
import type { ManifestFile } from "./manifest.ts";
import type { PartContext, PartGather, PartPlan, PipelineEvent } from "./stage.ts";

/** A gather with the stage that asked for it. */
type PartGatherAt = PartGather & { stage: number };
import { assignParts, checkSplittable, leadPart, splitId } from "./split.ts";
import { describeHolder, FileLock, readLockHolder } from "./lock.ts";
import { fsStep } from "./_faults.ts";
import { createRunContext } from "./_context.ts";
import { OutputHasher } from "./_output_hasher.ts";
import {
  makeParents,
  OutputLock,
  removeCreatedParents,
  removeCreatedParentsSync,
} from "./_output_lock.ts";
import {
  checkInputs,
  errorEvent,
  reportedFiles,
  resolveConfig,
  runError,
  safeEmitter,
} from "./_run_shared.ts";
import {
  type PartFailure,
  partPaths,
  type PartReceipt,
  readReceipt,
  SPLIT_DIR,
  splitFolder,
  type StagePlan,
  writeJsonDurably,
} from "./_split_receipts.ts";
import { abortError, round1, signalsPolled, StageLoop } from "./_stage_loop.ts";
import { checkReplaceable, exists, fsCall, StagingFolder } from "./_staging.ts";
import type { RunOptions } from "./run.ts";

/**
 * Options of {@linkcode runPart}: the runner's plus which part. With `dryRun` the part only plans:
 * nothing is locked, created or written, and the result lists the files it would write.
 */
export interface PartRunOptions extends RunOptions {
  /** This part (0-based) and how many parts the export has. */
  part: { index: number; count: number };
}

/** What {@linkcode runPart} resolves to. */
export interface PartResult {
  /** Absolute output folder. */
  output: string;
  /** This part (0-based). */
  part: number;
  /** How many parts the export has. */
  count: number;
  /**
   * `written`; `planned` (a dry run: `files` are the planned files, sizes planned, no sha256);
   * `already-done` (this part has a receipt); `already-finished` (the output is in place).
   */
  status: "written" | "planned" | "already-done" | "already-finished";
  /** The shared folder the parts write into. */
  folder: string;
  /** The receipt's path. */
  receipt: string;
  /** The files this part wrote (from its receipt when it was already done). */
  files: ManifestFile[];
  /** Wall time in ms. */
  ms: number;
}

/** The output holds the finished manifest of split `id` (so there is nothing left to do). */
export async function finishedBySplit(output: string, id: string): Promise<boolean> {
  if (!(await exists(output))) return false;
  const manifest = await readManifest(output).catch(() => undefined);
  const split = (manifest as { split?: { id?: unknown } } | undefined)?.split;
  return split?.id === id;
}

/** The part's own lock; `PART_RUNNING` naming the holder when the same part runs elsewhere. */
async function lockPart(path: string, index: number, count: number): Promise<FileLock> {
  const lock = await FileLock.tryAcquire(path, `part ${index} of ${count}`, {
    code: "PART_RUNNING",
    mkdir: false,
  });
  if (lock) return lock;
  const holder = await readLockHolder(path);
  throw new CkptError(
    "PART_RUNNING",
    `Cannot run part ${index} of ${count}: it is already running: ${describeHolder(holder)} ` +
      `(lock "${path}"; a part runs once at a time, rerun it when that one has ended)`,
    { file: path, details: { part: index, ...(holder ?? {}) } },
  );
}

/** The `ctx.part` of part `index` of `count`, recording the plans into `plans`. */
function partContext(
  index: number,
  count: number,
  recorded: { plans: StagePlan[]; gathers: PartGatherAt[] },
  current: () => number,
): PartContext {
  return {
    index,
    count,
    lead: index === leadPart(count),
    mine(files) {
      const owner = assignParts(files, count);
      return new Set(files.filter((_, i) => owner[i] === index).map((f) => f.path));
    },
    record(plan: PartPlan) {
      recorded.plans.push({ stage: current(), ...plan });
    },
    gather(spec: PartGather) {
      recorded.gathers.push({ stage: current(), ...spec });
    },
  };
}

/** Moves the checked files of `work` into `folder` (same file system: renames) and fsyncs. */
async function moveInto(work: string, folder: string, paths: readonly string[]): Promise<void> {
  const dirs = new Set<string>([folder]);
  for (const rel of paths) {
    const to = join(folder, rel);
    if (dirname(to) !== folder) {
      await fsCall(
        "mkdir",
        "create",
        dirname(to),
        () => Deno.mkdir(dirname(to), { recursive: true }),
      );
      dirs.add(dirname(to));
    }
    await fsCall("rename", "move a part's file to", to, () => Deno.rename(join(work, rel), to));
  }
  for (const d of dirs) {
    await fsCall("fsync-dir", "sync the folder", d, async () => {
      const f = await Deno.open(d, { read: true });
      try {
        await f.sync();
      } finally {
        f.close();
      }
    });
  }
}

/**
 * Runs part `options.part.index` of `options.part.count` of a split export; see the module doc.
 * Errors: those of `runPipeline`, plus `SPLIT_STAGE` (a stage with no split mode), `PART_SPEC`
 * (a part outside 0..N−1) and `PART_RUNNING`.
 */
export async function runPart(
  config: PipelineConfig | RawConfig | string,
  options: PartRunOptions,
): Promise<PartResult> {
  const t0 = performance.now();
  const startedAt = new Date().toISOString();
  const cfg = await resolveConfig(config, options);
  const { index, count } = options.part;
  if (
    !Number.isSafeInteger(count) || count < 1 || !Number.isSafeInteger(index) || index < 0 ||
    index >= count
  ) {
    throw new CkptError("PART_SPEC", `Cannot run part ${index} of ${count}: parts are 0 to N-1`);
  }
  checkSplittable(cfg);
  const id = splitId(cfg, count);
  const output = cfg.output;
  const folder = splitFolder(output, id);
  const paths = partPaths(folder, index, count);
  const signal = options.signal ?? new AbortController().signal;
  const emit = safeEmitter(options.onEvent);
  const lead = index === leadPart(count);
  const stages = cfg.stages.filter((s) => lead || s.stage.split === "every-part");
  emit({ type: "pipeline-start", output, stages: stages.map((s) => s.use) });
  const result = (status: PartResult["status"], files: ManifestFile[]): PartResult => ({
    output,
    part: index,
    count,
    status,
    folder,
    receipt: paths.receipt,
    files,
    ms: performance.now() - t0,
  });

  const loop = new StageLoop({ ...cfg, stages }, signal, emit);
  if (options.dryRun) {
    return result("planned", await planPart(cfg, loop, { index, count, signal, emit, options }));
  }
  let lock: OutputLock | undefined;
  let partLock: FileLock | undefined;
  let work: StagingFolder | undefined;
  let hasher: OutputHasher | undefined;
  let createdParent: string | undefined;
  // A process that exits while this part is live (the CLI's grace timer after a signal) takes
  // its work folder and locks with it, as the finally below would (after the receipt too).
  const onUnload = () => {
    work?.discardSync();
    partLock?.releaseSync({ remove: true });
    lock?.releaseSync();
    removeCreatedParentsSync(output, createdParent);
  };
  globalThis.addEventListener("unload", onUnload);
  try {
    if (signal.aborted) throw abortError(signal);
    await checkInputs(cfg);
    createdParent = await makeParents(output);
    lock = await OutputLock.acquire(output, {
      wait: options.wait ?? false,
      signal,
      shared: true,
      purpose: `part ${index} of ${count} of ${output}`,
    });
    if (await finishedBySplit(output, id)) {
      return result("already-finished", []);
    }
    if (await exists(output)) {
      if (!options.overwrite) {
        throw new CkptError(
          "OUTPUT_EXISTS",
          `Cannot write output "${output}": it already exists (pass --overwrite to the parts ` +
            `and the finish to replace it)`,
          { file: output },
        );
      }
      await checkReplaceable(output, options.force ?? false);
    }
    await fsCall(
      "mkdir",
      "create the parts folder",
      folder,
      () => Deno.mkdir(join(folder, SPLIT_DIR), { recursive: true }),
    );
    partLock = await lockPart(paths.lock, index, count);
    const done = await readReceipt(folder, id, index, count);
    if (done) {
      return result(
        "already-done",
        done.files.map(({ path, size, sha256 }) => ({ path, size, sha256 })),
      );
    }
    await Deno.remove(paths.failed).catch(() => {});
    await Deno.remove(paths.work, { recursive: true }).catch(() => {});
    await fsCall("mkdir", "create the part's folder", paths.work, () => Deno.mkdir(paths.work));
    work = await StagingFolder.adopt(output, paths.work);

    const outputHasher = hasher = new OutputHasher(paths.work, signal);
    const plans: StagePlan[] = [];
    const gathers: PartGatherAt[] = [];
    const run = createRunContext({
      cfg,
      outDir: paths.work,
      signal: loop.signal,
      defer: loop.defer,
      closeAtEnd: loop.closeAtEnd,
      dryRun: false,
      backend: options.backend,
      onOutputBytes: (path, bytes) => {
        fsStep("write", path);
        return outputHasher.onOutputBytes(path, bytes);
      },
      emit,
      current: () => loop.current,
      part: partContext(index, count, { plans, gathers }, () => loop.current),
    });
    await loop.preflight(run.ctx);
    run.clearReports();
    await loop.run(run.ctx, run.reportOf, async () => await outputHasher.stageEnded());
    const inputs = await run.inputs();

    const reported = reportedFiles(loop.finished);
    const sealed = await work.seal(reported);
    const stageOf = new Map(reported.map((f) => [f.path, f.stage]));
    const files: PartReceipt["files"] = [];
    for (const path of sealed) {
      const { size, sha256 } = await outputHasher.hash(join(paths.work, path));
      files.push({ path, size, sha256, stage: stageOf.get(path) ?? "" });
    }
    await signalsPolled();
    if (signal.aborted) throw abortError(signal); // last moment: nothing is in the shared folder yet
    await moveInto(paths.work, folder, sealed);
    const receipt: PartReceipt = {
      format: "ckpt-part-receipt",
      version: 1,
      split: id,
      part: index,
      count,
      lead,
      host: Deno.hostname(),
      pid: Deno.pid,
      startedAt,
      finishedAt: new Date().toISOString(),
      ms: Math.round(performance.now() - t0),
      plans,
      gathered: gathers.map((g) => {
        const items = run.reportOf(g.stage)[g.key];
        return { ...g, items: Array.isArray(items) ? structuredClone(items) : [] };
      }),
      files,
      inputs,
      ckpt: toolInfo().version,
      ...(lead ? { stages: loop.finished } : {}),
    };
    await writeJsonDurably(paths.receipt, receipt);
    emit({ type: "pipeline-end", output, ms: round1(performance.now() - t0) });
    return result("written", files.map(({ path, size, sha256 }) => ({ path, size, sha256 })));
  } catch (err) {
    const e = runError(err, signal, output);
    emit(errorEvent(e, loop.failedStage()));
    if (partLock) await recordFailure(paths.failed, index, count, e);
    throw e;
  } finally {
    hasher?.close();
    await loop.stateDict?.close().catch(() => {});
    await loop.close();
    // Failed: what the stages wrote. Finished: only the folders its files were moved out of (and
    // no stage is in flight).
    await work?.discard(loop.inFlight);
    globalThis.removeEventListener("unload", onUnload);
    await partLock?.release({ remove: true }).catch(() => {});
    await lock?.release().catch(() => {});
    // Empty folders only: a part that got past the lock left the lock file there (a shared holder
    // does not remove it), so only a failure before that can leave a folder it made empty.
    await removeCreatedParents(output, createdParent);
  }
}

/** A dry run of one part: the stages plan with `ctx.part` set; resolves to the files it would write. */
async function planPart(
  cfg: PipelineConfig,
  loop: StageLoop,
  how: {
    index: number;
    count: number;
    signal: AbortSignal;
    emit: (e: PipelineEvent) => void;
    options: PartRunOptions;
  },
): Promise<ManifestFile[]> {
  try {
    await checkInputs(cfg);
    const run = createRunContext({
      cfg,
      outDir:
        partPaths(splitFolder(cfg.output, splitId(cfg, how.count)), how.index, how.count).work,
      signal: loop.signal,
      defer: loop.defer,
      closeAtEnd: loop.closeAtEnd,
      dryRun: true,
      backend: how.options.backend,
      onOutputBytes: undefined,
      emit: how.emit,
      current: () => loop.current,
      part: partContext(how.index, how.count, { plans: [], gathers: [] }, () => loop.current),
    });
    await loop.preflight(run.ctx);
    run.clearReports();
    await loop.run(run.ctx, run.reportOf, () => Promise.resolve());
    return reportedFiles(loop.finished).map((f) => ({
      path: f.path,
      size: f.bytes ?? 0,
      sha256: "",
    }));
  } catch (err) {
    const e = runError(err, how.signal, cfg.output);
    how.emit(errorEvent(e, loop.failedStage()));
    throw e;
  } finally {
    await loop.stateDict?.close().catch(() => {});
    await loop.close();
  }
}

/** Leaves why part `index` failed, for `--finish` to name (best effort: the error is thrown anyway). */
async function recordFailure(path: string, index: number, count: number, e: unknown) {
  const failure: PartFailure = {
    format: "ckpt-part-failure",
    part: index,
    count,
    host: Deno.hostname(),
    pid: Deno.pid,
    at: new Date().toISOString(),
    code: e instanceof CkptError ? e.code : "INTERNAL",
    message: e instanceof Error ? e.message : String(e),
  };
  await writeJsonDurably(path, failure).catch(() => {});
}

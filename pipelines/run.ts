/**
 * The pipeline runner: runs a config's stages in order, each timed, writing everything into a
 * staging folder beside the output (`.ckpt-staging-<key>-<id>`, locked for the run's life), checks
 * that the folder holds exactly the files the stages reported, with their sizes, adds the
 * manifest, fsyncs, and renames the folder into place only when every stage succeeded. The output
 * path is locked for the whole run (`OUTPUT_LOCKED`, or `wait`). An existing output is never
 * replaced unless `overwrite` is set, and then only when it holds a ckpt manifest (or `force`):
 * old renamed aside, new renamed in, old deleted. A failed or aborted run removes its staging
 * folder and leaves no other trace; see `_staging.ts` for the names and the locks.
 *
 * The API `ckpt watch` builds on (stable): `runPipeline(configOrPath, { vars, overwrite, force,
 * wait, dryRun, signal, onEvent, backend })` resolves to a {@linkcode RunResult} with `output` and
 * `manifestSha256`; it rejects with a {@linkcode CkptError} (`ABORTED` when `signal` fired).
 *
 * @example Running a pipeline with a custom stage
 * ```ts
 * import { runPipeline } from "./run.ts";
 * import { defineStage } from "./stage.ts";
 * import { z } from "zod";
 * import assert from "node:assert/strict";
 *
 * const hello = defineStage({
 *   name: "hello",
 *   summary: "writes hello.txt",
 *   options: z.strictObject({ text: z.string() }),
 *   async run(ctx, options) {
 *     await Deno.writeTextFile(`${ctx.outDir}/hello.txt`, options.text);
 *     ctx.report("hello", { files: [{ path: "hello.txt", bytes: 5 }] });
 *   },
 * });
 * const dir = await Deno.makeTempDir();
 * const result = await runPipeline(
 *   { output: "out", stages: [{ use: "hello", text: "hello" }] },
 *   { baseDir: dir, stages: { hello } },
 * );
 * assert.equal(await Deno.readTextFile(`${dir}/out/hello.txt`), "hello");
 * assert.equal(result.manifest.files[0]!.path, "hello.txt");
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import type { PipelineConfig, RawConfig } from "./config.ts";
import {
  buildManifest,
  type Manifest,
  type ManifestInfo,
  type ManifestStage,
  toolInfo,
  writeManifest,
} from "./manifest.ts";
import type { BackendChoice } from "../merge/backend.ts";
import type { PipelineEvent, Stage } from "./stage.ts";
import { createRunContext } from "./_context.ts";
import { OutputHasher } from "./_output_hasher.ts";
import { abortError, round1, signalsPolled, StageLoop } from "./_stage_loop.ts";
import { checkReplaceable, exists, removeStaleStaging, StagingFolder } from "./_staging.ts";
import {
  makeParents,
  OutputLock,
  removeCreatedParents,
  removeCreatedParentsSync,
} from "./_output_lock.ts";
import { fsStep } from "./_faults.ts";
import {
  checkInputs,
  configInfo,
  errorEvent,
  reportedFiles,
  resolveConfig,
  runError,
  safeEmitter,
} from "./_run_shared.ts";
import { basename, dirname } from "node:path";

/** Options of {@linkcode runPipeline}. */
export interface RunOptions {
  /**
   * Variables overriding the config's `vars` (`--var k=v`; `ckpt watch` passes `step` and `run`).
   * Used when the config is a path or a raw object; a {@linkcode PipelineConfig} is already resolved.
   */
  vars?: Record<string, string>;
  /**
   * Replace an existing output (safely: old aside, new in, old deleted), when it holds a ckpt
   * manifest (see `force`). Default false.
   */
  overwrite?: boolean;
  /** With `overwrite`, replace an output even without a ckpt manifest. Default false. */
  force?: boolean;
  /**
   * When another run holds the output's lock: wait for it (the signal aborts the wait) instead of
   * failing with `OUTPUT_LOCKED`. Default false.
   */
  wait?: boolean;
  /** Plan only: stages describe their files, nothing is written. Default false. */
  dryRun?: boolean;
  /** Aborts the run; the staging folder is removed and the promise rejects with `ABORTED`. */
  signal?: AbortSignal;
  /** Receives every event (progress, logs, stage timings). Exceptions it throws are ignored. */
  onEvent?: (event: PipelineEvent) => void;
  /** Merge backend override passed to stages (`ctx.backend`). */
  backend?: BackendChoice;
  /** Folder relative paths resolve against for object configs. Default: the cwd. */
  baseDir?: string;
  /** Stage registry. Default: the built-in stages. */
  stages?: Record<string, Stage>;
  /** Environment for `CKPT_VAR_*` and `${env:NAME}`. Default: `Deno.env`. */
  env?: Record<string, string>;
}

/** One planned or written file. */
export interface PlannedFile {
  /** Path relative to the output folder. */
  path: string;
  /** Size in bytes (planned size in a dry run). */
  bytes: number;
  /** Stage that wrote or planned it. */
  stage: string;
}

/** What {@linkcode runPipeline} resolves to. */
export interface RunResult {
  /** Absolute output folder (in a dry run: where it would go). */
  output: string;
  /** True when nothing was written. */
  dryRun: boolean;
  /** sha256 of `ckpt-manifest.json` (empty string in a dry run). */
  manifestSha256: string;
  /** The manifest written (in a dry run: the reports and timings, no files). */
  manifest: Manifest;
  /** Total wall time in ms. */
  ms: number;
  /** Per-stage timings. */
  stages: Array<{ name: string; ms: number }>;
  /** Files the stages reported (in a dry run: the plan). */
  files: PlannedFile[];
}

/** `OUTPUT_EXISTS` unless overwriting; `OUTPUT_NOT_CKPT` when overwriting what ckpt did not write. */
async function checkExisting(output: string, options: RunOptions): Promise<void> {
  if (!(await exists(output))) return;
  if (!options.overwrite) {
    throw new CkptError(
      "OUTPUT_EXISTS",
      `Cannot write output "${output}": it already exists (pass --overwrite to replace it)`,
      { file: output },
    );
  }
  await checkReplaceable(output, options.force ?? false);
}

/** The manifest of a dry run: the reports and timings, no files. */
function dryRunManifest(
  info: { output: string; config: Manifest["config"] & object; inputs: Manifest["inputs"] },
  stages: ManifestStage[],
  totalMs: number,
): Manifest {
  return {
    format: "ckpt-manifest",
    version: 1,
    tool: toolInfo(),
    createdAt: new Date().toISOString(),
    output: info.output,
    config: info.config,
    inputs: info.inputs,
    backend: "none",
    timings: {
      totalMs: Math.round(totalMs),
      stages: stages.map((s) => ({ name: s.name, ms: s.ms })),
    },
    stages,
    files: [],
  };
}

/**
 * Checks the staging folder against the reported files, hashes them into the manifest, writes it,
 * fsyncs everything and renames the staging folder into place. Resolves to the manifest and the
 * sha256 of its bytes.
 */
async function finish(
  staging: StagingFolder,
  hasher: OutputHasher,
  info: ManifestInfo & { signal: AbortSignal },
  options: { emit: (event: PipelineEvent) => void; overwrite: boolean; force: boolean },
): Promise<{ manifest: Manifest; manifestSha256: string }> {
  const files = await staging.seal(reportedFiles(info.stages ?? []));
  const manifest = await buildManifest(staging.path, { ...info, files, hasher: hasher.hash });
  const how = hasher.summary();
  if (how) options.emit(how);
  const manifestSha256 = await writeManifest(staging.path, manifest);
  await staging.syncFolders(files);
  await signalsPolled();
  if (info.signal.aborted) throw abortError(info.signal);
  await staging.commit(options);
  return { manifest, manifestSha256 };
}

/**
 * Loads (when given a path or a raw object) and runs a pipeline. See the module doc for the
 * guarantees. Errors: any config error, `OUTPUT_EXISTS`, `OUTPUT_INSIDE_INPUT`, `OUTPUT_LOCKED`,
 * `OUTPUT_NOT_CKPT`, `STAGING_UNREPORTED`, `STAGING_MISMATCH`, `ABORTED`, an `FS_*` code for an
 * operating-system error, and whatever a stage throws (always before the output appears).
 */
export async function runPipeline(
  config: PipelineConfig | RawConfig | string,
  options: RunOptions = {},
): Promise<RunResult> {
  const t0 = performance.now();
  const cfg = await resolveConfig(config, options);
  const signal = options.signal ?? new AbortController().signal;
  const dryRun = options.dryRun ?? false;
  const emit = safeEmitter(options.onEvent);
  const output = cfg.output;
  emit({ type: "pipeline-start", output, stages: cfg.stages.map((s) => s.use) });

  const loop = new StageLoop(cfg, signal, emit);
  let staging: StagingFolder | undefined;
  let hasher: OutputHasher | undefined;
  let lock: OutputLock | undefined;
  let createdParent: string | undefined;
  // A process that exits while this run is live (Deno.exit: the CLI's grace timer after a signal,
  // with a stage stuck in a read) takes its staging folder and lock file with it.
  const onUnload = () => {
    staging?.discardSync();
    lock?.releaseSync();
    removeCreatedParentsSync(output, createdParent);
  };
  globalThis.addEventListener("unload", onUnload);
  try {
    if (signal.aborted) throw abortError(signal);
    await checkInputs(cfg);
    if (!dryRun) {
      createdParent = await makeParents(output);
      lock = await OutputLock.acquire(output, { wait: options.wait ?? false, signal });
      await removeStaleStaging(dirname(output), basename(output));
    }
    await checkExisting(output, options);
    staging = await StagingFolder.create(output, { dryRun });
    // Outputs are hashed as soon as their stage ends, or while written (ctx.onOutputBytes).
    const outputHasher = hasher = dryRun ? undefined : new OutputHasher(staging.path, signal);
    const run = createRunContext({
      cfg,
      outDir: staging.path,
      signal: loop.signal,
      defer: loop.defer,
      closeAtEnd: loop.closeAtEnd,
      dryRun,
      backend: options.backend,
      onOutputBytes: outputHasher &&
        ((path, bytes) => {
          fsStep("write", path);
          return outputHasher.onOutputBytes(path, bytes);
        }),
      emit,
      current: () => loop.current,
    });
    await loop.preflight(run.ctx);
    run.clearReports();
    await loop.run(run.ctx, run.reportOf, async () => await hasher?.stageEnded());
    const inputs = await run.inputs();
    if (signal.aborted) throw abortError(signal);

    const stages = loop.finished;
    const files = reportedFiles(stages).map((f) => ({ ...f, bytes: f.bytes ?? 0 }));
    const info = { output, config: configInfo(cfg), inputs };
    const timings = stages.map((s) => ({ name: s.name, ms: s.ms }));
    if (dryRun || !hasher) {
      const manifest = dryRunManifest(info, stages, performance.now() - t0);
      const ms = performance.now() - t0;
      emit({ type: "pipeline-end", output, ms: round1(ms) });
      return { output, dryRun, manifestSha256: "", manifest, ms, stages: timings, files };
    }

    const { manifest, manifestSha256 } = await finish(staging, hasher, {
      ...info,
      stages,
      signal,
      totalMs: Math.round(performance.now() - t0),
    }, { emit, overwrite: options.overwrite ?? false, force: options.force ?? false });
    const ms = performance.now() - t0;
    emit({ type: "pipeline-end", output, ms: round1(ms), manifestSha256 });
    const stageOf = new Map(files.map((f) => [f.path, f.stage]));
    const written = manifest.files.map((f) => ({
      path: f.path,
      bytes: f.size,
      stage: stageOf.get(f.path) ?? "",
    }));
    return { output, dryRun, manifestSha256, manifest, ms, stages: timings, files: written };
  } catch (err) {
    const e = runError(err, signal, output);
    emit(errorEvent(e, loop.failedStage()));
    throw e;
  } finally {
    hasher?.close();
    await loop.stateDict?.close().catch(() => {});
    await loop.close();
    await staging?.discard(loop.inFlight);
    globalThis.removeEventListener("unload", onUnload);
    await lock?.release().catch(() => {});
    await removeCreatedParents(output, createdParent);
  }
}

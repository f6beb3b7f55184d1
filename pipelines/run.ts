/**
 * The pipeline runner: runs a config's stages in order, each timed, writing everything into a
 * staging folder beside the output (`.<name>.ckpt-staging-<pid>-<id>`), adds the manifest, and
 * renames the folder into place only when every stage succeeded. An existing output is never
 * replaced unless `overwrite` is set (then: old renamed aside, new renamed in, old deleted). A
 * failed or aborted run removes its staging folder and leaves no other trace.
 *
 * The API `ckpt watch` builds on (stable): `runPipeline(configOrPath, { vars, overwrite, dryRun,
 * signal, onEvent, backend })` resolves to a {@linkcode RunResult} with `output` and
 * `manifestSha256`; it rejects with a {@linkcode CkptError} (`ABORTED` when `signal` fired).
 *
 * @example Running a pipeline with a custom stage
 * ```ts
 * import { runPipeline } from "./run.ts";
 * import type { Stage } from "./stage.ts";
 * import { z } from "zod";
 * import assert from "node:assert/strict";
 *
 * const hello: Stage = {
 *   name: "hello",
 *   summary: "writes hello.txt",
 *   options: z.strictObject({ text: z.string() }),
 *   async run(ctx, options) {
 *     await Deno.writeTextFile(`${ctx.outDir}/hello.txt`, (options as { text: string }).text);
 *     ctx.report("hello", { files: [{ path: "hello.txt", bytes: 5 }] });
 *   },
 * };
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
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { CkptError } from "../errors.ts";
import type { BackendChoice } from "../merge/backend.ts";
import type { StateDict } from "../formats/state_dict.ts";
import {
  builtinStages,
  loadConfig,
  type PipelineConfig,
  type RawConfig,
  validateConfig,
} from "./config.ts";
import {
  buildManifest,
  hashFile,
  type HashStream,
  HashWorker,
  listFiles,
  type Manifest,
  type ManifestInput,
  type ManifestStage,
  toolInfo,
  writeManifest,
} from "./manifest.ts";
import type { PipelineEvent, Stage, StageContext } from "./stage.ts";

/** Options of {@linkcode runPipeline}. */
export interface RunOptions {
  /**
   * Variables overriding the config's `vars` (`--var k=v`; `ckpt watch` passes `step` and `run`).
   * Used when the config is a path or a raw object; a {@linkcode PipelineConfig} is already resolved.
   */
  vars?: Record<string, string>;
  /** Replace an existing output (safely: old aside, new in, old deleted). Default false. */
  overwrite?: boolean;
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

function isLoaded(config: unknown): config is PipelineConfig {
  return typeof config === "object" && config !== null && "baseDir" in config &&
    Array.isArray((config as PipelineConfig).stages) &&
    (config as PipelineConfig).stages.every((s) => typeof s === "object" && "stage" in s);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

function isInside(child: string, parent: string): boolean {
  const rel = relative(parent, child);
  return rel === "" || (!rel.startsWith("..") && !rel.startsWith(sep) && rel !== "..");
}

function collectStrings(value: unknown, out: string[]): void {
  if (typeof value === "string") out.push(value);
  else if (Array.isArray(value)) { for (const v of value) collectStrings(v, out); }
  else if (value !== null && typeof value === "object") {
    for (const v of Object.values(value)) collectStrings(v, out);
  }
}

function checkOutputAgainst(output: string, input: string, what: string): void {
  if (isInside(output, input) || isInside(input, output)) {
    throw new CkptError(
      "OUTPUT_INSIDE_INPUT",
      `Cannot write output "${output}": it ${
        isInside(output, input) ? "is inside" : "contains"
      } the input ${what} "${input}"`,
      { file: output, details: { output, input } },
    );
  }
}

/** Paths named in stage options that exist on disk: the inputs known before anything runs. */
async function declaredInputs(config: PipelineConfig): Promise<string[]> {
  const found = new Set<string>();
  for (const s of config.stages) {
    const strings: string[] = [];
    collectStrings(s.options, strings);
    for (const str of strings) {
      if (str === "" || str.length > 4096 || str.includes("\n")) continue;
      const p = resolve(config.baseDir, str);
      if (await exists(p)) found.add(p);
    }
  }
  return [...found];
}

function pidAlive(pid: number): boolean {
  if (Deno.build.os !== "linux") return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Cleans up after runs for `name` in `parent` whose process no longer exists: staging folders are
 * removed; an old output set aside by an interrupted `--overwrite` is put back when the output is
 * missing (the replacement never landed), else removed.
 */
async function removeStaleStaging(parent: string, name: string): Promise<void> {
  const prefix = `.${name}.ckpt-`;
  const entries: string[] = [];
  try {
    for await (const e of Deno.readDir(parent)) if (e.name.startsWith(prefix)) entries.push(e.name);
  } catch {
    return; // no parent yet
  }
  for (const entry of entries.sort()) {
    const m = entry.slice(prefix.length).match(/^(staging|old)-(\d+)-/);
    if (!m || Number(m[2]) === Deno.pid || pidAlive(Number(m[2]))) continue;
    const path = join(parent, entry);
    if (m[1] === "old" && !(await exists(join(parent, name)))) {
      await Deno.rename(path, join(parent, name)).catch(() => {});
    } else {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    }
  }
}

async function statInput(path: string, role: string): Promise<ManifestInput> {
  try {
    const st = await Deno.stat(path);
    return {
      path,
      role,
      ...(st.isFile ? { size: st.size } : {}),
      ...(st.mtime ? { mtime: st.mtime.toISOString() } : {}),
    };
  } catch {
    return { path, role };
  }
}

function mergeReport(into: Record<string, unknown>, data: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(data)) {
    const prev = into[k];
    if (k === "files" && Array.isArray(prev) && Array.isArray(v)) into[k] = [...prev, ...v];
    else into[k] = v;
  }
}

/** Milliseconds rounded to 0.1 for events and reports. */
function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/** How long the runner waits for an abandoned stage to notice an abort before its final cleanup. */
const STRAGGLER_MS = 2000;

/**
 * Resolves with `work`, or rejects as soon as `signal` aborts, so a stage blocked in I/O that does
 * not watch the signal cannot hold an aborted run (its late writes land in a removed folder).
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

function abortError(signal: AbortSignal): CkptError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
  return new CkptError("ABORTED", `Cannot finish the pipeline: aborted (${reason})`, {
    cause: signal.reason,
  });
}

/**
 * Loads (when given a path or a raw object) and runs a pipeline. See the module doc for the
 * guarantees. Errors: any config error, `OUTPUT_EXISTS`, `OUTPUT_INSIDE_INPUT`, `ABORTED`, and
 * whatever a stage throws (always before the output appears).
 */
export async function runPipeline(
  config: PipelineConfig | RawConfig | string,
  options: RunOptions = {},
): Promise<RunResult> {
  const t0 = performance.now();
  const configOptions = {
    ...(options.vars ? { vars: options.vars } : {}),
    stages: options.stages ?? (isLoaded(config) ? {} : await builtinStages()),
    ...(options.env ? { env: options.env } : {}),
  };
  const cfg: PipelineConfig = typeof config === "string"
    ? await loadConfig(config, configOptions)
    : isLoaded(config)
    ? config
    : validateConfig(config, {
      ...configOptions,
      ...(options.baseDir ? { baseDir: options.baseDir } : {}),
    });
  const signal = options.signal ?? new AbortController().signal;
  const dryRun = options.dryRun ?? false;
  const emit = (event: PipelineEvent): void => {
    try {
      options.onEvent?.(event);
    } catch {
      // a broken renderer must not break the run
    }
  };

  const output = cfg.output;
  const name = basename(output);
  const parent = dirname(output);
  const stageNames = cfg.stages.map((s) => s.use);
  emit({ type: "pipeline-start", output, stages: stageNames });

  let staging: string | undefined;
  let createdParent: string | undefined;
  let inFlight: Promise<void> = Promise.resolve();
  let current = -1; // index of the stage (or preflight) running, for reports and error events
  // Outputs are hashed on a worker as soon as their stage ends, overlapping the next stages; the
  // bytes a stage feeds to ctx.onOutputBytes are hashed while they are written.
  const hashWorker = dryRun ? undefined : new HashWorker();
  const early = new Map<
    string,
    { key: string; hash: Promise<{ size: number; sha256: string }>; streamed: boolean }
  >();
  const streams = new Map<string, HashStream>();
  const streamed: string[] = [];
  let reread = 0;
  const statKey = async (abs: string): Promise<string> => {
    const st = await Deno.stat(abs);
    return `${st.size}:${st.mtime?.getTime()}:${st.ino}`;
  };
  const hashNewOutputs = async (dir: string): Promise<void> => {
    if (!hashWorker) return;
    for (const rel of await listFiles(dir)) {
      const abs = join(dir, rel);
      const st = await Deno.stat(abs);
      const key = `${st.size}:${st.mtime?.getTime()}:${st.ino}`;
      const stream = streams.get(rel);
      if (stream) {
        streams.delete(rel);
        if (stream.size === st.size) {
          const hash = stream.digest();
          hash.catch(() => {});
          early.set(abs, { key, hash, streamed: true });
          continue;
        }
        stream.abort();
      }
      if (early.get(abs)?.key === key) continue;
      const hash = hashWorker.hash(abs);
      hash.catch(() => {});
      early.set(abs, { key, hash, streamed: false });
    }
    // fed bytes for a file the stage did not leave behind
    for (const stream of streams.values()) stream.abort();
    streams.clear();
  };
  const hasher = async (abs: string): Promise<{ size: number; sha256: string }> => {
    const e = early.get(abs);
    if (e && e.key === await statKey(abs)) {
      try {
        const h = await e.hash;
        if (e.streamed) streamed.push(abs);
        else reread++;
        return h;
      } catch {
        // the worker failed: hash here
      }
    }
    reread++;
    return await hashFile(abs, signal);
  };
  let stateDict: StateDict | undefined;
  const stageTimes: ManifestStage[] = [];
  try {
    if (signal.aborted) throw abortError(signal);
    if (!dryRun) await removeStaleStaging(parent, name);
    // Checks that need no writing come first: a bad run leaves no trace.
    if (!dryRun && !options.overwrite && await exists(output)) {
      throw new CkptError(
        "OUTPUT_EXISTS",
        `Cannot write output "${output}": it already exists (pass --overwrite to replace it)`,
        { file: output },
      );
    }
    for (const input of await declaredInputs(cfg)) checkOutputAgainst(output, input, "path");

    const id = `${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    staging = join(parent, `.${name}.ckpt-staging-${id}`);
    if (!dryRun) {
      // Create missing parents, remembering the topmost one we made so a failure removes it.
      let top: string | undefined;
      for (let p = parent; !(await exists(p)); p = dirname(p)) top = p;
      await Deno.mkdir(parent, { recursive: true });
      createdParent = top;
      await Deno.mkdir(staging);
    }

    const inputs: ManifestInput[] = [];
    const pendingInputs: Array<Promise<void>> = [];
    const reports = new Map<number, Record<string, unknown>>();
    const stagingDir = staging;
    const ctx: StageContext = {
      outDir: staging,
      baseDir: cfg.baseDir,
      signal,
      dryRun,
      ...(options.backend ? { backend: options.backend } : {}),
      ...(hashWorker
        ? {
          onOutputBytes: (path: string, bytes: Uint8Array): Promise<void> | void => {
            const rel = relative(stagingDir, resolve(stagingDir, path)).split(sep).join("/");
            let stream = streams.get(rel);
            if (!stream) streams.set(rel, stream = hashWorker.stream());
            return stream.update(bytes);
          },
        }
        : {}),
      stateDict: undefined,
      modelConfig: undefined,
      modelDir: undefined,
      adapterDir: undefined,
      resolve: (p: string): string => resolve(cfg.baseDir, p),
      emit,
      addInput(path: string, role: string): void {
        const abs = resolve(cfg.baseDir, path);
        checkOutputAgainst(output, abs, role);
        pendingInputs.push(statInput(abs, role).then((i) => void inputs.push(i)));
      },
      report(_stage: string, data: Record<string, unknown>): void {
        const r = reports.get(current) ?? {};
        mergeReport(r, data);
        reports.set(current, r);
      },
    };

    for (const step of cfg.stages) {
      if (!step.stage.preflight) continue;
      current = step.index;
      try {
        await untilAborted(step.stage.preflight(ctx, step.options), signal);
      } catch (err) {
        if (signal.aborted) throw abortError(signal);
        throw err;
      }
    }
    reports.clear();

    for (const step of cfg.stages) {
      if (signal.aborted) throw abortError(signal);
      current = step.index;
      emit({ type: "stage-start", stage: step.use, index: step.index });
      const ts = performance.now();
      try {
        const work = step.stage.run(ctx, step.options);
        inFlight = work.then(() => {}, () => {});
        await untilAborted(work, signal);
      } catch (err) {
        if (signal.aborted && !(err instanceof CkptError && err.code !== "ABORTED")) {
          throw abortError(signal);
        }
        if (err instanceof CkptError) {
          throw err;
        }
        throw new CkptError(
          "STAGE_FAILED",
          `Cannot run stage ${step.use} (stages[${step.index}]): ${
            err instanceof Error ? err.message : String(err)
          }`,
          { cause: err, details: { stage: step.use, index: step.index } },
        );
      } finally {
        stateDict = ctx.stateDict;
      }
      const ms = performance.now() - ts;
      stageTimes.push({
        name: step.use,
        index: step.index,
        ms: Math.round(ms * 10) / 10,
        report: reports.get(step.index) ?? {},
      });
      emit({ type: "stage-end", stage: step.use, index: step.index, ms: round1(ms) });
      if (!dryRun) await hashNewOutputs(staging);
    }
    await Promise.all(pendingInputs);
    if (signal.aborted) throw abortError(signal);

    const files: PlannedFile[] = [];
    for (const s of stageTimes) {
      const list = s.report.files;
      if (!Array.isArray(list)) continue;
      for (const f of list) {
        if (f && typeof f === "object" && typeof f.path === "string") {
          files.push({ path: f.path, bytes: Number(f.bytes ?? f.size ?? 0), stage: s.name });
        }
      }
    }
    const manifestInfo = {
      output,
      config: {
        ...(cfg.source === undefined ? {} : { source: cfg.source }),
        vars: { ...cfg.vars },
      },
      inputs,
      stages: stageTimes,
      signal,
    };

    if (dryRun) {
      const manifest = await buildManifestless(manifestInfo, performance.now() - t0);
      const ms = performance.now() - t0;
      emit({ type: "pipeline-end", output, ms: round1(ms) });
      return {
        output,
        dryRun,
        manifestSha256: "",
        manifest,
        ms,
        stages: stageTimes.map((s) => ({ name: s.name, ms: s.ms })),
        files,
      };
    }

    const manifest = await buildManifest(staging, {
      ...manifestInfo,
      hasher,
      totalMs: Math.round(performance.now() - t0),
    });
    // how the outputs were hashed, when a stage fed any bytes (ctx.onOutputBytes)
    if (streamed.length > 0) {
      emit({
        type: "log",
        level: "debug",
        message:
          `output hashes: ${streamed.length} computed while written, ${reread} by reading the file`,
        data: {
          streamed: streamed.map((abs) => relative(stagingDir, abs).split(sep).join("/")),
          reread,
        },
      });
    }
    const manifestSha256 = await writeManifest(staging, manifest);
    if (signal.aborted) throw abortError(signal);
    await moveIntoPlace(staging, output, options.overwrite ?? false, id);
    staging = undefined;
    createdParent = undefined;
    const ms = performance.now() - t0;
    emit({ type: "pipeline-end", output, ms: round1(ms), manifestSha256 });
    return {
      output,
      dryRun,
      manifestSha256,
      manifest,
      ms,
      stages: stageTimes.map((s) => ({ name: s.name, ms: s.ms })),
      files: files.length > 0
        ? files
        : manifest.files.map((f) => ({ path: f.path, bytes: f.size, stage: "" })),
    };
  } catch (err) {
    const e = signal.aborted && !(err instanceof CkptError) ? abortError(signal) : err;
    emit({
      type: "pipeline-error",
      code: e instanceof CkptError ? e.code : "INTERNAL",
      message: e instanceof Error ? e.message : String(e),
      ...(current >= 0 && stageTimes.length < cfg.stages.length
        ? { stage: cfg.stages[current]?.use ?? "" }
        : {}),
    });
    throw e;
  } finally {
    hashWorker?.close();
    await stateDict?.close().catch(() => {});
    if (staging !== undefined && !dryRun) {
      await Deno.remove(staging, { recursive: true }).catch(() => {});
      // An abandoned stage may still write (and recreate the folder) until it notices the abort:
      // give it a moment, then remove again.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const settled = await Promise.race([
        inFlight.then(() => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), STRAGGLER_MS))),
      ]);
      clearTimeout(timer);
      if (settled || await exists(staging)) {
        await Deno.remove(staging, { recursive: true }).catch(() => {});
      }
    }
    if (createdParent !== undefined) {
      await Deno.remove(createdParent, { recursive: true }).catch(() => {});
    }
  }
}

function buildManifestless(
  info: {
    output: string;
    config: { source?: string; vars: Record<string, string> };
    inputs: ManifestInput[];
    stages: ManifestStage[];
  },
  totalMs: number,
): Promise<Manifest> {
  return Promise.resolve({
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
      stages: info.stages.map((s) => ({ name: s.name, ms: s.ms })),
    },
    stages: info.stages,
    files: [],
  });
}

/** Renames the finished staging folder to `output`, replacing an existing one only when allowed. */
async function moveIntoPlace(
  staging: string,
  output: string,
  overwrite: boolean,
  id: string,
): Promise<void> {
  if (!(await exists(output))) {
    try {
      await Deno.rename(staging, output);
      return;
    } catch (err) {
      // A concurrent writer may have created it between the check and the rename.
      if (!(await exists(output))) throw err;
    }
  }
  if (!overwrite) {
    throw new CkptError(
      "OUTPUT_EXISTS",
      `Cannot write output "${output}": it appeared while the pipeline ran`,
      { file: output },
    );
  }
  const old = join(dirname(output), `.${basename(output)}.ckpt-old-${id}`);
  await Deno.rename(output, old);
  try {
    await Deno.rename(staging, output);
  } catch (err) {
    await Deno.rename(old, output).catch(() => {});
    throw err;
  }
  await Deno.remove(old, { recursive: true }).catch(() => {});
}

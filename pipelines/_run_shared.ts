/**
 * What the one-machine runner (`run.ts`), one part of a split export (`run_part.ts`) and the
 * finish (`finish_parts.ts`) share: resolving the config, the event sink, the input checks, the
 * files the stages reported, and the error a failed run ends with.
 * @module
 */
import { CkptError } from "../errors.ts";
import { isOsError, osError } from "../errors/os.ts";
import {
  builtinStages,
  loadConfig,
  type PipelineConfig,
  type RawConfig,
  validateConfig,
} from "./config.ts";
import type { ManifestStage } from "./manifest.ts";
import type { PipelineEvent, Stage } from "./stage.ts";
import { checkOutputAgainst, declaredInputs } from "./_context.ts";
import { abortError } from "./_stage_loop.ts";
import type { ReportedFile } from "./_staging.ts";

/** What resolving a config takes (a subset of the runner's options). */
export interface ConfigSourceOptions {
  /** Variables overriding the config's `vars`. */
  vars?: Record<string, string>;
  /** Folder relative paths resolve against for object configs. Default: the cwd. */
  baseDir?: string;
  /** Stage registry. Default: the built-in stages. */
  stages?: Record<string, Stage>;
  /** Environment for `CKPT_VAR_*` and `${env:NAME}`. Default: `Deno.env`. */
  env?: Record<string, string>;
}

function isLoaded(config: unknown): config is PipelineConfig {
  return typeof config === "object" && config !== null && "baseDir" in config &&
    Array.isArray((config as PipelineConfig).stages) &&
    (config as PipelineConfig).stages.every((s) => typeof s === "object" && "stage" in s);
}

/** The config to run: loaded from a path, validated from a raw object, or used as given. */
export async function resolveConfig(
  config: PipelineConfig | RawConfig | string,
  options: ConfigSourceOptions,
): Promise<PipelineConfig> {
  if (isLoaded(config)) return config;
  const configOptions = {
    ...(options.vars ? { vars: options.vars } : {}),
    stages: options.stages ?? await builtinStages(),
    ...(options.env ? { env: options.env } : {}),
  };
  if (typeof config === "string") return await loadConfig(config, configOptions);
  return validateConfig(config, {
    ...configOptions,
    ...(options.baseDir ? { baseDir: options.baseDir } : {}),
  });
}

/** An event sink that ignores a broken renderer's exceptions. */
export function safeEmitter(
  onEvent: ((event: PipelineEvent) => void) | undefined,
): (event: PipelineEvent) => void {
  return (event) => {
    try {
      onEvent?.(event);
    } catch {
      // a broken renderer must not break the run
    }
  };
}

/**
 * The checks that need no writing, so a bad run leaves no trace: `OUTPUT_INSIDE_INPUT` for every
 * path the config names (real paths compared, before any folder is created).
 */
export async function checkInputs(cfg: PipelineConfig): Promise<void> {
  for (const input of await declaredInputs(cfg)) checkOutputAgainst(cfg.output, input, "path");
}

/** The files the stages reported (`report.files`), in stage order. */
export function reportedFiles(stages: readonly ManifestStage[]): ReportedFile[] {
  const files: ReportedFile[] = [];
  for (const s of stages) {
    const list = s.report.files;
    if (!Array.isArray(list)) continue;
    for (const f of list) {
      if (f && typeof f === "object" && typeof f.path === "string") {
        const bytes = f.bytes ?? f.size;
        files.push({
          path: f.path,
          bytes: bytes === undefined ? undefined : Number(bytes),
          stage: s.name,
        });
      }
    }
  }
  return files;
}

/** What the manifest records of the config: its file and the resolved variables. */
export function configInfo(cfg: PipelineConfig): { source?: string; vars: Record<string, string> } {
  return { ...(cfg.source === undefined ? {} : { source: cfg.source }), vars: { ...cfg.vars } };
}

/** The `pipeline-error` event of a failed run (`stage`: the stage it failed in, if any). */
export function errorEvent(e: unknown, stage: string | undefined): PipelineEvent {
  return {
    type: "pipeline-error",
    code: e instanceof CkptError ? e.code : "INTERNAL",
    message: e instanceof Error ? e.message : String(e),
    ...(stage === undefined ? {} : { stage }),
  };
}

/** The error a failed run ends with: aborts as `ABORTED`, OS errors coded (`errors/os.ts`). */
export function runError(err: unknown, signal: AbortSignal, output: string): unknown {
  if (signal.aborted && !(err instanceof CkptError)) return abortError(signal);
  if (isOsError(err)) return osError(err, "write the output", output);
  return err;
}

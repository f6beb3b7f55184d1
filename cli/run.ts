/**
 * `ckpt run <config.jsonc | preset>`: runs a pipeline config end to end.
 * @module
 */
import { resolve } from "node:path";
import { CkptError } from "../errors.ts";
import { loadConfig, parseVarArgs, type PipelineConfig } from "../pipelines/config.ts";
import { loadPreset, PRESETS } from "../pipelines/presets.ts";
import { createRenderer, eventToJson, formatBytes, type LogStyle } from "../pipelines/progress.ts";
import { runPipeline, type RunResult } from "../pipelines/run.ts";
import { parseCommand, UsageError } from "./_args.ts";
import {
  backendChoice,
  logStyle,
  RUN_FLAG_OPTIONS,
  runFailureCode,
  type RunFlags,
  runFlags,
  stderrWriter,
  withSignals,
} from "./_run_flags.ts";
import { PART_HELP, PART_OPTIONS, partMode, runPartsWithCli } from "./run_parts.ts";
import { topModuleChanges } from "./_module_changes.ts";

export {
  backendChoice,
  logStyle,
  RUN_FLAG_OPTIONS,
  runFailureCode,
  runFlags,
  stderrWriter,
  topModuleChanges,
  withSignals,
};
export type { RunFlags };

const HELP = `ckpt run: run a pipeline config (JSONC) end to end

Usage: ckpt run <config.jsonc | preset> [options]

Everything is written into a staging folder beside the output and renamed into place only when
every stage succeeded; the output gets a ckpt-manifest.json (sizes, sha256, inputs, versions,
backend, timings). Ctrl-C / SIGTERM abort cleanly and leave no staging folder.

Relative paths in a config file, including those that --var values put there, resolve against
the config file's folder; in presets, against the current folder.

Presets:
${Object.entries(PRESETS).map(([n, p]) => `  ${n.padEnd(19)} ${p.summary}`).join("\n")}

Options:
  --var name=value     set a config variable (repeatable; overrides CKPT_VAR_<name> and "vars")
  --overwrite          replace an existing ckpt output (old one removed only after the new one is in
                       place); a folder without ckpt-manifest.json is refused unless --force
  --force              with --overwrite: replace the output even if ckpt did not write it
  --wait               when another run is writing the same output, wait for it (default: fail
                       with OUTPUT_LOCKED naming it)
  --dry-run            print the plan (files, sizes) and write nothing
  --backend <b>        merge backend: auto (default), webgpu or cpu
  --log <style>        auto (live line on a terminal, JSON lines otherwise), tty, plain, json, quiet
  -h, --help           this help
${PART_HELP}

Examples:
  ckpt run examples/halos_final.jsonc --var run=/runs/llama3-kto
  ckpt run ppo-final --var run=/runs/ppo --var out=/exports/ppo-final --dry-run
  ckpt run examples/halos_final.jsonc --part auto    # in each task of sbatch --array=0-7
  ckpt run examples/halos_final.jsonc --finish 8     # once, after all 8 (--dependency=afterok)

Exit codes: 0 ok, 1 failed, 2 usage error, 130 interrupted`;

/** Loads a config file, or a preset when the argument names one and no such file exists. */
export async function loadConfigOrPreset(
  arg: string,
  vars: Record<string, string>,
): Promise<PipelineConfig> {
  if (Object.hasOwn(PRESETS, arg)) {
    try {
      await Deno.stat(arg);
    } catch {
      return await loadPreset(arg, { vars });
    }
  }
  return await loadConfig(resolve(arg), { vars });
}

/** Prints a dry-run plan as a table on stdout. */
export function printPlan(result: RunResult): void {
  console.log(`plan for ${result.output} (nothing written):`);
  const width = Math.max(4, ...result.files.map((f) => f.path.length));
  let total = 0;
  for (const f of result.files) {
    total += f.bytes;
    console.log(`  ${f.path.padEnd(width)}  ${formatBytes(f.bytes).padStart(9)}  ${f.stage}`);
  }
  console.log(
    `  ${"total".padEnd(width)}  ${formatBytes(total).padStart(9)}  ${result.files.length} files`,
  );
}

/** Runs a pipeline with signals wired, a renderer, and the result printed; returns the exit code. */
export async function runWithCli(
  config: PipelineConfig,
  flags: RunFlags,
): Promise<number> {
  const render = createRenderer(flags.log, stderrWriter(), Deno.stderr.isTerminal());
  try {
    const result = await withSignals((signal) =>
      runPipeline(config, {
        overwrite: flags.overwrite,
        force: flags.force,
        wait: flags.wait,
        dryRun: flags.dryRun,
        signal,
        onEvent: render,
        ...(flags.backend ? { backend: flags.backend } : {}),
      })
    );
    if (result.dryRun) printPlan(result);
    else if (flags.log !== "json") {
      console.log(`${result.output}\nmanifest sha256 ${result.manifestSha256}`);
      const top = topModuleChanges(result);
      if (top.length > 0) console.log(top.join("\n"));
    }
    return 0;
  } catch (err) {
    return runFailureCode(err, flags.log);
  }
}

/** Entry point of `ckpt run`. */
export async function run(args: string[]): Promise<number> {
  const parsed = parseCommand(args, {
    var: { type: "string", multiple: true },
    ...RUN_FLAG_OPTIONS,
    ...PART_OPTIONS,
  }, HELP);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`expected one config file or preset, got ${parsed.positionals.length}`);
  }
  const varList = (parsed.values.var ?? []) as string[];
  const flags = runFlags(parsed);
  const mode = partMode(parsed, Deno.env.toObject());
  let config: PipelineConfig;
  try {
    config = await loadConfigOrPreset(parsed.positionals[0]!, parseVarArgs(varList));
  } catch (err) {
    if (!reportLoadError(err, flags.log)) throw err;
    return 1;
  }
  if (mode.kind !== "none") return await runPartsWithCli(config, mode, flags);
  return await runWithCli(config, flags);
}

/**
 * With `--log json`, a config that fails to load is logged as a `pipeline-error` JSON line like
 * any other failure (cron logs stay machine-readable); returns false when the caller should print.
 */
export function reportLoadError(err: unknown, log: LogStyle): boolean {
  if (!(err instanceof CkptError) || log !== "json") return false;
  stderrWriter()(
    eventToJson({ type: "pipeline-error", code: err.code, message: err.message }) + "\n",
  );
  return true;
}

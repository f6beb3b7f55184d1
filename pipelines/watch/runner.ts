/**
 * Wires `ckpt watch` to the pipeline runner: an {@linkcode ExportRunner} that runs a config with
 * `runPipeline` and the checkpoint's variables, a verifier (`verifyCheckpoint`, as `ckpt verify`), and a reader for the config's `"watch"` block.
 *
 * @example Exporting with a pipeline of custom stages
 * ```ts
 * import { pipelineRunner } from "./runner.ts";
 * import type { Stage } from "../stage.ts";
 * import { z } from "zod";
 * import assert from "node:assert/strict";
 *
 * const note: Stage = {
 *   name: "note",
 *   summary: "writes the step name",
 *   options: z.strictObject({ text: z.string() }),
 *   async run(ctx, options) {
 *     await Deno.writeTextFile(`${ctx.outDir}/step.txt`, (options as { text: string }).text);
 *     ctx.report("note", { files: [{ path: "step.txt" }] });
 *   },
 * };
 * const dir = await Deno.makeTempDir();
 * const runner = pipelineRunner(
 *   { output: "${run}/exports/${name}", stages: [{ use: "note", text: "${step}" }] },
 *   { stages: { note }, baseDir: dir, env: {} },
 * );
 * const result = await runner({
 *   checkpoint: { name: "step-64", path: `${dir}/step-64`, step: 64 },
 *   vars: { step: "64", name: "step-64", run: dir, checkpoint: `${dir}/step-64`, counter: "64" },
 *   overwrite: false,
 *   signal: new AbortController().signal,
 *   onEvent: () => {},
 * });
 * assert.equal(await Deno.readTextFile(`${result.output}/step.txt`), "64");
 * assert.match(result.manifestSha256 ?? "", /^[0-9a-f]{64}$/);
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import type { BackendChoice } from "../../merge/backend.ts";
import { readTextInput } from "../../formats/read_text.ts";
import { parseJsonc, type RawConfig } from "../config.ts";
import { verifyCheckpoint } from "../verify.ts";
import { runPipeline } from "../run.ts";
import type { Stage } from "../stage.ts";
import { parseWatchSettings, type WatchSettings, type WatchSettingsInput } from "./config.ts";
import type { ExportRunner, ExportVerifier } from "./watch.ts";

/** Options of {@linkcode pipelineRunner}. */
export interface PipelineRunnerOptions {
  /** Extra variables (`--var`); the checkpoint's `step`, `name`, `run`, `checkpoint`, `counter` win. */
  vars?: Record<string, string>;
  /** Merge backend override. */
  backend?: BackendChoice;
  /** Stage registry (tests). Default: the built-in stages. */
  stages?: Record<string, Stage>;
  /** Environment for `CKPT_VAR_*` (tests pass `{}`). Default: `Deno.env`. */
  env?: Record<string, string>;
  /** Folder relative paths resolve against for an object config. */
  baseDir?: string;
}

/**
 * An {@linkcode ExportRunner} running `config` (a config file path or object) with `runPipeline`;
 * the config is re-read for every checkpoint, so edits apply from the next export.
 */
export function pipelineRunner(
  config: string | RawConfig,
  options: PipelineRunnerOptions = {},
): ExportRunner {
  return async (job) => {
    const result = await runPipeline(config, {
      vars: { ...options.vars, ...job.vars },
      overwrite: job.overwrite,
      signal: job.signal,
      onEvent: job.onEvent,
      ...(options.backend ? { backend: options.backend } : {}),
      ...(options.stages ? { stages: options.stages } : {}),
      ...(options.env ? { env: options.env } : {}),
      ...(options.baseDir ? { baseDir: options.baseDir } : {}),
    });
    return { output: result.output, manifestSha256: result.manifestSha256 };
  };
}

/**
 * An {@linkcode ExportVerifier} running `verifyCheckpoint` (what `ckpt verify` runs): every file's
 * size and sha256 against `ckpt-manifest.json`, and every file loads. `WATCH_VERIFY_FILE` names the
 * first failed check.
 */
export function checkpointVerifier(): ExportVerifier {
  return async (output, signal) => {
    const result = await verifyCheckpoint(output, { signal });
    signal.throwIfAborted();
    if (!result.ok) {
      const bad = result.checks.find((c) => !c.ok);
      const file = bad?.file === undefined ? output : join(output, bad.file);
      throw new CkptError(
        "WATCH_VERIFY_FILE",
        `Cannot verify "${file}": ${bad?.kind ?? "check"} failed: ${bad?.message ?? "unknown"}`,
        { file },
      );
    }
  };
}

/**
 * Reads the `"watch"` block of a JSONC config file (without resolving variables or stages) and
 * returns the settings with defaults and `overrides` applied. `CONFIG_READ` when the file cannot be
 * read, `CONFIG_PARSE` for bad JSONC, `WATCH_CONFIG` for a bad block.
 */
export async function readWatchSettings(
  configPath: string,
  overrides: WatchSettingsInput = {},
): Promise<WatchSettings> {
  const text = await readTextInput(configPath, { code: "CONFIG_READ", what: "config" });
  const raw = parseJsonc(text, configPath) as { watch?: unknown } | null;
  return parseWatchSettings(
    typeof raw === "object" && raw !== null ? raw.watch : undefined,
    overrides,
  );
}

/**
 * `ckpt run <config> --part I/N | --part auto` and `ckpt run <config> --finish N`: one part of a
 * split export, and its finish (`pipelines/run_part.ts`, `pipelines/finish_parts.ts`).
 * @module
 */
import type { PipelineConfig } from "../pipelines/config.ts";
import { finishParts } from "../pipelines/finish_parts.ts";
import { createRenderer, formatBytes } from "../pipelines/progress.ts";
import { type PartResult, runPart } from "../pipelines/run_part.ts";
import { parsePartCount, parsePartSpec, partFromEnv, type PartSpec } from "../pipelines/split.ts";
import { type Parsed, stringOption, UsageError } from "./_args.ts";
import { topModuleChanges } from "./_module_changes.ts";
import { runFailureCode, type RunFlags, stderrWriter, withSignals } from "./_run_flags.ts";

/** The options `ckpt run` takes for split exports, for `parseCommand`. */
export const PART_OPTIONS = {
  part: { type: "string" },
  "parts-count": { type: "string" },
  finish: { type: "string" },
} as const;

/** Help text of the split-export options. */
export const PART_HELP = `
Split export (one export over many machines; docs/clusters.md):
  --part I/N           write part I (0 to N-1) of N: its byte-balanced share of the weight files
                       into a folder beside the output shared by all parts, plus a receipt; the
                       last part (N-1) also runs the tokenizer, optimizer, metrics and value-head
                       stages. A part with a receipt, or on an output already finished, does nothing
  --part auto          I and N from a Slurm job array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT)
                       or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX; Kubernetes gives no count:
                       pass --parts-count N or set CKPT_PARTS)
  --parts-count N      the count for --part auto
  --dry-run            with --part: print the files that part would write, write nothing
  --finish N           after all N parts: check their receipts, write the shard index and the
                       manifest from them (no weight is read again), rename the folder into place`;

/** What the split options ask for: a part, a finish, or neither. */
export type PartMode =
  | { kind: "none" }
  | { kind: "part"; part: PartSpec }
  | { kind: "finish"; count: number };

/** Reads `--part`, `--parts-count` and `--finish` (the environment for `--part auto`). */
export function partMode(parsed: Parsed, env: Record<string, string | undefined>): PartMode {
  const part = stringOption(parsed, "part");
  const partsCount = stringOption(parsed, "parts-count");
  const finish = stringOption(parsed, "finish");
  if (part !== undefined && finish !== undefined) {
    throw new UsageError("--part and --finish are separate runs: the parts first, then one finish");
  }
  if (partsCount !== undefined && part !== "auto") {
    throw new UsageError("--parts-count goes with --part auto");
  }
  if (finish !== undefined) return { kind: "finish", count: parsePartCount(finish, "--finish") };
  if (part === undefined) return { kind: "none" };
  if (part !== "auto") return { kind: "part", part: parsePartSpec(part) };
  const count = partsCount === undefined ? undefined : parsePartCount(partsCount, "--parts-count");
  return { kind: "part", part: partFromEnv(env, count) };
}

/** Prints a part's dry-run plan as a table on stdout. */
function printPartPlan(r: PartResult): void {
  console.log(`plan for part ${r.part} of ${r.count} of ${r.output} (nothing written):`);
  const width = Math.max(4, ...r.files.map((f) => f.path.length));
  let total = 0;
  for (const f of r.files) {
    total += f.size;
    console.log(`  ${f.path.padEnd(width)}  ${formatBytes(f.size).padStart(9)}`);
  }
  console.log(
    `  ${"total".padEnd(width)}  ${formatBytes(total).padStart(9)}  ${r.files.length} files`,
  );
}

/** Runs one part or the finish with the CLI's renderer and signals; returns the exit code. */
export async function runPartsWithCli(
  config: PipelineConfig,
  mode: Exclude<PartMode, { kind: "none" }>,
  flags: RunFlags,
): Promise<number> {
  if (flags.dryRun && mode.kind === "finish") {
    throw new UsageError("--dry-run does not go with --finish (it plans nothing: dry-run a part)");
  }
  const render = createRenderer(flags.log, stderrWriter(), Deno.stderr.isTerminal());
  const common = {
    overwrite: flags.overwrite,
    force: flags.force,
    wait: flags.wait,
    onEvent: render,
  };
  try {
    if (mode.kind === "part") {
      const { index, count } = mode.part;
      const r = await withSignals((signal) =>
        runPart(config, {
          ...common,
          signal,
          part: { index, count },
          dryRun: flags.dryRun,
          ...(flags.backend ? { backend: flags.backend } : {}),
        })
      );
      if (r.status === "planned") {
        printPartPlan(r);
        return 0;
      }
      if (flags.log === "json") return 0;
      const what = r.status === "already-finished"
        ? `the output is already finished: nothing to do`
        : r.status === "already-done"
        ? `already done (receipt ${r.receipt}): nothing to do`
        : `${r.files.length} files, ${formatBytes(r.files.reduce((n, f) => n + f.size, 0))}`;
      console.log(`part ${index} of ${count} of ${r.output}: ${what}`);
      return 0;
    }
    const r = await withSignals((signal) =>
      finishParts(config, { ...common, signal, count: mode.count })
    );
    if (flags.log === "json") return 0;
    if (r.status === "already-finished") {
      console.log(`${r.output}\nalready finished: nothing to do`);
    } else {
      console.log(`${r.output}\nmanifest sha256 ${r.manifestSha256}`);
      const top = topModuleChanges(r);
      if (top.length > 0) console.log(top.join("\n"));
    }
    return 0;
  } catch (err) {
    return runFailureCode(err, flags.log);
  }
}

/**
 * `ckpt watch <runs-folder> --config <pipeline.jsonc>`: exports each new, complete checkpoint of a
 * training run exactly once; one tick and exit (system cron, systemd timers, Kubernetes CronJobs),
 * or `--schedule "<cron>"` to tick with Deno's built-in cron until SIGTERM.
 * @module
 */
import { resolve } from "node:path";
import { CkptError } from "../errors.ts";
import type { BackendChoice } from "../merge/backend.ts";
import { parseVarArgs } from "../pipelines/config.ts";
import type { WatchSettingsInput } from "../pipelines/watch/config.ts";
import {
  checkpointVerifier,
  pipelineRunner,
  readWatchSettings,
} from "../pipelines/watch/runner.ts";
import {
  retryFailed,
  type TickSummary,
  type WatchEvent,
  watchOnce,
  watchScheduled,
  watchStatus,
} from "../pipelines/watch/watch.ts";
import { parseSize } from "../formats/size.ts";
import { splitHandoffRunner } from "../pipelines/watch/split_handoff.ts";
import { parseCommand, type Parsed, stringOption, UsageError } from "./_args.ts";
import { onSignal } from "./_signals.ts";

const HELP = `ckpt watch: export each new checkpoint of a training run, exactly once

Usage: ckpt watch <runs-folder> --config <pipeline.jsonc> [options]
       ckpt watch <runs-folder> --status [--log json]

Scans <runs-folder> for checkpoint folders (default patterns step-* and FINAL), waits until each is
completely written (the training side's own signals: weights written last, DCP .metadata, index
JSON, whole safetensors/zip files; plus a quiet period), and runs the pipeline for it with
\${step} (the number in the folder's name, or the name when it has none: FINAL), \${name} (the
folder's name), \${run} (its parent folder), \${checkpoint} (its path) and \${counter} (the number,
or empty) set. What was exported is recorded in <runs-folder>/.ckpt-watch/state.json.
Per-checkpoint locks make overlapping watchers and cron ticks safe; a crashed export is retried from
scratch on the next tick; after --max-tries failures a checkpoint is marked failed and skipped.

Without --schedule: one tick, then exit (for cron, systemd timers, Kubernetes CronJobs).
With --schedule: a tick now, then one per cron match (UTC, Deno.cron) until SIGTERM. When running
cli.ts with plain \`deno run\` (not through this package's deno.json) add --unstable-cron.
SIGTERM/SIGINT abort the running export cleanly (no staging folder left) and exit 0.

The config's optional "watch" block sets the defaults of the options below:
  "watch": { "pattern": ["step-*", "FINAL"], "complete": ["signals"], "quietSeconds": 30,
             "keep": 3, "maxTries": 3, "verify": true }

Options:
  --config <file>        pipeline config (JSONC) run for each checkpoint
  --schedule "<cron>"    tick on this schedule, e.g. "*/10 * * * *", until SIGTERM
  --status               print the state file's summary and exit
  --var name=value       extra config variable (repeatable)
  --pattern <glob>       checkpoint folder glob, relative to the runs folder (repeatable)
  --complete <rule>      completeness rule: "signals" or a file glob that must exist (repeatable)
  --quiet-seconds <s>    seconds without size/mtime change before a folder counts as complete
  --keep <n>             keep the n newest exports, delete older exports (never inputs)
  --max-tries <n>        tries before a checkpoint is marked failed
  --retry-failed         give checkpoints marked failed a new round of tries first
  --no-verify            do not verify exports (ckpt verify: manifest hashes, files load)
  --split-commands <n>   hand checkpoints to a cluster instead of exporting them here: log
                         (event "handed-off") the commands of a split export in n parts
                         (ckpt run --part auto / --finish n, examples/cluster/submit.sh) and
                         record them as done, unverified; see docs/clusters.md
  --split-over <size>    with --split-commands: only checkpoints of at least this size (e.g.
                         "50GB"); smaller ones are exported here as usual. Default: all
  --backend <b>          merge backend: auto, webgpu or cpu
  --log <style>          json (one JSON object per event; default when stdout is not a terminal)
                         or text
  -h, --help             this help

Examples:
  ckpt watch /runs/llama3-kto --config export.jsonc
  ckpt watch /runs/llama3-kto --config export.jsonc --schedule "*/15 * * * *" --keep 3
  ckpt watch /runs/llama3-kto --status
  ckpt watch /runs/llama3-70b --config export.jsonc --split-commands 8 --split-over 50GB

Exit codes: 0 ok (also after SIGTERM), 1 an export failed this tick, 2 usage error`;

const OPTIONS = {
  config: { type: "string" },
  schedule: { type: "string" },
  status: { type: "boolean" },
  var: { type: "string", multiple: true },
  pattern: { type: "string", multiple: true },
  complete: { type: "string", multiple: true },
  "quiet-seconds": { type: "string" },
  keep: { type: "string" },
  "max-tries": { type: "string" },
  "no-verify": { type: "boolean" },
  "retry-failed": { type: "boolean" },
  backend: { type: "string" },
  log: { type: "string" },
  "split-commands": { type: "string" },
  "split-over": { type: "string" },
} as const;

function numberOption(
  parsed: Parsed,
  name: string,
  min: number,
  integer: boolean,
): number | undefined {
  const v = stringOption(parsed, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    throw new UsageError(
      `--${name} must be ${integer ? "an integer" : "a number"} >= ${min} (got "${v}")`,
    );
  }
  return n;
}

function listOption(parsed: Parsed, name: string): string[] | undefined {
  const v = parsed.values[name];
  if (v === undefined) return undefined;
  return (Array.isArray(v) ? v : [v]).map(String);
}

/** Renders one event as a text line. */
function textLine(e: WatchEvent): string {
  const { ts, event, ...rest } = e as WatchEvent & Record<string, unknown>;
  const fields = Object.entries(rest).map(([k, v]) =>
    `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`
  );
  return `${ts} ${event} ${fields.join(" ")}`.trimEnd();
}

/** `ckpt watch --status`: the state of the runs folder, as JSON or as text lines. */
async function printStatus(
  runsDir: string,
  log: string,
  write: (line: string) => void,
): Promise<void> {
  const summary = await watchStatus(runsDir);
  if (log === "json") return write(JSON.stringify(summary));
  write(`${summary.runsDir} (state updated ${summary.updatedAt})`);
  write(Object.entries(summary.counts).map(([k, v]) => `${k}: ${v}`).join(", ") || "nothing yet");
  for (const c of summary.checkpoints) {
    const extra = c.status === "done"
      ? `${c.output ?? ""}${c.pruned ? " (pruned)" : ""} ${c.manifestSha256 ?? ""}`
      : c.error
      ? `[${c.error.code}] ${c.error.message}`
      : "";
    write(
      `  ${c.checkpoint.padEnd(16)} ${c.status.padEnd(11)} tries=${c.tries} ${extra}`.trimEnd(),
    );
  }
}

/** The watch settings the command line overrides (flags not given stay undefined). */
function settingOverrides(parsed: Parsed): WatchSettingsInput {
  return {
    pattern: listOption(parsed, "pattern"),
    complete: listOption(parsed, "complete"),
    quietSeconds: numberOption(parsed, "quiet-seconds", 0, false),
    keep: numberOption(parsed, "keep", 1, true),
    maxTries: numberOption(parsed, "max-tries", 1, true),
    verify: parsed.values["no-verify"] ? false : undefined,
  };
}

/** `--split-commands n` and `--split-over <size>`, when given. */
function splitOptions(parsed: Parsed): { count: number; overBytes: number } | undefined {
  const count = numberOption(parsed, "split-commands", 1, true);
  const over = stringOption(parsed, "split-over");
  if (count === undefined) {
    if (over !== undefined) throw new UsageError("--split-over goes with --split-commands");
    return undefined;
  }
  let overBytes = 0;
  if (over !== undefined) {
    try {
      overBytes = parseSize(over);
    } catch (err) {
      throw new UsageError(`--split-over: ${(err as Error).message}`);
    }
  }
  return { count, overBytes };
}

/** Runs `ckpt watch`; returns the exit code. */
export async function run(args: string[]): Promise<number> {
  const parsed = parseCommand(args, OPTIONS, HELP);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`expected one runs folder, got ${parsed.positionals.length} arguments`);
  }
  const runsDir = resolve(parsed.positionals[0]!);
  const log = stringOption(parsed, "log") ?? (Deno.stdout.isTerminal() ? "text" : "json");
  if (log !== "json" && log !== "text") {
    throw new UsageError(`--log must be json or text (got "${log}")`);
  }
  const enc = new TextEncoder();
  const write = (line: string): void => void Deno.stdout.writeSync(enc.encode(line + "\n"));

  if (parsed.values.status) {
    await printStatus(runsDir, log, write);
    return 0;
  }

  const configPath = stringOption(parsed, "config", true);
  const backend = stringOption(parsed, "backend");
  if (backend !== undefined && backend !== "auto" && backend !== "webgpu" && backend !== "cpu") {
    throw new UsageError(`--backend must be auto, webgpu or cpu (got "${backend}")`);
  }
  const split = splitOptions(parsed);
  const settings = await readWatchSettings(resolve(configPath), settingOverrides(parsed));
  const vars = parseVarArgs(listOption(parsed, "var") ?? []);
  const ac = new AbortController();
  const stopListening = onSignal(() =>
    ac.abort(new CkptError("ABORTED", "Cannot go on: received a signal"))
  );
  let failed = 0;
  const exporter = pipelineRunner(resolve(configPath), {
    vars,
    ...(backend ? { backend: backend as BackendChoice } : {}),
  });
  const options = {
    runsDir,
    settings,
    runner: split
      ? splitHandoffRunner(resolve(configPath), { ...split, vars, inner: exporter })
      : exporter,
    verify: checkpointVerifier(),
    signal: ac.signal,
    onEvent: (e: WatchEvent) => {
      if (e.event === "failed") failed++;
      write(log === "json" ? JSON.stringify(e) : textLine(e));
    },
  };
  if (parsed.values["retry-failed"]) {
    const checkpoints = await retryFailed(runsDir);
    options.onEvent({ ts: new Date().toISOString(), event: "retry-failed", checkpoints });
  }
  try {
    const schedule = stringOption(parsed, "schedule");
    if (schedule !== undefined) {
      try {
        await watchScheduled({ ...options, schedule });
      } catch (err) {
        if (err instanceof CkptError && err.code === "WATCH_SCHEDULE") {
          throw new UsageError(err.message);
        }
        throw err;
      }
      return 0;
    }
    const summary: TickSummary = await watchOnce(options);
    return summary.aborted || failed === 0 ? 0 : 1;
  } finally {
    stopListening();
  }
}

/**
 * The flags every command that runs a pipeline shares (`--overwrite`, `--force`, `--wait`,
 * `--dry-run`, `--backend`, `--log`) and the signal wiring, for `run`, `merge`, `gather` and the
 * split-export options.
 * @module
 */
import { CkptError } from "../errors.ts";
import type { BackendChoice } from "../merge/backend.ts";
import type { LogStyle } from "../pipelines/progress.ts";
import { type Parsed, stringOption, UsageError } from "./_args.ts";
import { onSignal } from "./_signals.ts";

/**
 * Wires SIGINT/SIGTERM (the process-wide signal `cli.ts` installs, or listeners of its own) to an
 * AbortController for the duration of `fn`; a signal that came before aborts it at once.
 */
export async function withSignals<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = onSignal((reason) => ac.abort(reason));
  try {
    return await fn(ac.signal);
  } finally {
    stop();
  }
}

/** Parses `--log`. */
export function logStyle(value: string | undefined): LogStyle {
  const v = value ?? "auto";
  if (v === "auto" || v === "json" || v === "tty" || v === "plain" || v === "quiet") return v;
  throw new UsageError(`--log must be auto, tty, plain, json or quiet (got "${v}")`);
}

/** Parses `--backend`. */
export function backendChoice(value: string | undefined): BackendChoice | undefined {
  if (value === undefined) return undefined;
  if (value === "auto" || value === "webgpu" || value === "cpu") return value;
  throw new UsageError(`--backend must be auto, webgpu or cpu (got "${value}")`);
}

/** The stderr writer the renderers use. */
export function stderrWriter(): (text: string) => void {
  const enc = new TextEncoder();
  return (text) => void Deno.stderr.writeSync(enc.encode(text));
}

/** The flags every command that runs a pipeline takes. */
export interface RunFlags {
  overwrite: boolean;
  force: boolean;
  wait: boolean;
  dryRun: boolean;
  backend: BackendChoice | undefined;
  log: LogStyle;
}

/** The options of {@linkcode runFlags}, for `parseCommand`. */
export const RUN_FLAG_OPTIONS = {
  overwrite: { type: "boolean" },
  force: { type: "boolean" },
  wait: { type: "boolean" },
  "dry-run": { type: "boolean" },
  backend: { type: "string" },
  log: { type: "string" },
} as const;

/** Reads {@linkcode RunFlags} from parsed arguments; `--force` needs `--overwrite`. */
export function runFlags(parsed: Parsed): RunFlags {
  const flags = {
    overwrite: parsed.values.overwrite === true,
    force: parsed.values.force === true,
    wait: parsed.values.wait === true,
    dryRun: parsed.values["dry-run"] === true,
    backend: backendChoice(stringOption(parsed, "backend")),
    log: logStyle(stringOption(parsed, "log")),
  };
  if (flags.force && !flags.overwrite) throw new UsageError("--force goes with --overwrite");
  return flags;
}

/**
 * The exit code of a run that failed with `err`: 130 for `ABORTED` (said on stderr), 1 for an
 * error already rendered as a pipeline-error event (JSON logs stay JSON, whatever failed); any
 * other error is thrown on to the CLI's last net.
 */
export function runFailureCode(err: unknown, log: LogStyle): number {
  if (err instanceof CkptError && err.code === "ABORTED") {
    console.error(`ckpt: ${err.message}`);
    return 130;
  }
  if ((err instanceof CkptError && log !== "quiet") || log === "json") return 1;
  throw err;
}

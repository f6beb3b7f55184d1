/**
 * `ckpt watch --split-commands N`: hands a large checkpoint to a cluster instead of exporting it
 * here. For a checkpoint of at least `overBytes`, the runner exports nothing: it resolves the
 * config with the checkpoint's variables (for the output path) and returns the command lines that
 * export it as a split export of N parts (`ckpt run --part`, `--finish`, and the Slurm submission
 * of `examples/cluster/`); `ckpt watch` logs them as a `handed-off` event and records the
 * checkpoint as done (not verified: the cluster has not written it yet). Smaller checkpoints go to
 * the `inner` runner as usual. ckpt submits nothing itself: a scheduler of its own is what the
 * cluster already has.
 *
 * @example Commands for a checkpoint
 * ```ts
 * import { splitCommands } from "./split_handoff.ts";
 * import assert from "node:assert/strict";
 *
 * const c = splitCommands("/cfg/export.jsonc", { step: "64", run: "/runs/a b" }, 8);
 * assert.equal(c.part, "ckpt run /cfg/export.jsonc --var step=64 --var 'run=/runs/a b' --part auto --parts-count 8");
 * assert.equal(c.finish, "ckpt run /cfg/export.jsonc --var step=64 --var 'run=/runs/a b' --finish 8");
 * ```
 * @module
 */
import { join } from "node:path";
import { loadConfig } from "../config.ts";
import type { ExportRunner } from "./events.ts";

/** The command lines of one split export. */
export interface SplitCommands {
  /** What each of the N tasks runs (`--part auto`; `--part I/N` by hand). */
  part: string;
  /** What runs once after all N succeeded. */
  finish: string;
  /** The Slurm submission with `examples/cluster/submit.sh` (array plus dependent finish). */
  slurm: string;
}

/** `value` quoted for a POSIX shell when it needs it. */
export function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The commands that export `config` with `vars` as `count` parts. */
export function splitCommands(
  config: string,
  vars: Readonly<Record<string, string>>,
  count: number,
): SplitCommands {
  const varArgs = Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}=${v}`]);
  const base = ["ckpt", "run", config, ...varArgs].map(shellQuote).join(" ");
  const submit = ["examples/cluster/submit.sh", ...varArgs].map(shellQuote).join(" ");
  return {
    part: `${base} --part auto --parts-count ${count}`,
    finish: `${base} --finish ${count}`,
    slurm: `CKPT_CONFIG=${shellQuote(config)} CKPT_PARTS=${count} ${submit}`,
  };
}

/** Total bytes of the regular files under `dir`. */
export async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) total += await folderBytes(p);
    else if (e.isFile) total += (await Deno.stat(p)).size;
  }
  return total;
}

/** Options of {@linkcode splitHandoffRunner}. */
export interface SplitHandoffOptions {
  /** Parts per split export. */
  count: number;
  /** Checkpoints of at least this many bytes are handed off; smaller ones go to `inner`. */
  overBytes: number;
  /** Extra variables (`--var`), as the export would get them. */
  vars?: Record<string, string>;
  /** The runner for checkpoints below `overBytes`. */
  inner: ExportRunner;
}

/**
 * An export runner that hands checkpoints of at least `overBytes` to a split export (returns
 * its commands in `handedOff`) and exports the others with `inner`. `configPath` must be the
 * config file (the commands name it).
 */
export function splitHandoffRunner(configPath: string, options: SplitHandoffOptions): ExportRunner {
  return async (job) => {
    if (await folderBytes(job.checkpoint.path) < options.overBytes) return await options.inner(job);
    const vars = { ...options.vars, ...job.vars };
    const cfg = await loadConfig(configPath, { vars });
    const commands = splitCommands(configPath, vars, options.count);
    return {
      output: cfg.output,
      manifestSha256: undefined,
      handedOff: { parts: options.count, ...commands },
    };
  };
}

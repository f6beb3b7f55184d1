/**
 * Runs `deno run -A cli.ts ...` as a child process for CLI tests.
 * @module
 */
import { join } from "node:path";
import { REPO_ROOT } from "../_helpers/peer.ts";

/** Exit code and output of one CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with `args` to completion. */
export async function ckpt(args: string[], cwd: string = REPO_ROOT): Promise<CliResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(REPO_ROOT, "cli.ts"), ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Starts the CLI without waiting (for kill tests), with `env` added to its environment. */
export function spawnCkpt(
  args: string[],
  cwd: string = REPO_ROOT,
  env: Record<string, string> = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(REPO_ROOT, "cli.ts"), ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
}

/**
 * `ckpt merge` arguments for `run` (a base folder and its adapter) into `out` on the CPU backend,
 * then `extra`.
 */
export function mergeArgs(
  run: { base: string; adapter: string },
  out: string,
  ...extra: string[]
): string[] {
  return [
    "merge",
    "--base",
    run.base,
    "--adapter",
    run.adapter,
    "--out",
    out,
    "--backend",
    "cpu",
    ...extra,
  ];
}

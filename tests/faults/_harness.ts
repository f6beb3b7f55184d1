/**
 * The fault-injection suite's tools: a small merge run (base + LoRA adapter, a few KB), the CLI as
 * a child process with the runner's test-only fault variables (`pipelines/_faults.ts`), tmpfs
 * mounts, and the checks every case makes: exit code, a coded message, no stack trace, no staging
 * left after the next run, and any output that exists passing `ckpt verify --base --adapter`.
 *
 * The suite needs root (mount, chattr, unshare, setpriv), as CI has; without it the tests fail
 * loudly rather than skip.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { mergeConfig } from "../../cli/merge.ts";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
export { mergeArgs } from "../cli/_cli.ts";

/** The inputs of the small run. */
export interface SmallRun {
  base: string;
  adapter: string;
}

/** A base model (one layer, 64-token vocabulary, ~8 KB, no tokenizer) and its LoRA adapter. */
export async function makeSmallRun(dir: string): Promise<SmallRun> {
  const run = await makeDemoRun(dir, {
    size: { hidden: 16, intermediate: 32, layers: 1, heads: 2, kvHeads: 1, vocab: 64, rank: 2 },
  });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.remove(join(run.base, f));
  }
  return { base: run.base, adapter: run.adapter };
}

/** What a CLI child did. */
export interface ChildResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode ckptChild}. */
export interface ChildOptions {
  /** Extra environment (the fault variables). */
  env?: Record<string, string>;
  /** Run it through this command first (e.g. `["unshare", "--pid", "--fork", "--mount-proc"]`). */
  wrap?: string[];
}

/** Runs the CLI to completion as a child process. */
export async function ckptChild(args: string[], options: ChildOptions = {}): Promise<ChildResult> {
  const out = await command(args, options).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** Starts the CLI as a child process (output piped). */
export function spawnChild(args: string[], options: ChildOptions = {}): Deno.ChildProcess {
  return command(args, options).spawn();
}

function command(args: string[], options: ChildOptions): Deno.Command {
  const deno = [Deno.execPath(), "run", "-A", join(REPO_ROOT, "cli.ts"), ...args];
  const [cmd, ...rest] = [...(options.wrap ?? []), ...deno];
  return new Deno.Command(cmd!, {
    args: rest,
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", RUST_BACKTRACE: "0", ...options.env },
  });
}

/** Fails when the output holds anything that looks like a stack trace. */
export function assertNoStack(r: ChildResult, what: string): void {
  const text = r.stdout + r.stderr;
  for (const pattern of [/^\s+at /m, /Stack backtrace/, /Uncaught/, /^error: /m]) {
    assert.ok(!pattern.test(text), `${what}: a stack trace or uncaught error:\n${text}`);
  }
}

/**
 * The error code a failed run printed: `[CODE]` of the CLI's one line, or the `code` of a
 * `pipeline-error` JSON event (`--log json`).
 */
export function printedCode(r: ChildResult): string | undefined {
  for (const line of r.stderr.split("\n")) {
    if (line.startsWith("{")) {
      try {
        const e = JSON.parse(line);
        if (e.type === "pipeline-error") return e.code;
      } catch { /* not JSON */ }
    }
  }
  return /\[([A-Z][A-Z0-9_]*)\]/.exec(r.stderr)?.[1];
}

/** Asserts a failed run: exit 1, a coded message with one of `codes`, no stack trace. */
export function assertCoded(r: ChildResult, codes: readonly string[], what: string): string {
  assertNoStack(r, what);
  assert.equal(r.code, 1, `${what}: exit code\n${r.stderr}`);
  const code = printedCode(r);
  assert.ok(
    code !== undefined && codes.includes(code),
    `${what}: code ${code}, want ${codes}\n${r.stderr}`,
  );
  assert.notEqual(code, "INTERNAL", what);
  return code!;
}

/** Names the runner leaves beside an output while a run is live or after it died. */
export async function leftovers(parent: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(parent)) {
      if (/^\.ckpt-(staging|old|lock)-/.test(e.name)) out.push(e.name);
    }
  } catch {
    // no parent: nothing left
  }
  return out.sort();
}

/** "The next run": the same merge, in this process; resolves to its error code or "ok". */
export async function nextRun(
  run: SmallRun,
  out: string,
  options: { overwrite?: boolean } = {},
): Promise<string> {
  const config = await mergeConfig({ base: run.base, adapter: run.adapter, out });
  try {
    await runPipeline(config, { backend: "cpu", env: {}, overwrite: options.overwrite ?? false });
    return "ok";
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

/** Asserts `out` (when it exists) passes `ckpt verify --base --adapter`. Resolves to whether it exists. */
export async function assertVerifies(run: SmallRun, out: string, what: string): Promise<boolean> {
  try {
    await Deno.lstat(out);
  } catch {
    return false;
  }
  const result = await verifyCheckpoint(out, { base: run.base, adapter: run.adapter });
  assert.ok(
    result.ok,
    `${what}: ${out} does not verify: ${JSON.stringify(result.checks.filter((c) => !c.ok))}`,
  );
  return true;
}

/** Runs a command that must succeed (mount, chattr, ...); throws with its output otherwise. */
export async function sh(cmd: string, ...args: string[]): Promise<void> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (the fault suite needs root: mount, chattr, unshare): ${
        new TextDecoder().decode(r.stderr)
      }`,
    );
  }
}

/** Mounts a tmpfs of `bytes` (rounded up to pages) at `dir` (created). */
export async function mountTmpfs(dir: string, bytes: number): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await sh("mount", "-t", "tmpfs", "-o", `size=${bytes},mode=755`, "tmpfs", dir);
}

/** Unmounts `dir`, ignoring "not mounted". */
export async function unmount(dir: string): Promise<void> {
  await new Deno.Command("umount", { args: ["-l", dir], stdout: "null", stderr: "null" }).output();
}

/** Runs `jobs` with at most `width` at once; resolves when all are done (rejects on the first failure). */
export async function pool<T>(
  items: readonly T[],
  width: number,
  job: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) await job(items[next++]!);
  });
  await Promise.all(workers);
}

/** The file-system calls a CLI run makes, from the runner's fault log. */
export async function countCalls(
  args: string[],
  logFile: string,
  options: ChildOptions = {},
): Promise<string[]> {
  await Deno.remove(logFile).catch(() => {});
  const r = await ckptChild(args, {
    ...options,
    env: { ...options.env, CKPT_TEST_FS_LOG: logFile },
  });
  assert.equal(r.code, 0, r.stderr);
  return (await Deno.readTextFile(logFile)).trim().split("\n");
}

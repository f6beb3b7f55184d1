/**
 * Test-only fault injection at the runner's file-system calls. Every call the runner, its staging
 * folder and its locks make (and every block of output bytes a stage writes) passes
 * {@linkcode fsStep} first; with none of the variables below set it does nothing but count.
 *
 * - `CKPT_TEST_FS_LOG=<file>`: appends `"<n> <op> <path>"` for each call (how the fault suite
 *   learns how many calls a run makes).
 * - `CKPT_TEST_KILL_AT=<n>`: SIGKILLs the process just before call `n` (1-based).
 * - `CKPT_TEST_PAUSE_AT=<n>` with `CKPT_TEST_PAUSE_FILE=<file>`: before call `n`, writes the file
 *   and blocks until someone deletes it (to hold a run in the middle while another one starts).
 *
 * The variables are read once; without permission to read the environment nothing happens.
 * @module
 */

interface FaultPlan {
  n: number;
  killAt: number;
  pauseAt: number;
  pauseFile: string | undefined;
  log: string | undefined;
}

let plan: FaultPlan | null | undefined;

function readPlan(): FaultPlan | null {
  try {
    const num = (name: string): number => Number(Deno.env.get(name) ?? 0) || 0;
    const log = Deno.env.get("CKPT_TEST_FS_LOG");
    const p: FaultPlan = {
      n: 0,
      killAt: num("CKPT_TEST_KILL_AT"),
      pauseAt: num("CKPT_TEST_PAUSE_AT"),
      pauseFile: Deno.env.get("CKPT_TEST_PAUSE_FILE"),
      log,
    };
    return p.killAt > 0 || p.pauseAt > 0 || log !== undefined ? p : null;
  } catch {
    return null; // no --allow-env: no faults
  }
}

function fileExists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Marks one file-system call `op` on `path`; see the module doc. */
export function fsStep(op: string, path: string): void {
  if (plan === undefined) plan = readPlan();
  if (plan === null) return;
  const n = ++plan.n;
  if (plan.log !== undefined) {
    Deno.writeTextFileSync(plan.log, `${n} ${op} ${path}\n`, { append: true });
  }
  if (n === plan.killAt) Deno.kill(Deno.pid, "SIGKILL");
  if (n === plan.pauseAt && plan.pauseFile !== undefined) {
    Deno.writeTextFileSync(plan.pauseFile, `${Deno.pid} ${op} ${path}\n`);
    const cell = new Int32Array(new SharedArrayBuffer(4));
    while (fileExists(plan.pauseFile)) Atomics.wait(cell, 0, 0, 20);
  }
}

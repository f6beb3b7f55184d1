/**
 * The CLI's SIGINT/SIGTERM handling, installed by `cli.ts` as the first thing its module body does,
 * before any command's code is loaded (that load is most of a run's start-up), so a signal at any
 * moment after the runtime starts aborts the run instead of killing the process mid-way:
 *
 * - the first signal aborts one process-wide `AbortSignal` (commands pass it to the runner, which
 *   stops its stage and removes the staging folder), and starts a grace timer: if the process is
 *   still there {@linkcode GRACE_MS} later, it exits with the command's signal exit code;
 * - a second signal exits at once.
 *
 * Without {@linkcode installSignals} (the library, tests calling `main()` in-process),
 * {@linkcode onSignal} falls back to listeners of its own for the duration of a command.
 * @module
 */

/** How long after the first signal the process may take to clean up before it exits anyway. */
export const GRACE_MS = 900;

let controller: AbortController | undefined;
let exitCode = 130;

/**
 * Installs the process's SIGINT/SIGTERM listeners (once); `code` is the exit code a signal ends the
 * process with (130, or 0 for `ckpt watch`, whose SIGTERM is its normal stop).
 */
export function installSignals(code = 130): AbortSignal {
  exitCode = code;
  if (controller) return controller.signal;
  const ac = new AbortController();
  controller = ac;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      if (ac.signal.aborted) Deno.exit(exitCode);
      ac.abort(new Error(`received ${sig}`));
      Deno.unrefTimer(setTimeout(() => Deno.exit(exitCode), GRACE_MS));
    });
  }
  markListening();
  return ac.signal;
}

/**
 * Test-only: with `CKPT_TEST_SIGNALS_READY=<file>`, writes the file once the listeners are in
 * place. The kernel's view (SigCgt in /proc) cannot tell: Deno catches SIGTERM from its start and
 * ends the process as the default action would while no listener is added.
 */
function markListening(): void {
  try {
    const file = Deno.env.get("CKPT_TEST_SIGNALS_READY");
    if (file) Deno.writeTextFileSync(file, `${Deno.pid}\n`);
  } catch { /* no --allow-env or --allow-write: nothing to mark */ }
}

/** The process-wide signal, when {@linkcode installSignals} ran. */
export function processSignal(): AbortSignal | undefined {
  return controller?.signal;
}

/**
 * Calls `fn` with the reason on SIGINT/SIGTERM (at once when one already arrived); returns the
 * function that stops listening.
 */
export function onSignal(fn: (reason: unknown) => void): () => void {
  const proc = controller?.signal;
  if (proc) {
    if (proc.aborted) {
      fn(proc.reason);
      return () => {};
    }
    const h = () => fn(proc.reason);
    proc.addEventListener("abort", h, { once: true });
    return () => proc.removeEventListener("abort", h);
  }
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const h = () => fn(new Error(`received ${sig}`));
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  return () => {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  };
}

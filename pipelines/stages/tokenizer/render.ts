/**
 * Renders a chat template, which is untrusted input (a Jinja program from the tokenizer folder),
 * in a worker thread with bounds: a deadline ({@linkcode TEMPLATE_TIME_LIMIT_MS}), a heap limit
 * ({@linkcode TEMPLATE_HEAP_LIMIT_MB}) and a limit on the rendered text
 * ({@linkcode TEMPLATE_MAX_OUTPUT}). A template over a bound is `TEMPLATE_TIMEOUT` or
 * `TEMPLATE_TOO_LARGE`; one that does not render is `TOKENIZER_TEMPLATE`; an abort (SIGTERM)
 * ends the worker at once and rejects with `ABORTED`. The main thread never runs the template,
 * so signals are handled while it renders.
 *
 * @example Rendering, and a loop that never ends
 * ```ts
 * import { renderTemplate } from "./render.ts";
 * import assert from "node:assert/strict";
 *
 * const text = await renderTemplate("{% for m in messages %}{{ m.content }};{% endfor %}", {
 *   messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "yo" }],
 * });
 * assert.equal(text, "hi;yo;");
 * await assert.rejects(
 *   renderTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {}, { timeLimitMs: 300 }),
 *   (e: Error & { code?: string }) => e.code === "TEMPLATE_TIMEOUT",
 * );
 * ```
 * @module
 */
import { Worker } from "node:worker_threads";
import { CkptError } from "../../../errors.ts";

/** How long a chat template may take to render (a real one takes milliseconds). */
export const TEMPLATE_TIME_LIMIT_MS = 5_000;
/** The heap a template's rendering may use, in MiB. */
export const TEMPLATE_HEAP_LIMIT_MB = 256;
/** The longest rendered text accepted, in characters (1 Mi). */
export const TEMPLATE_MAX_OUTPUT: number = 1 << 20;

/** Options of {@linkcode renderTemplate}. */
export interface RenderOptions {
  /** Deadline in ms. Default {@linkcode TEMPLATE_TIME_LIMIT_MS}. */
  timeLimitMs?: number;
  /** Heap limit in MiB. Default {@linkcode TEMPLATE_HEAP_LIMIT_MB}. */
  heapLimitMb?: number;
  /** Longest output in characters. Default {@linkcode TEMPLATE_MAX_OUTPUT}. */
  maxOutput?: number;
  /** Ends the rendering (`ABORTED`). */
  signal?: AbortSignal | undefined;
  /** Where the template came from, for messages and `CkptError.file`. */
  file?: string;
}

type Reply = { ok: true; text: string } | {
  ok: false;
  tooLarge?: boolean;
  length?: number;
  message?: string;
};

/**
 * Renders `template` with `context` in a bounded worker; resolves to the text (see the module
 * doc for the errors).
 */
export function renderTemplate(
  template: string,
  context: Record<string, unknown>,
  options: RenderOptions = {},
): Promise<string> {
  const timeLimitMs = options.timeLimitMs ?? TEMPLATE_TIME_LIMIT_MS;
  const heapLimitMb = options.heapLimitMb ?? TEMPLATE_HEAP_LIMIT_MB;
  const maxOutput = options.maxOutput ?? TEMPLATE_MAX_OUTPUT;
  const where = options.file === undefined
    ? "the chat template"
    : `the chat template of "${options.file}"`;
  const file = options.file === undefined ? {} : { file: options.file };
  const signal = options.signal;
  if (signal?.aborted) {
    return Promise.reject(new CkptError("ABORTED", `Cannot render ${where}: aborted`, file));
  }
  return new Promise<string>((resolve, reject) => {
    const worker = new Worker(new URL("./_render_worker.ts", import.meta.url), {
      workerData: { template, context, maxOutput },
      resourceLimits: { maxOldGenerationSizeMb: heapLimitMb, maxYoungGenerationSizeMb: 16 },
    });
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      void worker.terminate();
      fn();
    };
    const timer = setTimeout(() =>
      finish(() =>
        reject(
          new CkptError(
            "TEMPLATE_TIMEOUT",
            `Cannot render ${where}: it ran longer than the ${timeLimitMs} ms limit (an unbounded loop?)`,
            { ...file, details: { limitMs: timeLimitMs } },
          ),
        )
      ), timeLimitMs);
    const onAbort = () =>
      finish(() => reject(new CkptError("ABORTED", `Cannot render ${where}: aborted`, file)));
    signal?.addEventListener("abort", onAbort, { once: true });
    const tooLarge = (what: string) =>
      new CkptError("TEMPLATE_TOO_LARGE", `Cannot render ${where}: ${what}`, {
        ...file,
        details: { heapLimitMb, maxOutput },
      });
    worker.on("message", (reply: Reply) =>
      finish(() => {
        if (reply.ok) resolve(reply.text);
        else if (reply.tooLarge) {
          reject(tooLarge(`it renders ${reply.length} characters, over the ${maxOutput} limit`));
        } else {
          reject(
            new CkptError("TOKENIZER_TEMPLATE", `Cannot render ${where}: ${reply.message}`, file),
          );
        }
      }));
    worker.on("error", (err: Error & { code?: string }) =>
      finish(() =>
        reject(
          isOutOfMemory(err)
            ? tooLarge(`it needed more than the ${heapLimitMb} MiB memory limit`)
            : new CkptError("TOKENIZER_TEMPLATE", `Cannot render ${where}: ${err.message}`, {
              ...file,
              cause: err,
            }),
        )
      ));
    worker.on("exit", (code: number) =>
      finish(() =>
        reject(
          new CkptError(
            "TOKENIZER_TEMPLATE",
            `Cannot render ${where}: the renderer exited (${code}) without an answer`,
            file,
          ),
        )
      ));
  });
}

/** Node's error for a worker that reached its heap limit (`ERR_WORKER_OUT_OF_MEMORY`). */
function isOutOfMemory(err: Error & { code?: string }): boolean {
  return /^ERR_WORKER_OUT_OF_MEMORY$/.test(err.code ?? "");
}

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
import { CkptError } from "../../../errors.ts";
import { runBounded, type WorkerFailure } from "./_bounded_worker.ts";

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
export async function renderTemplate(
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
  const tooLarge = (what: string) =>
    new CkptError("TEMPLATE_TOO_LARGE", `Cannot render ${where}: ${what}`, {
      ...file,
      details: { heapLimitMb, maxOutput },
    });
  const reply = await runBounded<Reply>(
    new URL("./_render_worker.ts", import.meta.url),
    { template, context, maxOutput },
    { timeLimitMs, heapLimitMb, signal: options.signal },
    (failure: WorkerFailure) => {
      switch (failure.kind) {
        case "timeout":
          return new CkptError(
            "TEMPLATE_TIMEOUT",
            `Cannot render ${where}: it ran longer than the ${timeLimitMs} ms limit (an unbounded loop?)`,
            { ...file, details: { limitMs: timeLimitMs } },
          );
        case "memory":
          return tooLarge(`it needed more than the ${heapLimitMb} MiB memory limit`);
        case "aborted":
          return new CkptError("ABORTED", `Cannot render ${where}: aborted`, file);
        case "crashed":
          return new CkptError("TOKENIZER_TEMPLATE", `Cannot render ${where}: ${failure.message}`, {
            ...file,
            cause: failure.cause,
          });
      }
    },
  );
  if (reply.ok) return reply.text;
  if (reply.tooLarge) {
    throw tooLarge(`it renders ${reply.length} characters, over the ${maxOutput} limit`);
  }
  throw new CkptError("TOKENIZER_TEMPLATE", `Cannot render ${where}: ${reply.message}`, file);
}

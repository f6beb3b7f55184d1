/**
 * Private: the worker that renders one chat template (`render.ts` starts it with a heap limit and
 * a deadline). It gets `{ template, context, maxOutput }` as its worker data and posts back
 * `{ ok: true, text }`, `{ ok: false, tooLarge: true, length }` or `{ ok: false, message }`.
 * @module
 */
import { parentPort, workerData } from "node:worker_threads";
import { Template } from "@huggingface/jinja";

const { template, context, maxOutput } = workerData as {
  template: string;
  context: Record<string, unknown>;
  maxOutput: number;
};
try {
  const text = new Template(template).render(context);
  if (text.length > maxOutput) {
    parentPort!.postMessage({ ok: false, tooLarge: true, length: text.length });
  } else parentPort!.postMessage({ ok: true, text });
} catch (err) {
  parentPort!.postMessage({ ok: false, message: err instanceof Error ? err.message : String(err) });
}

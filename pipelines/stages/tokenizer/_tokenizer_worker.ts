/**
 * Private: the worker that loads one `tokenizer.json` with `@huggingface/tokenizers` (`validate.ts`
 * starts it with a deadline), encodes a sample and looks up the special tokens. It gets
 * `{ text, config, specials }` as its worker data and posts back `{ ok: true }`,
 * `{ ok: false, missing }` (a special token without an id) or `{ ok: false, message }`.
 * @module
 */
import { parentPort, workerData } from "node:worker_threads";
import { Tokenizer } from "@huggingface/tokenizers";

const { text, config, specials } = workerData as {
  text: string;
  config: Record<string, unknown>;
  specials: string[];
};
try {
  const tok = new Tokenizer(JSON.parse(text), config);
  tok.encode("Hello, world! 123 ünïcödé");
  const missing = specials.find((s) => tok.token_to_id(s) === undefined);
  parentPort!.postMessage(missing === undefined ? { ok: true } : { ok: false, missing });
} catch (err) {
  parentPort!.postMessage({ ok: false, message: err instanceof Error ? err.message : String(err) });
}

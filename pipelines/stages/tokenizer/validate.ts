/**
 * Proof that a tokenizer works before it is written: `tokenizer.json` loads with
 * `@huggingface/tokenizers` and encodes a sample, every special token has an id
 * (`TOKENIZER_INVALID`), and the chat template renders with `@huggingface/jinja`
 * (`TOKENIZER_TEMPLATE`).
 * @module
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { CkptError } from "../../../errors.ts";
import { toPlain } from "../_pyjson.ts";
import { SPECIAL_KEYS, specialToken, tokenContent } from "./edits.ts";
import type { TokenizerDoc } from "./folder.ts";
import { renderTemplate } from "./render.ts";

/** Every special token the config and the map name, `additional_special_tokens` included. */
function specialTokens(doc: TokenizerDoc): Set<string> {
  const specials = new Set<string>();
  for (const k of SPECIAL_KEYS) {
    const c = specialToken(doc, k);
    if (c !== undefined) specials.add(c);
  }
  const extra = doc.config.get("additional_special_tokens");
  if (Array.isArray(extra)) {
    for (const e of extra) {
      const c = tokenContent(e);
      if (c !== undefined) specials.add(c);
    }
  }
  return specials;
}

/** Loads `tokenizer.json` (when the folder has one), encodes a sample, resolves the specials. */
export function checkTokenizerLoads(doc: TokenizerDoc): void {
  if (!doc.tokenizer) return;
  const file = doc.present.get("tokenizer.json") ?? doc.source;
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(doc.tokenizer, toPlain(doc.config) as object);
    tok.encode("Hello, world! 123 ünïcödé");
  } catch (cause) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot load "${doc.present.get("tokenizer.json")}" with @huggingface/tokenizers: ${
        (cause as Error).message
      }`,
      { file, cause },
    );
  }
  for (const s of specialTokens(doc)) {
    if (tok.token_to_id(s) === undefined) {
      throw new CkptError(
        "TOKENIZER_INVALID",
        `Cannot use special token "${s}": tokenizer.json has no id for it`,
        { file, details: { token: s } },
      );
    }
  }
}

/**
 * Renders the chat template (when there is one) on a short conversation, in a bounded worker
 * (`render.ts`: `TEMPLATE_TIMEOUT`, `TEMPLATE_TOO_LARGE`, `ABORTED` on `signal`).
 */
export async function checkTemplateRenders(doc: TokenizerDoc, signal?: AbortSignal): Promise<void> {
  if (doc.template === undefined) return;
  const file = doc.present.get("chat_template.jinja") ?? doc.present.get("tokenizer_config.json") ??
    doc.source;
  const out = await renderTemplate(doc.template, {
    messages: [
      { role: "user", content: "Hello" },
      { role: "assistant", content: "Hi there" },
      { role: "user", content: "How are you?" },
    ],
    add_generation_prompt: true,
    bos_token: tokenContent(doc.config.get("bos_token")) ?? "",
    eos_token: specialToken(doc, "eos_token") ?? "",
    pad_token: specialToken(doc, "pad_token") ?? "",
  }, { signal, file });
  if (!out.includes("How are you?")) {
    throw new CkptError(
      "TOKENIZER_TEMPLATE",
      `Cannot render the chat template of "${file}": the rendered text does not contain the last message`,
      { file },
    );
  }
}

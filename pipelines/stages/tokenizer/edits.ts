/**
 * The changes writeTokenizer can make, one function each. They work on a {@linkcode TokenizerDoc}
 * in memory (no file is read or written), keep `tokenizer.json`, `tokenizer_config.json` and
 * `special_tokens_map.json` consistent with each other, and return the names of the files they
 * changed (also added to `doc.changed`).
 * @module
 */
import { CkptError } from "../../../errors.ts";
import { isObject, type PyJson, toPlain } from "../_pyjson.ts";
import type { AddedTokenJson, TokenizerDoc } from "./folder.ts";
import { maxTokenId, tokenId } from "./vocab.ts";

/** The special-token keys of `tokenizer_config.json` and `special_tokens_map.json`. */
export const SPECIAL_KEYS = [
  "bos_token",
  "eos_token",
  "unk_token",
  "pad_token",
  "sep_token",
  "cls_token",
  "mask_token",
];

/** The text of a token entry: a string, or an AddedToken dict's `content`. */
export function tokenContent(v: PyJson | undefined): string | undefined {
  if (typeof v === "string") return v;
  if (isObject(v)) {
    const c = v.get("content");
    if (typeof c === "string") return c;
  }
  return undefined;
}

/** The special token `key` (`"eos_token"`) as the config, else the special tokens map, says. */
export function specialToken(doc: TokenizerDoc, key: string): string | undefined {
  return tokenContent(doc.config.get(key)) ?? tokenContent(doc.specialMap?.get(key));
}

function changed(doc: TokenizerDoc, ...names: string[]): string[] {
  for (const n of names) doc.changed.add(n);
  return names;
}

/** The `added_tokens_decoder` entry of a special token. */
function decoderEntry(content: string): Map<string, PyJson> {
  return new Map<string, PyJson>([
    ["content", content],
    ["lstrip", false],
    ["normalized", false],
    ["rstrip", false],
    ["single_word", false],
    ["special", true],
  ]);
}

/**
 * Makes `content` a special token in `tokenizer.json`: a new added token with the next free id, or
 * an existing added token marked special. Returns its id. `TOKENIZER_INVALID` when it is an
 * ordinary vocabulary entry.
 */
function addToTokenizerJson(doc: TokenizerDoc, added: PyJson[], content: string): number {
  const plain = doc.tokenizer!.added_tokens!;
  const id = tokenId(doc, content);
  if (id === undefined) {
    const next = (maxTokenId(doc) ?? -1) + 1;
    const entry = new Map<string, PyJson>([
      ["id", next],
      ["content", content],
      ["single_word", false],
      ["lstrip", false],
      ["rstrip", false],
      ["normalized", false],
      ["special", true],
    ]);
    added.push(entry);
    plain.push(toPlain(entry) as AddedTokenJson);
    return next;
  }
  const existing = added.find((t) => isObject(t) && t.get("content") === content);
  if (!isObject(existing)) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot add special token "${content}": it is an ordinary vocabulary entry (id ${id})`,
      { file: doc.present.get("tokenizer.json") ?? doc.source },
    );
  }
  existing.set("special", true);
  const p = plain.find((t) => t.content === content);
  if (p) p.special = true;
  return id;
}

/** `list` with every token of `tokens` it lacks appended. */
function withTokens(list: PyJson | undefined, tokens: readonly string[]): PyJson[] {
  const out: PyJson[] = Array.isArray(list) ? [...list] : [];
  for (const t of tokens) if (!out.some((e) => tokenContent(e) === t)) out.push(t);
  return out;
}

/**
 * Adds special tokens (ids after the highest one; existing added tokens are marked special) to
 * `tokenizer.json`'s `added_tokens`, `tokenizer_config.json`'s `added_tokens_decoder` and
 * `additional_special_tokens`, and the map's `additional_special_tokens`. `TOKENIZER_INVALID` when
 * there is no `tokenizer.json` with `added_tokens`, or a token is an ordinary vocabulary entry.
 */
export function addSpecialTokens(doc: TokenizerDoc, tokens: readonly string[]): string[] {
  const toAdd = tokens.filter((t, i, all) => all.indexOf(t) === i);
  if (toAdd.length === 0) return [];
  const added = doc.tokenizerTree?.get("added_tokens");
  if (!Array.isArray(added) || !Array.isArray(doc.tokenizer?.added_tokens)) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot add special tokens: "${doc.source}" has no tokenizer.json with added_tokens`,
      { file: doc.source },
    );
  }
  const cfg = doc.config;
  const decoder = cfg.get("added_tokens_decoder");
  const decoderMap = isObject(decoder) ? decoder : new Map<string, PyJson>();
  for (const content of toAdd) {
    decoderMap.set(String(addToTokenizerJson(doc, added, content)), decoderEntry(content));
  }
  // keep added_tokens_decoder ordered by id, as transformers writes it
  cfg.set("added_tokens_decoder", new Map([...decoderMap].sort((a, b) => +a[0] - +b[0])));
  cfg.set("additional_special_tokens", withTokens(cfg.get("additional_special_tokens"), toAdd));
  if (!doc.specialMap) return changed(doc, "tokenizer.json", "tokenizer_config.json");
  const map = doc.specialMap;
  map.set("additional_special_tokens", withTokens(map.get("additional_special_tokens"), toAdd));
  return changed(doc, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json");
}

/**
 * The pad token to set: `padToken` when it differs from the current one; with `padWithEos`, the
 * eos token when there is no pad token (HALOs' rule; `TOKENIZER_INVALID` without an eos token).
 * Undefined when nothing changes.
 */
export function choosePadToken(
  doc: TokenizerDoc,
  options: { padToken?: string | undefined; padWithEos?: boolean | undefined },
): string | undefined {
  const pad = specialToken(doc, "pad_token");
  if (options.padToken !== undefined) {
    return options.padToken !== pad ? options.padToken : undefined;
  }
  if (!options.padWithEos || pad !== undefined) return undefined;
  const eos = specialToken(doc, "eos_token");
  if (eos === undefined) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot use eos as pad token: "${doc.source}" defines no eos_token`,
      { file: doc.present.get("tokenizer_config.json") ?? doc.source },
    );
  }
  return eos;
}

/**
 * Sets the pad token in `tokenizer_config.json` and the special tokens map (in the same form,
 * string or AddedToken dict, as the map's eos entry). `TOKENIZER_INVALID` when `tokenizer.json`
 * has no id for it.
 */
export function setPadToken(doc: TokenizerDoc, pad: string): string[] {
  if (doc.tokenizer && tokenId(doc, pad) === undefined) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot set pad token "${pad}": it is not in the vocabulary (add it with addSpecialTokens)`,
      { file: doc.present.get("tokenizer.json") ?? doc.source },
    );
  }
  doc.config.set("pad_token", pad);
  const map = doc.specialMap;
  if (!map) return changed(doc, "tokenizer_config.json");
  const eosEntry = map.get("eos_token");
  if (isObject(eosEntry)) map.set("pad_token", new Map(eosEntry).set("content", pad));
  else map.set("pad_token", pad);
  return changed(doc, "tokenizer_config.json", "special_tokens_map.json");
}

/**
 * Sets the chat template when the folder has none (or always with `replace`): into
 * `chat_template.jinja` when the folder has that file, else into `tokenizer_config.json`.
 */
export function setChatTemplate(
  doc: TokenizerDoc,
  template: string,
  options: { replace?: boolean | undefined } = {},
): string[] {
  if (doc.template !== undefined && !options.replace) return [];
  if (template === doc.template) return [];
  doc.template = template;
  if (doc.present.has("chat_template.jinja")) {
    doc.rewritten.set("chat_template.jinja", new TextEncoder().encode(template));
    return changed(doc, "chat_template.jinja");
  }
  doc.config.set("chat_template", template);
  return changed(doc, "tokenizer_config.json");
}

/** `TOKENIZER_INVALID` when an edit changed `tokenizer_config.json` but the folder has none. */
export function checkConfigExists(doc: TokenizerDoc): void {
  if (doc.changed.has("tokenizer_config.json") && !doc.present.has("tokenizer_config.json")) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot change the tokenizer: "${doc.source}" has no tokenizer_config.json`,
      { file: doc.source },
    );
  }
}

/**
 * A tokenizer folder read into memory: which files it has, and the JSON the edits change
 * (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`) plus the chat template.
 * Reading checks only that the JSON parses and has the right shape.
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../../errors.ts";
import { inputReadError, readTextInput } from "../../../formats/read_text.ts";
import { asInt, isObject, parsePyJson, type PyJson } from "../_pyjson.ts";
import type { FileWitness } from "../_file_witness.ts";
import { knownByStat, knownHighestId, rememberByStat, rememberParsed } from "./_known_json.ts";
import { sha256Hex } from "../../hashing.ts";

/** Tokenizer and processor files copied when present (mergekit's list plus the vocab files). */
export const TOKENIZER_FILES: readonly string[] = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "tokenizer.model",
  "spiece.model",
  "sentencepiece.bpe.model",
  "vocab.json",
  "vocab.txt",
  "merges.txt",
  "chat_template.jinja",
  "chat_template.json",
  "preprocessor_config.json",
  "processor_config.json",
  "video_preprocessor_config.json",
];

/** Files whose presence marks a folder as holding a tokenizer. */
export const MARKERS = [
  "tokenizer.json",
  "tokenizer_config.json",
  "tokenizer.model",
  "vocab.json",
  "vocab.txt",
];

/** One entry of `tokenizer.json`'s `added_tokens`. */
export interface AddedTokenJson {
  /** Token id. */
  id: number;
  /** Token text. */
  content: string;
  /** True for special tokens. */
  special?: boolean;
  /** Other flags (`lstrip`, `normalized`, ...). */
  [k: string]: unknown;
}

/** The parts of `tokenizer.json` the stage reads. */
export interface TokenizerJson {
  /** Added tokens. */
  added_tokens?: AddedTokenJson[];
  /** The model; its vocab is a map (BPE, WordPiece, WordLevel) or a list (Unigram). */
  model?: { vocab?: Record<string, number> | [string, number][] };
  /** Everything else. */
  [k: string]: unknown;
}

/** A tokenizer folder in memory; the edits change it and record the files they changed. */
export interface TokenizerDoc {
  /** The folder. */
  source: string;
  /** Files found, by name, with their paths. */
  present: Map<string, string>;
  /**
   * `tokenizer.json` as `JSON.parse` reads it (lookups, validation), if present. A folder read
   * with {@linkcode readTokenizerFolder} parses it on first use when the same text parsed before.
   */
  tokenizer: TokenizerJson | undefined;
  /**
   * `tokenizer.json`'s text as read (what a worker loads when no edit changed it). A folder read
   * with {@linkcode readTokenizerFolder} decodes it on first use: a check passed before, a copy of
   * the file and a plan reused by the run never need it.
   */
  tokenizerText?: string | undefined;
  /** The sha256 (hex) of `tokenizer.json`'s bytes as read, when the folder has one. */
  tokenizerSha256?: string | undefined;
  /** The highest token id of `tokenizer.json` as read (before any edit). */
  tokenizerHighestId?: number | undefined;
  /** `tokenizer.json` as an order-keeping tree, read only when an edit must rewrite it. */
  tokenizerTree: Map<string, PyJson> | undefined;
  /** `tokenizer_config.json` (empty when the folder has none). */
  config: Map<string, PyJson>;
  /** `special_tokens_map.json`, if present and an object. */
  specialMap: Map<string, PyJson> | undefined;
  /** Highest id + 1 of `vocab.json`, when there is no `tokenizer.json`. */
  vocabJsonSize: number | undefined;
  /** The chat template in effect, if any. */
  template: string | undefined;
  /** New contents of files other than the three JSON files (`chat_template.jinja`). */
  rewritten: Map<string, Uint8Array>;
  /** Names of the files changed so far. */
  changed: Set<string>;
}

/**
 * What `stat` says of `path`, undefined when it does not exist; a folder that may not be searched
 * is `FS_PERMISSION`, not absent. `seen` records what was found.
 */
async function exists(path: string, seen?: FileWitness): Promise<Deno.FileInfo | undefined> {
  try {
    const info = await Deno.stat(path);
    seen?.saw(path, info);
    return info;
  } catch (cause) {
    if (cause instanceof Deno.errors.NotFound || cause instanceof Deno.errors.NotADirectory) {
      seen?.saw(path, undefined);
      return undefined;
    }
    throw inputReadError(cause, "TOKENIZER_MISSING", "tokenizer file", path);
  }
}

/**
 * The first of `sources` holding a tokenizer file; `TOKENIZER_MISSING` when none does. `seen`
 * records every path looked at.
 */
export async function findTokenizerFolder(
  sources: readonly string[],
  seen?: FileWitness,
): Promise<string> {
  for (const dir of sources) {
    for (const m of MARKERS) if (await exists(join(dir, m), seen)) return dir;
  }
  const folders = sources.map((s) => `"${s}"`).join(", ") || "(no folders)";
  throw new CkptError(
    "TOKENIZER_MISSING",
    `Cannot find a tokenizer: none of ${folders} holds ${MARKERS.join(", ")}`,
    { details: { sources } },
  );
}

async function readJson(path: string): Promise<PyJson> {
  return parsePyJson(
    await readTextInput(path, { code: "TOKENIZER_INVALID", what: "tokenizer file" }),
    path,
  );
}

/** The highest token id `tok` holds (vocab and added tokens); -1 when it holds none. */
export function highestId(tok: TokenizerJson): number {
  let m = -1;
  const vocab = tok.model?.vocab;
  if (Array.isArray(vocab)) m = vocab.length - 1;
  else if (vocab && typeof vocab === "object") {
    for (const v of Object.values(vocab)) if (typeof v === "number" && v > m) m = v;
  }
  const added = Array.isArray(tok.added_tokens) ? tok.added_tokens : [];
  for (const t of added) if (typeof t.id === "number" && t.id > m) m = t.id;
  return m;
}

/** `tokenizer.json` as read and parsed (`plain` undefined: the same text parsed before). */
interface ReadTokenizerJson {
  /** Its text, decoded on first call. */
  text: () => string;
  sha256: string;
  highestId: number;
  plain: TokenizerJson | undefined;
  tree: Map<string, PyJson> | undefined;
}

/**
 * `tokenizer.json` read and parsed; its order-keeping tree too when `tree` is true. Without
 * `tree`, a text known to parse (`_known_json.ts`) is not parsed again here, and a file whose
 * `stat` (`info`) is that of one known to parse is not even read: its text is read when first
 * asked for, and must still have the digest.
 */
async function readTokenizerJson(
  path: string,
  tree: boolean,
  stat: { info: Deno.FileInfo; at: number } | undefined,
): Promise<ReadTokenizerJson> {
  const byStat = !tree && stat ? await knownByStat(path, stat.info) : undefined;
  if (byStat) {
    const text = lazyText(path, byStat.sha256);
    return { text, ...byStat, plain: undefined, tree: undefined };
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (cause) {
    throw inputReadError(cause, "TOKENIZER_INVALID", "tokenizer file", path);
  }
  // the digest of the bytes, and the text decoded only when something reads it
  const sha256 = sha256Hex(bytes);
  let decoded: string | undefined;
  const text = () => (decoded ??= decodeTokenizerText(bytes));
  if (!tree) {
    const known = await knownHighestId(sha256);
    if (known !== undefined) {
      if (stat) await rememberByStat(path, stat.info, sha256, known, stat.at);
      return { text, sha256, highestId: known, plain: undefined, tree: undefined };
    }
  }
  let t: unknown;
  try {
    t = JSON.parse(text());
  } catch (cause) {
    throw new CkptError("JSON_PARSE", `Cannot parse "${path}": ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
  if (t === null || typeof t !== "object" || Array.isArray(t)) {
    throw new CkptError("TOKENIZER_INVALID", `Cannot read "${path}": not a JSON object`, {
      file: path,
    });
  }
  const plain = t as TokenizerJson;
  const id = highestId(plain);
  await rememberParsed(sha256, id);
  if (stat) await rememberByStat(path, stat.info, sha256, id, stat.at);
  return {
    text,
    sha256,
    highestId: id,
    plain,
    tree: tree ? parsePyJson(text(), path) as Map<string, PyJson> : undefined,
  };
}

/**
 * `tokenizer.json`'s text as readTextFile decodes it: UTF-8, invalid bytes replaced, a BOM kept
 * (JSON.parse refuses it, as transformers does).
 */
function decodeTokenizerText(bytes: Uint8Array): string {
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
}

/**
 * The text of the file at `path`, read and decoded on first call; `TOKENIZER_INVALID` when it
 * cannot be read or no longer has the digest `sha256`.
 */
function lazyText(path: string, sha256: string): () => string {
  let decoded: string | undefined;
  return () => {
    if (decoded !== undefined) return decoded;
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(path);
    } catch (cause) {
      throw inputReadError(cause, "TOKENIZER_INVALID", "tokenizer file", path);
    }
    if (sha256Hex(bytes) !== sha256) {
      throw new CkptError(
        "TOKENIZER_INVALID",
        `Cannot read "${path}": it changed since it was looked at`,
        { file: path },
      );
    }
    return decoded = decodeTokenizerText(bytes);
  };
}

/** Makes `doc.tokenizer` parse `text` on first use (and take an assigned value as usual). */
function parseOnFirstUse(doc: TokenizerDoc, text: () => string): void {
  let parsed: TokenizerJson | undefined;
  Object.defineProperty(doc, "tokenizer", {
    get: () => (parsed ??= JSON.parse(text()) as TokenizerJson),
    set: (v: TokenizerJson | undefined) => (parsed = v),
    enumerable: true,
    configurable: true,
  });
}

/** Makes `doc.tokenizerText` decode on first use. */
function decodeOnFirstUse(doc: TokenizerDoc, text: () => string): void {
  Object.defineProperty(doc, "tokenizerText", {
    get: text,
    enumerable: true,
    configurable: true,
  });
}

/** The chat template a folder defines: `chat_template.jinja`, else the config's (or its "default"). */
async function readTemplate(
  jinjaPath: string | undefined,
  config: Map<string, PyJson>,
): Promise<string | undefined> {
  if (jinjaPath) {
    return await readTextInput(jinjaPath, { code: "TOKENIZER_INVALID", what: "chat template" });
  }
  const t = config.get("chat_template");
  if (typeof t === "string") return t;
  let found: string | undefined;
  if (Array.isArray(t)) {
    for (const e of t) {
      if (isObject(e) && e.get("name") === "default" && typeof e.get("template") === "string") {
        found = e.get("template") as string;
      }
    }
  }
  return found;
}

/** Highest id + 1 in a `vocab.json` object. */
function vocabJsonSize(v: PyJson): number | undefined {
  if (!isObject(v)) return undefined;
  let m = -1;
  for (const x of v.values()) m = Math.max(m, asInt(x) ?? -1);
  return m + 1;
}

/**
 * Reads the tokenizer files of `source` (`TOKENIZER_FILES` plus `extraFiles`, when present).
 * `tree`: also read `tokenizer.json` as an order-keeping tree (an edit will rewrite it; it is big,
 * 11 MB for Qwen3). `JSON_PARSE`, `TOKENIZER_INVALID` for files that do not parse as objects.
 * `seen` records every path looked at (each before it is read).
 */
export async function readTokenizerFolder(
  source: string,
  options: { extraFiles?: readonly string[] | undefined; tree: boolean; seen?: FileWitness },
): Promise<TokenizerDoc> {
  const present = new Map<string, string>();
  let tokStat: { info: Deno.FileInfo; at: number } | undefined;
  for (const n of [...TOKENIZER_FILES, ...(options.extraFiles ?? [])]) {
    const p = join(source, n);
    const at = Date.now();
    const info = await exists(p, options.seen);
    if (!info) continue;
    present.set(n, p);
    if (n === "tokenizer.json") tokStat = { info, at };
  }
  const tokPath = present.get("tokenizer.json");
  const cfgPath = present.get("tokenizer_config.json");
  const mapPath = present.get("special_tokens_map.json");
  const tok = tokPath ? await readTokenizerJson(tokPath, options.tree, tokStat) : undefined;
  let config = new Map<string, PyJson>();
  if (cfgPath) {
    const c = await readJson(cfgPath);
    if (!isObject(c)) {
      throw new CkptError("TOKENIZER_INVALID", `Cannot read "${cfgPath}": not a JSON object`, {
        file: cfgPath,
      });
    }
    config = c;
  }
  const map = mapPath ? await readJson(mapPath) : undefined;
  const vocabPath = present.get("vocab.json");
  const doc: TokenizerDoc = {
    source,
    present,
    tokenizer: tok?.plain,
    tokenizerSha256: tok?.sha256,
    tokenizerHighestId: tok?.highestId,
    tokenizerTree: tok?.tree,
    config,
    specialMap: map !== undefined && isObject(map) ? map : undefined,
    vocabJsonSize: !tok && vocabPath ? vocabJsonSize(await readJson(vocabPath)) : undefined,
    template: await readTemplate(present.get("chat_template.jinja"), config),
    rewritten: new Map(),
    changed: new Set(),
  };
  if (tok) decodeOnFirstUse(doc, tok.text);
  if (tok && tok.plain === undefined) parseOnFirstUse(doc, tok.text);
  return doc;
}

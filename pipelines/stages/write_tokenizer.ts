/**
 * The writeTokenizer stage: copies a Hugging Face tokenizer into the checkpoint, byte for byte
 * unless told to change it, and proves it works.
 *
 * Source folder: the explicit `from` when given; otherwise the adapter folder of the last merge
 * (training may have added tokens; HALOs saves the tokenizer beside the adapter), then the model
 * folder. The first folder holding tokenizer files is used whole (files are never mixed between
 * folders).
 *
 * Changes (each keeps `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`
 * consistent; changed JSON is written as transformers writes it):
 * - `padToken` sets the pad token; `padWithEos` uses the eos token when there is no pad token
 *   (what HALOs does at load time).
 * - `chatTemplate` / `chatTemplateFile` set a chat template when none exists (or always with
 *   `replaceChatTemplate`): into `chat_template.jinja` when the source has that file, else into
 *   `tokenizer_config.json`.
 * - `addSpecialTokens` adds special tokens with the next free ids.
 *
 * Validation (before anything is written): `tokenizer.json` is loaded with
 * `@huggingface/tokenizers` and encodes a sample; every special token resolves to an id; the chat
 * template renders with `@huggingface/jinja`; the tokenizer's ids fit the embedding rows of the
 * current state dict and the config's `vocab_size` (`TOKENIZER_VOCAB` otherwise).
 *
 * @example Copying and validating a tokenizer folder
 * ```ts
 * import { prepareTokenizer } from "./write_tokenizer.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const tokenizer = {
 *   version: "1.0", truncation: null, padding: null,
 *   added_tokens: [{ id: 2, content: "</s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
 *   normalizer: null, pre_tokenizer: { type: "Whitespace" }, post_processor: null, decoder: null,
 *   model: { type: "WordLevel", vocab: { "<unk>": 0, "hi": 1, "</s>": 2 }, unk_token: "<unk>" },
 * };
 * await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(tokenizer));
 * await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify({ eos_token: "</s>" }));
 * const plan = await prepareTokenizer({ sources: [dir], padWithEos: true });
 * assert.equal(plan.vocabSize, 3);
 * assert.equal(plan.padToken, "</s>");
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { z } from "zod";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { CkptError } from "../../errors.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import type { Stage, StageContext } from "../stage.ts";
import { asInt, dumpPyJson, isObject, parsePyJson, type PyJson, toPlain } from "./_pyjson.ts";

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
const MARKERS = [
  "tokenizer.json",
  "tokenizer_config.json",
  "tokenizer.model",
  "vocab.json",
  "vocab.txt",
];

/** Sub-folder of extra chat templates (copied whole when present). */
const TEMPLATE_DIR = "additional_chat_templates";

/** The writeTokenizer options schema (unknown keys rejected). */
const writeTokenizerOptions = z.strictObject({
  /** Tokenizer folder; default: the adapter folder, then the model folder. */
  from: z.string().min(1).optional(),
  /** Set this pad token (its content, e.g. `"<|endoftext|>"`). */
  padToken: z.string().min(1).optional(),
  /** Use the eos token as pad token when the tokenizer has none (HALOs' rule). Default false. */
  padWithEos: z.boolean().default(false),
  /** Chat template text to set when none exists. */
  chatTemplate: z.string().min(1).optional(),
  /** File holding the chat template to set (relative to the config). */
  chatTemplateFile: z.string().min(1).optional(),
  /** Replace an existing chat template too. Default false. */
  replaceChatTemplate: z.boolean().default(false),
  /** Special tokens to add (content strings), with the next free ids. */
  addSpecialTokens: z.array(z.string().min(1)).default([]),
  /** Further file names to copy when present. */
  extraFiles: z.array(z.string().min(1)).default([]),
  /** Load the tokenizer and render the template before writing. Default true. */
  validate: z.boolean().default(true),
});

/** Options of the writeTokenizer stage, as a config writes them. */
export interface WriteTokenizerOptions {
  /** Tokenizer folder; default: the adapter folder, then the model folder. */
  from?: string | undefined;
  /** Set this pad token (its content, e.g. `"<|endoftext|>"`). */
  padToken?: string | undefined;
  /** Use the eos token as pad token when the tokenizer has none (HALOs' rule). Default false. */
  padWithEos?: boolean | undefined;
  /** Chat template text to set when none exists. */
  chatTemplate?: string | undefined;
  /** File holding the chat template to set (relative to the config). */
  chatTemplateFile?: string | undefined;
  /** Replace an existing chat template too. Default false. */
  replaceChatTemplate?: boolean | undefined;
  /** Special tokens to add (content strings), with the next free ids. */
  addSpecialTokens?: string[] | undefined;
  /** Further file names to copy when present. */
  extraFiles?: string[] | undefined;
  /** Load the tokenizer and render the template before writing. Default true. */
  validate?: boolean | undefined;
}

/** Arguments of {@linkcode prepareTokenizer}: resolved paths plus the stage options. */
export interface PrepareTokenizerArgs
  extends Omit<WriteTokenizerOptions, "from" | "chatTemplateFile"> {
  /** Candidate folders in order; the first holding tokenizer files is used. */
  sources: string[];
  /** Resolved chat template file, if any. */
  chatTemplatePath?: string;
  /** State dict whose embedding rows must hold every token id. */
  stateDict?: StateDict | undefined;
  /** Model config whose `vocab_size` must hold every token id. */
  modelConfig?: Record<string, unknown> | undefined;
}

/** One output file of the tokenizer plan. */
export interface TokenizerFile {
  /** Name relative to the output folder. */
  name: string;
  /** Copy from this path unchanged, or... */
  copyFrom?: string;
  /** ...write these bytes (a changed file). */
  bytes?: Uint8Array;
  /** Size in bytes. */
  size: number;
}

/** What {@linkcode prepareTokenizer} decided, validated, ready to write. */
export interface TokenizerPlan {
  /** Folder the tokenizer came from. */
  source: string;
  /** Files to write. */
  files: TokenizerFile[];
  /** Number of token ids (highest id + 1), undefined when it cannot be known (no tokenizer.json or vocab). */
  vocabSize: number | undefined;
  /** Pad token content after the changes, if any. */
  padToken: string | undefined;
  /** Names of the files changed. */
  changed: string[];
  /** True when a chat template exists (and rendered, when validating). */
  chatTemplate: boolean;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The parts of tokenizer.json the stage reads. */
interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  [k: string]: unknown;
}
interface TokenizerJson {
  added_tokens?: AddedTokenJson[];
  model?: { vocab?: Record<string, number> | [string, number][] };
  [k: string]: unknown;
}

async function readJson(path: string): Promise<PyJson> {
  return parsePyJson(await Deno.readTextFile(path), path);
}

function tokenContent(v: PyJson | undefined): string | undefined {
  if (typeof v === "string") return v;
  if (isObject(v)) {
    const c = v.get("content");
    if (typeof c === "string") return c;
  }
  return undefined;
}

const SPECIAL_KEYS = [
  "bos_token",
  "eos_token",
  "unk_token",
  "pad_token",
  "sep_token",
  "cls_token",
  "mask_token",
];

/** Rows of the input embedding (and output head) in `sd`, by the usual names. */
export function embeddingRows(sd: StateDict): { name: string; rows: number }[] {
  const out: { name: string; rows: number }[] = [];
  const pattern =
    /(^|\.)(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings|lm_head|embed_out|output)\.weight$/;
  for (const [name, ref] of sd) {
    if (pattern.test(name) && ref.shape.length === 2) out.push({ name, rows: ref.shape[0]! });
  }
  return out;
}

function textVocabSize(config: Record<string, unknown> | undefined): number | undefined {
  if (!config) return undefined;
  const v = config.vocab_size;
  if (typeof v === "number") return v;
  const text = config.text_config;
  if (text && typeof text === "object") {
    const t = (text as Record<string, unknown>).vocab_size;
    if (typeof t === "number") return t;
  }
  return undefined;
}

/**
 * Picks the source folder, applies the requested changes in memory, validates the result and
 * returns the files to write. Writes nothing; every problem is a coded error.
 */
export async function prepareTokenizer(args: PrepareTokenizerArgs): Promise<TokenizerPlan> {
  let source: string | undefined;
  for (const dir of args.sources) {
    for (const m of MARKERS) {
      if (await exists(join(dir, m))) {
        source = dir;
        break;
      }
    }
    if (source) break;
  }
  if (!source) {
    const folders = args.sources.map((s) => `"${s}"`).join(", ") || "(no folders)";
    throw new CkptError(
      "TOKENIZER_MISSING",
      `Cannot find a tokenizer: none of ${folders} holds ${MARKERS.join(", ")}`,
      { details: { sources: args.sources } },
    );
  }
  const names = [...TOKENIZER_FILES, ...(args.extraFiles ?? [])];
  const present = new Map<string, string>();
  for (const n of names) {
    const p = join(source, n);
    if (await exists(p)) present.set(n, p);
  }
  const changed = new Set<string>();
  const tokPath = present.get("tokenizer.json");
  const cfgPath = present.get("tokenizer_config.json");
  const mapPath = present.get("special_tokens_map.json");
  // tokenizer.json is big (11 MB for Qwen3): read it with JSON.parse for lookups and validation,
  // and as an order-keeping tree only when it must be rewritten.
  let tokJson: Map<string, PyJson> | undefined;
  let tokPlain: TokenizerJson | undefined;
  let cfg: Map<string, PyJson> = new Map();
  let specialMap: Map<string, PyJson> | undefined;
  const toAdd = (args.addSpecialTokens ?? []).filter((t, i, all) => all.indexOf(t) === i);
  if (tokPath) {
    const text = await Deno.readTextFile(tokPath);
    let t: unknown;
    try {
      t = JSON.parse(text);
    } catch (cause) {
      throw new CkptError("JSON_PARSE", `Cannot parse "${tokPath}": ${(cause as Error).message}`, {
        file: tokPath,
        cause,
      });
    }
    if (t === null || typeof t !== "object" || Array.isArray(t)) {
      throw new CkptError("TOKENIZER_INVALID", `Cannot read "${tokPath}": not a JSON object`, {
        file: tokPath,
      });
    }
    tokPlain = t as TokenizerJson;
    if (toAdd.length > 0) tokJson = parsePyJson(text, tokPath) as Map<string, PyJson>;
  }
  if (cfgPath) {
    const c = await readJson(cfgPath);
    if (!isObject(c)) {
      throw new CkptError("TOKENIZER_INVALID", `Cannot read "${cfgPath}": not a JSON object`, {
        file: cfgPath,
      });
    }
    cfg = c;
  }
  if (mapPath) {
    const m = await readJson(mapPath);
    if (isObject(m)) specialMap = m;
  }

  // --- added special tokens -------------------------------------------------------------------
  const added = tokJson?.get("added_tokens");
  const addedPlain: AddedTokenJson[] = Array.isArray(tokPlain?.added_tokens)
    ? tokPlain.added_tokens
    : [];
  const vocab = tokPlain?.model?.vocab;
  let vocabJsonSize: number | undefined;
  const idOf = (content: string): number | undefined => {
    for (const t of addedPlain) if (t.content === content) return t.id;
    if (Array.isArray(vocab)) { // Unigram: [[piece, score], ...]
      const at = vocab.findIndex((e) => Array.isArray(e) && e[0] === content);
      return at >= 0 ? at : undefined;
    }
    if (vocab && typeof vocab === "object" && Object.hasOwn(vocab, content)) {
      const id = (vocab as Record<string, unknown>)[content];
      return typeof id === "number" ? id : undefined;
    }
    return undefined;
  };
  const maxId = (): number | undefined => {
    if (!tokPlain) return vocabJsonSize === undefined ? undefined : vocabJsonSize - 1;
    let m = -1;
    if (Array.isArray(vocab)) m = vocab.length - 1;
    else if (vocab && typeof vocab === "object") {
      for (const v of Object.values(vocab)) if (typeof v === "number" && v > m) m = v;
    }
    for (const t of addedPlain) if (typeof t.id === "number" && t.id > m) m = t.id;
    return m;
  };
  if (!tokPlain && present.has("vocab.json")) {
    const v = await readJson(present.get("vocab.json")!);
    if (isObject(v)) {
      let m = -1;
      for (const x of v.values()) m = Math.max(m, asInt(x) ?? -1);
      vocabJsonSize = m + 1;
    }
  }
  if (toAdd.length > 0) {
    if (!tokJson || !tokPlain || !Array.isArray(added) || !Array.isArray(tokPlain.added_tokens)) {
      throw new CkptError(
        "TOKENIZER_INVALID",
        `Cannot add special tokens: "${source}" has no tokenizer.json with added_tokens`,
        { file: source },
      );
    }
    const decoder = cfg.get("added_tokens_decoder");
    const decoderMap = isObject(decoder) ? decoder : new Map<string, PyJson>();
    let extra = cfg.get("additional_special_tokens");
    const extraList: PyJson[] = Array.isArray(extra) ? [...extra] : [];
    for (const content of toAdd) {
      let id = idOf(content);
      const existing = added.find((t) => isObject(t) && t.get("content") === content) as
        | Map<string, PyJson>
        | undefined;
      if (id === undefined) {
        id = (maxId() ?? -1) + 1;
        const entry = new Map<string, PyJson>([
          ["id", id],
          ["content", content],
          ["single_word", false],
          ["lstrip", false],
          ["rstrip", false],
          ["normalized", false],
          ["special", true],
        ]);
        added.push(entry);
        addedPlain.push(toPlain(entry) as AddedTokenJson);
      } else if (existing) {
        existing.set("special", true);
        const p = addedPlain.find((t) => t.content === content);
        if (p) p.special = true;
      } else {
        throw new CkptError(
          "TOKENIZER_INVALID",
          `Cannot add special token "${content}": it is an ordinary vocabulary entry (id ${id})`,
          { file: tokPath ?? source },
        );
      }
      decoderMap.set(
        String(id),
        new Map<string, PyJson>([
          ["content", content],
          ["lstrip", false],
          ["normalized", false],
          ["rstrip", false],
          ["single_word", false],
          ["special", true],
        ]),
      );
      if (!extraList.some((e) => tokenContent(e) === content)) extraList.push(content);
    }
    // keep added_tokens_decoder ordered by id, as transformers writes it
    const sorted = new Map(
      [...decoderMap.entries()].sort((a, b) => Number(a[0]) - Number(b[0])),
    );
    cfg.set("added_tokens_decoder", sorted);
    extra = extraList;
    cfg.set("additional_special_tokens", extra);
    changed.add("tokenizer.json").add("tokenizer_config.json");
    if (specialMap) {
      const m = specialMap.get("additional_special_tokens");
      const list: PyJson[] = Array.isArray(m) ? [...m] : [];
      for (const content of toAdd) {
        if (!list.some((e) => tokenContent(e) === content)) list.push(content);
      }
      specialMap.set("additional_special_tokens", list);
      changed.add("special_tokens_map.json");
    }
  }

  // --- pad token ------------------------------------------------------------------------------
  let pad = tokenContent(cfg.get("pad_token")) ?? tokenContent(specialMap?.get("pad_token"));
  const eos = tokenContent(cfg.get("eos_token")) ?? tokenContent(specialMap?.get("eos_token"));
  let newPad: string | undefined;
  if (args.padToken !== undefined && args.padToken !== pad) newPad = args.padToken;
  else if (args.padToken === undefined && args.padWithEos && pad === undefined) {
    if (eos === undefined) {
      throw new CkptError(
        "TOKENIZER_INVALID",
        `Cannot use eos as pad token: "${source}" defines no eos_token`,
        { file: cfgPath ?? source },
      );
    }
    newPad = eos;
  }
  if (newPad !== undefined) {
    if (tokPlain && idOf(newPad) === undefined) {
      throw new CkptError(
        "TOKENIZER_INVALID",
        `Cannot set pad token "${newPad}": it is not in the vocabulary (add it with addSpecialTokens)`,
        { file: tokPath ?? source },
      );
    }
    cfg.set("pad_token", newPad);
    changed.add("tokenizer_config.json");
    if (specialMap) {
      // same form (string or AddedToken dict) as the map's eos entry
      const eosEntry = specialMap.get("eos_token");
      if (isObject(eosEntry)) {
        const copy = new Map(eosEntry);
        copy.set("content", newPad);
        specialMap.set("pad_token", copy);
      } else specialMap.set("pad_token", newPad);
      changed.add("special_tokens_map.json");
    }
    pad = newPad;
  }

  // --- chat template --------------------------------------------------------------------------
  let templateText: string | undefined;
  const jinjaPath = present.get("chat_template.jinja");
  if (jinjaPath) templateText = await Deno.readTextFile(jinjaPath);
  else if (typeof cfg.get("chat_template") === "string") {
    templateText = cfg.get("chat_template") as string;
  } else if (Array.isArray(cfg.get("chat_template"))) {
    for (const t of cfg.get("chat_template") as PyJson[]) {
      if (isObject(t) && t.get("name") === "default" && typeof t.get("template") === "string") {
        templateText = t.get("template") as string;
      }
    }
  }
  let newTemplate = args.chatTemplate;
  if (args.chatTemplatePath !== undefined) {
    try {
      newTemplate = await Deno.readTextFile(args.chatTemplatePath);
    } catch (cause) {
      throw new CkptError(
        "INPUT_MISSING",
        `Cannot read chat template "${args.chatTemplatePath}": it does not exist`,
        { file: args.chatTemplatePath, cause },
      );
    }
  }
  const extraFiles = new Map<string, Uint8Array>();
  if (newTemplate !== undefined && (templateText === undefined || args.replaceChatTemplate)) {
    if (newTemplate !== templateText) {
      if (jinjaPath) {
        extraFiles.set("chat_template.jinja", new TextEncoder().encode(newTemplate));
        changed.add("chat_template.jinja");
      } else {
        cfg.set("chat_template", newTemplate);
        changed.add("tokenizer_config.json");
      }
      templateText = newTemplate;
    }
  }
  if (changed.has("tokenizer_config.json") && !cfgPath) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot change the tokenizer: "${source}" has no tokenizer_config.json`,
      { file: source },
    );
  }

  // --- validation ---------------------------------------------------------------------------
  const vocabSize = (() => {
    const m = maxId();
    return m === undefined ? undefined : m + 1;
  })();
  if (args.validate ?? true) {
    if (tokPlain) {
      let tok: Tokenizer;
      try {
        tok = new Tokenizer(tokPlain, toPlain(cfg) as object);
        tok.encode("Hello, world! 123 ünïcödé");
      } catch (cause) {
        throw new CkptError(
          "TOKENIZER_INVALID",
          `Cannot load "${tokPath}" with @huggingface/tokenizers: ${(cause as Error).message}`,
          { file: tokPath ?? source, cause },
        );
      }
      const specials = new Set<string>();
      for (const k of SPECIAL_KEYS) {
        const c = tokenContent(cfg.get(k)) ?? tokenContent(specialMap?.get(k));
        if (c !== undefined) specials.add(c);
      }
      const extra = cfg.get("additional_special_tokens");
      if (Array.isArray(extra)) {
        for (const e of extra) {
          const c = tokenContent(e);
          if (c !== undefined) specials.add(c);
        }
      }
      for (const s of specials) {
        if (tok.token_to_id(s) === undefined) {
          throw new CkptError(
            "TOKENIZER_INVALID",
            `Cannot use special token "${s}": tokenizer.json has no id for it`,
            { file: tokPath ?? source, details: { token: s } },
          );
        }
      }
    }
    if (templateText !== undefined) {
      try {
        const tpl = new Template(templateText);
        const out = tpl.render({
          messages: [
            { role: "user", content: "Hello" },
            { role: "assistant", content: "Hi there" },
            { role: "user", content: "How are you?" },
          ],
          add_generation_prompt: true,
          bos_token: tokenContent(cfg.get("bos_token")) ?? "",
          eos_token: eos ?? "",
          pad_token: pad ?? "",
        });
        if (!out.includes("How are you?")) {
          throw new Error("the rendered text does not contain the last message");
        }
      } catch (cause) {
        throw new CkptError(
          "TOKENIZER_TEMPLATE",
          `Cannot render the chat template of "${source}": ${(cause as Error).message}`,
          { file: jinjaPath ?? cfgPath ?? source, cause },
        );
      }
    }
  }
  if (vocabSize !== undefined) {
    const limits: { what: string; rows: number }[] = [];
    if (args.stateDict) {
      for (const e of embeddingRows(args.stateDict)) {
        limits.push({ what: `embedding "${e.name}"`, rows: e.rows });
      }
    }
    const cv = textVocabSize(args.modelConfig);
    if (cv !== undefined) limits.push({ what: "config.json vocab_size", rows: cv });
    for (const l of limits) {
      if (vocabSize > l.rows) {
        throw new CkptError(
          "TOKENIZER_VOCAB",
          `Cannot use the tokenizer of "${source}": it has ${vocabSize} token ids but the ${l.what} has ${l.rows} rows`,
          {
            file: tokPath ?? source,
            details: { tokenizer: vocabSize, limit: l.rows, what: l.what },
          },
        );
      }
    }
  }

  // --- files ----------------------------------------------------------------------------------
  const enc = new TextEncoder();
  const files: TokenizerFile[] = [];
  for (const [name, path] of present) {
    let bytes: Uint8Array | undefined;
    if (changed.has(name)) {
      if (name === "tokenizer.json") {
        bytes = enc.encode(dumpPyJson(tokJson!, { indent: 2, ensureAscii: false }));
      } else if (name === "tokenizer_config.json") {
        bytes = enc.encode(
          dumpPyJson(cfg, { indent: 2, sortKeys: true, ensureAscii: false }) + "\n",
        );
      } else if (name === "special_tokens_map.json") {
        bytes = enc.encode(
          dumpPyJson(specialMap!, { indent: 2, sortKeys: true, ensureAscii: false }) + "\n",
        );
      } else bytes = extraFiles.get(name);
    }
    if (bytes) files.push({ name, bytes, size: bytes.byteLength });
    else files.push({ name, copyFrom: path, size: (await Deno.stat(path)).size });
  }
  const tdir = join(source, TEMPLATE_DIR);
  if (await exists(tdir)) {
    for await (const e of Deno.readDir(tdir)) {
      if (!e.isFile) continue;
      const p = join(tdir, e.name);
      files.push({
        name: `${TEMPLATE_DIR}/${e.name}`,
        copyFrom: p,
        size: (await Deno.stat(p)).size,
      });
    }
  }
  return {
    source,
    files,
    vocabSize,
    padToken: pad,
    changed: [...changed],
    chatTemplate: templateText !== undefined,
  };
}

/** Writes a {@linkcode TokenizerPlan} into `outDir` (copies unchanged files, writes changed ones). */
export async function writeTokenizerPlan(outDir: string, plan: TokenizerPlan): Promise<void> {
  for (const f of plan.files) {
    const dest = join(outDir, f.name);
    if (f.name.includes("/")) await Deno.mkdir(join(dest, ".."), { recursive: true });
    if (f.bytes) await Deno.writeFile(dest, f.bytes);
    else await Deno.copyFile(f.copyFrom!, dest);
  }
}

/** The writeTokenizer stage (config name `writeTokenizer`). */
export const writeTokenizerStage: Stage = {
  name: "writeTokenizer",
  summary:
    "copy and validate the tokenizer (adapter folder first, then base); pad, template, tokens",
  options: writeTokenizerOptions,
  /**
   * With an explicit `from`: finds the tokenizer files, reads their JSON and applies the requested
   * changes in memory (no loading, no template rendering, no vocabulary check against the weights),
   * so a missing or malformed tokenizer fails before any stage runs (`TOKENIZER_MISSING`,
   * `TOKENIZER_INVALID`, `JSON_PARSE`). Without `from` the folder comes from earlier stages; then
   * only a `chatTemplateFile` is checked (`INPUT_MISSING`).
   */
  async preflight(
    ctx: StageContext,
    options: z.output<typeof writeTokenizerOptions>,
  ): Promise<void> {
    const { from, chatTemplateFile, ...rest } = options;
    const chatTemplatePath = chatTemplateFile === undefined
      ? undefined
      : ctx.resolve(chatTemplateFile);
    if (from === undefined) {
      if (chatTemplatePath === undefined) return;
      try {
        await Deno.stat(chatTemplatePath);
      } catch (cause) {
        throw new CkptError(
          "INPUT_MISSING",
          `Cannot read chat template "${chatTemplatePath}": it does not exist`,
          { file: chatTemplatePath, cause },
        );
      }
      return;
    }
    await prepareTokenizer({
      ...rest,
      validate: false,
      sources: [ctx.resolve(from)],
      ...(chatTemplatePath === undefined ? {} : { chatTemplatePath }),
    });
  },
  async run(ctx: StageContext, options: z.output<typeof writeTokenizerOptions>): Promise<void> {
    const sources = options.from !== undefined
      ? [ctx.resolve(options.from)]
      : [ctx.adapterDir, ctx.modelDir].filter((d): d is string => d !== undefined);
    const { from: _from, chatTemplateFile, ...rest } = options;
    const plan = await prepareTokenizer({
      ...rest,
      sources,
      ...(chatTemplateFile === undefined
        ? {}
        : { chatTemplatePath: ctx.resolve(chatTemplateFile) }),
      stateDict: ctx.stateDict,
      modelConfig: ctx.modelConfig,
    });
    for (const f of plan.files) if (f.copyFrom) ctx.addInput(f.copyFrom, "tokenizer");
    ctx.report("writeTokenizer", {
      source: plan.source,
      files: plan.files.map((f) => ({ path: f.name, bytes: f.size })),
      changed: plan.changed,
      vocabSize: plan.vocabSize,
      padToken: plan.padToken,
      chatTemplate: plan.chatTemplate,
    });
    if (ctx.dryRun) return;
    await writeTokenizerPlan(ctx.outDir, plan);
    ctx.emit({
      type: "progress",
      stage: "writeTokenizer",
      done: plan.files.length,
      total: plan.files.length,
      unit: "files",
    });
  },
};

/**
 * {@linkcode prepareTokenizer}: picks the tokenizer folder, applies the requested edits in
 * memory, validates the result and lists the files to write (unchanged files are copied byte for
 * byte; changed JSON is written as transformers writes it). {@linkcode writeTokenizerPlan} writes
 * them.
 *
 * @example Copying and validating a tokenizer folder
 * ```ts
 * import { prepareTokenizer } from "./prepare.ts";
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
import { join } from "node:path";
import { readTextInput } from "../../../formats/read_text.ts";
import type { StateDict } from "../../../formats/state_dict.ts";
import { dumpPyJson } from "../_pyjson.ts";
import {
  addSpecialTokens,
  checkConfigExists,
  choosePadToken,
  setChatTemplate,
  setPadToken,
  specialToken,
} from "./edits.ts";
import { findTokenizerFolder, readTokenizerFolder, type TokenizerDoc } from "./folder.ts";
import type { WriteTokenizerOptions } from "./options.ts";
import { checkTemplateRenders, checkTokenizerLoads } from "./validate.ts";
import { checkVocabFits, tokenizerVocabSize } from "./vocab.ts";

/** Sub-folder of extra chat templates (copied whole when present). */
const TEMPLATE_DIR = "additional_chat_templates";

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
  /** Ends the chat template's rendering (`ABORTED`). */
  signal?: AbortSignal | undefined;
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

/** Applies the edits `args` asks for, in the order they were always applied. */
async function applyEdits(doc: TokenizerDoc, args: PrepareTokenizerArgs): Promise<void> {
  addSpecialTokens(doc, args.addSpecialTokens ?? []);
  const pad = choosePadToken(doc, args);
  if (pad !== undefined) setPadToken(doc, pad);
  const template = args.chatTemplatePath === undefined
    ? args.chatTemplate
    : await readTextInput(args.chatTemplatePath, { code: "INPUT_MISSING", what: "chat template" });
  if (template !== undefined) setChatTemplate(doc, template, { replace: args.replaceChatTemplate });
  checkConfigExists(doc);
}

/** The bytes of a changed file, as transformers writes it. */
function changedBytes(doc: TokenizerDoc, name: string): Uint8Array | undefined {
  const enc = new TextEncoder();
  const sorted = { indent: 2, sortKeys: true, ensureAscii: false };
  if (name === "tokenizer.json") {
    return enc.encode(dumpPyJson(doc.tokenizerTree!, { indent: 2, ensureAscii: false }));
  }
  if (name === "tokenizer_config.json") return enc.encode(dumpPyJson(doc.config, sorted) + "\n");
  if (name === "special_tokens_map.json") {
    return enc.encode(dumpPyJson(doc.specialMap!, sorted) + "\n");
  }
  return doc.rewritten.get(name);
}

/** The files to write: changed ones as bytes, the rest (and extra chat templates) copied. */
async function plannedFiles(doc: TokenizerDoc): Promise<TokenizerFile[]> {
  const files: TokenizerFile[] = [];
  for (const [name, path] of doc.present) {
    const bytes = doc.changed.has(name) ? changedBytes(doc, name) : undefined;
    if (bytes) files.push({ name, bytes, size: bytes.byteLength });
    else files.push({ name, copyFrom: path, size: (await Deno.stat(path)).size });
  }
  const tdir = join(doc.source, TEMPLATE_DIR);
  if (!(await Deno.stat(tdir).then(() => true, () => false))) return files;
  for await (const e of Deno.readDir(tdir)) {
    if (!e.isFile) continue;
    const p = join(tdir, e.name);
    files.push({ name: `${TEMPLATE_DIR}/${e.name}`, copyFrom: p, size: (await Deno.stat(p)).size });
  }
  return files;
}

/**
 * Picks the source folder, applies the requested changes in memory, validates the result and
 * returns the files to write. Writes nothing; every problem is a coded error.
 */
export async function prepareTokenizer(args: PrepareTokenizerArgs): Promise<TokenizerPlan> {
  const source = await findTokenizerFolder(args.sources);
  const doc = await readTokenizerFolder(source, {
    extraFiles: args.extraFiles,
    tree: (args.addSpecialTokens ?? []).length > 0,
  });
  await applyEdits(doc, args);
  if (args.validate ?? true) {
    await checkTokenizerLoads(doc, args.signal);
    await checkTemplateRenders(doc, args.signal);
  }
  const vocabSize = tokenizerVocabSize(doc);
  if (vocabSize !== undefined) {
    checkVocabFits(vocabSize, args, {
      source,
      file: doc.present.get("tokenizer.json") ?? source,
    });
  }
  return {
    source,
    files: await plannedFiles(doc),
    vocabSize,
    padToken: specialToken(doc, "pad_token"),
    changed: [...doc.changed],
    chatTemplate: doc.template !== undefined,
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

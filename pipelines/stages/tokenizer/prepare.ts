/**
 * {@linkcode prepareTokenizer}: picks the tokenizer folder, applies the requested edits in
 * memory, validates the result and lists the files to write (unchanged files are copied byte for
 * byte; changed JSON is written as transformers writes it). {@linkcode writeTokenizerPlan} writes
 * them. A preflight uses {@linkcode preflightTokenizer} (the checks started, not awaited; the plan
 * kept for its run) and the run {@linkcode preparedTokenizer} (that plan, when no file it looked at
 * changed).
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
import { FileWitness } from "../_file_witness.ts";
import { CkptError } from "../../../errors.ts";

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
async function applyEdits(
  doc: TokenizerDoc,
  args: PrepareTokenizerArgs,
  seen: FileWitness | undefined,
): Promise<void> {
  addSpecialTokens(doc, args.addSpecialTokens ?? []);
  const pad = choosePadToken(doc, args);
  if (pad !== undefined) setPadToken(doc, pad);
  if (args.chatTemplatePath !== undefined) await seen?.stat(args.chatTemplatePath);
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
async function plannedFiles(
  doc: TokenizerDoc,
  seen: FileWitness | undefined,
): Promise<TokenizerFile[]> {
  const stat = async (path: string) => {
    const info = await Deno.stat(path);
    seen?.saw(path, info);
    return info;
  };
  const files: TokenizerFile[] = [];
  for (const [name, path] of doc.present) {
    const bytes = doc.changed.has(name) ? changedBytes(doc, name) : undefined;
    if (bytes) files.push({ name, bytes, size: bytes.byteLength });
    else files.push({ name, copyFrom: path, size: (await stat(path)).size });
  }
  const tdir = join(doc.source, TEMPLATE_DIR);
  if (!(await stat(tdir).then(() => true, () => false))) {
    seen?.saw(tdir, undefined);
    return files;
  }
  for await (const e of Deno.readDir(tdir)) {
    if (!e.isFile) continue;
    const p = join(tdir, e.name);
    files.push({ name: `${TEMPLATE_DIR}/${e.name}`, copyFrom: p, size: (await stat(p)).size });
  }
  return files;
}

/** A plan made but not yet validated, with what the checks need. */
interface Draft {
  plan: TokenizerPlan;
  doc: TokenizerDoc;
  /** The file a vocabulary error names. */
  vocabFile: string;
}

/** Picks the folder, reads it, applies the edits and lists the files; no check yet. */
async function draftTokenizer(
  args: PrepareTokenizerArgs,
  seen: FileWitness | undefined,
): Promise<Draft> {
  const source = await findTokenizerFolder(args.sources, seen);
  const doc = await readTokenizerFolder(source, {
    extraFiles: args.extraFiles,
    tree: (args.addSpecialTokens ?? []).length > 0,
    ...(seen ? { seen } : {}),
  });
  await applyEdits(doc, args, seen);
  const plan: TokenizerPlan = {
    source,
    files: await plannedFiles(doc, seen),
    vocabSize: tokenizerVocabSize(doc),
    padToken: specialToken(doc, "pad_token"),
    changed: [...doc.changed],
    chatTemplate: doc.template !== undefined,
  };
  return { plan, doc, vocabFile: doc.present.get("tokenizer.json") ?? source };
}

/** The slow checks of a draft (workers): `tokenizer.json` loads, then the template renders. */
async function checkDraft(doc: TokenizerDoc, signal: AbortSignal | undefined): Promise<void> {
  await checkTokenizerLoads(doc, signal);
  await checkTemplateRenders(doc, signal);
}

/** `TOKENIZER_VOCAB` unless the plan's ids fit `args`' state dict and model config. */
function checkPlanVocab(draft: Omit<Draft, "doc">, args: PrepareTokenizerArgs): void {
  const { plan, vocabFile } = draft;
  if (plan.vocabSize === undefined) return;
  checkVocabFits(plan.vocabSize, args, { source: plan.source, file: vocabFile });
}

/**
 * Picks the source folder, applies the requested changes in memory, validates the result and
 * returns the files to write. Writes nothing; every problem is a coded error.
 */
export async function prepareTokenizer(args: PrepareTokenizerArgs): Promise<TokenizerPlan> {
  const draft = await draftTokenizer(args, undefined);
  if (args.validate ?? true) await checkDraft(draft.doc, args.signal);
  checkPlanVocab(draft, args);
  return draft.plan;
}

/** A plan a preflight made, kept for the run: what it saw, and its checks. */
interface KeptPlan {
  plan: TokenizerPlan;
  vocabFile: string;
  seen: FileWitness;
  /** The checks, started by the preflight (resolved when none were asked for). */
  checked: Promise<void>;
}

/**
 * Plans preflights made, per run (the stage's context, as writeOptim keeps its loads), by
 * {@linkcode planKey}: dropped with the run.
 */
const keptByRun = new WeakMap<object, Map<string, KeptPlan>>();

/** What a plan depends on besides the files: the sources and every option (not the model). */
function planKey(args: PrepareTokenizerArgs): string {
  const { stateDict: _s, modelConfig: _m, signal: _g, ...rest } = args;
  const entries = Object.entries(rest).filter(([, v]) => v !== undefined);
  return JSON.stringify(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * The preflight half of {@linkcode prepareTokenizer}: reads, edits and plans at once (coded
 * errors as it does) and starts the checks without waiting for them; resolves to the plan and
 * `checked`, the checks' promise (it rejects with their coded error, `ABORTED` on `signal`). With
 * a `run` (the stage's context), the plan is kept for it, with the state of every file it looked
 * at, for {@linkcode preparedTokenizer} in the same run.
 */
export async function preflightTokenizer(
  args: PrepareTokenizerArgs,
  run?: object,
): Promise<{ plan: TokenizerPlan; checked: Promise<void> }> {
  // what the plan looked at is recorded only when it is kept for a run
  const seen = run === undefined ? undefined : new FileWitness();
  const draft = await draftTokenizer(args, seen);
  checkPlanVocab(draft, args);
  const checked = args.validate ?? true ? checkDraft(draft.doc, args.signal) : Promise.resolve();
  if (run !== undefined && seen !== undefined) {
    const key = planKey(args);
    const entry: KeptPlan = { plan: draft.plan, vocabFile: draft.vocabFile, seen, checked };
    const kept = keptByRun.get(run) ?? new Map<string, KeptPlan>();
    keptByRun.set(run, kept);
    kept.set(key, entry);
    checked.catch(() => {
      if (kept.get(key) === entry) kept.delete(key);
    });
  }
  return { plan: draft.plan, checked };
}

/**
 * The run's {@linkcode prepareTokenizer}: the plan the preflight of the same `run` made with the
 * same sources and options, when every file it looked at still has the same device, inode, size,
 * modification and change times (by `stat`, nothing read again), after its checks passed;
 * otherwise prepared again. The checks against `args`' state dict and model config always run.
 */
export async function preparedTokenizer(
  args: PrepareTokenizerArgs,
  run?: object,
): Promise<TokenizerPlan> {
  const key = planKey(args);
  const kept = run === undefined ? undefined : keptByRun.get(run);
  const entry = kept?.get(key);
  if (kept !== undefined && entry !== undefined) {
    kept.delete(key);
    if (await entry.seen.unchanged()) {
      try {
        await entry.checked;
      } catch (err) {
        // another caller's checks were stopped: check again with this one's signal
        if (!(err instanceof CkptError && err.code === "ABORTED") || args.signal?.aborted) {
          throw err;
        }
        return await prepareTokenizer(args);
      }
      checkPlanVocab(entry, args);
      return entry.plan;
    }
  }
  return await prepareTokenizer(args);
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

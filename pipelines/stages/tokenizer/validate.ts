/**
 * Proof that a tokenizer works before it is written: `tokenizer.json` loads with
 * `@huggingface/tokenizers` and encodes a sample, every special token has an id
 * (`TOKENIZER_INVALID`), and the chat template renders with `@huggingface/jinja`
 * (`TOKENIZER_TEMPLATE`). A check whose exact inputs passed before (in this process, or in an
 * earlier one: `_check_cache.ts`) passes without a worker; only passes are remembered.
 * @module
 */
import { createHash } from "node:crypto";
import { CkptError } from "../../../errors.ts";
import { toPlain } from "../_pyjson.ts";
import { SPECIAL_KEYS, specialToken, tokenContent } from "./edits.ts";
import type { TokenizerDoc } from "./folder.ts";
import {
  renderTemplate,
  TEMPLATE_HEAP_LIMIT_MB,
  TEMPLATE_MAX_OUTPUT,
  TEMPLATE_TIME_LIMIT_MS,
} from "./render.ts";
import { runBounded, type WorkerFailure } from "./_bounded_worker.ts";
import { passedBefore, rememberPass } from "./_check_cache.ts";
import denoJson from "../../../deno.json" with { type: "json" };

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

/** How long loading `tokenizer.json` may take (a 250k-token one takes a few seconds). */
export const TOKENIZER_TIME_LIMIT_MS = 120_000;
/** The heap loading `tokenizer.json` may use, in MiB (a 250k-token one needs well under 1 GiB). */
export const TOKENIZER_HEAP_LIMIT_MB = 4096;

/**
 * Digests of the inputs whose check passed in this process: the run of writeTokenizer may repeat
 * its preflight's checks on the same bytes, and a large tokenizer takes most of a second to load.
 * Only passes are kept (a failure is checked again); the set is bounded.
 */
const passed = new Set<string>();
const PASSED_MAX = 64;
/** The checks running now, by digest: a second caller with the same inputs shares the first's. */
const running = new Map<string, Promise<void>>();

/** How many checks ran in a worker in this process (not remembered ones): for tests. */
export const checksRun: { tokenizer: number; template: number } = { tokenizer: 0, template: 0 };

/**
 * What a check's outcome depends on besides its inputs: the libraries that run it, ckpt, the
 * runtime and the limits it runs under (part of every digest, so a cached pass of another
 * version or other limits does not count).
 */
const CHECKER = JSON.stringify([
  `${denoJson.name}@${denoJson.version}`,
  denoJson.imports["@huggingface/tokenizers"],
  denoJson.imports["@huggingface/jinja"],
  `deno ${Deno.version.deno}`,
  [TOKENIZER_TIME_LIMIT_MS, TOKENIZER_HEAP_LIMIT_MB],
  [TEMPLATE_TIME_LIMIT_MS, TEMPLATE_HEAP_LIMIT_MB, TEMPLATE_MAX_OUTPUT],
]);

function inputDigest(kind: string, parts: readonly string[]): string {
  const h = createHash("sha256").update(kind).update(`\0${CHECKER}`);
  for (const p of parts) h.update(`\0${p.length}\0`).update(p);
  return h.digest("hex");
}

function isAbort(err: unknown): boolean {
  return err instanceof CkptError && err.code === "ABORTED";
}

/**
 * Runs `check` unless the same inputs passed before, in this process or (the persistent cache,
 * `_check_cache.ts`) in an earlier one; remembers a pass in both. A caller that comes while the
 * same check runs shares it (and checks again itself when the first caller's signal ended it).
 */
async function once(
  key: string,
  check: () => Promise<void>,
  signal: AbortSignal | undefined,
): Promise<void> {
  for (;;) {
    if (passed.has(key)) return;
    const shared = running.get(key);
    if (shared === undefined) break;
    try {
      return await shared;
    } catch (err) {
      if (!isAbort(err) || signal?.aborted) throw err;
      if (running.get(key) === shared) running.delete(key);
    }
  }
  const work = (async () => {
    if (!(await passedBefore(key))) {
      await check();
      await rememberPass(key);
    }
    if (passed.size >= PASSED_MAX) passed.clear();
    passed.add(key);
  })();
  running.set(key, work);
  try {
    await work;
  } finally {
    running.delete(key);
  }
}

/**
 * Loads `tokenizer.json` (when the folder has one) in a worker thread, encodes a sample, resolves
 * the specials (`TOKENIZER_INVALID`); an abort ends the worker (`ABORTED`). The main thread stays
 * free while a large tokenizer loads. Inputs that passed before (in this process or, through the
 * persistent cache, an earlier one) pass without loading again; a caller that comes while the
 * same inputs load waits for that load.
 */
export async function checkTokenizerLoads(doc: TokenizerDoc, signal?: AbortSignal): Promise<void> {
  // (the digest first: reading `doc.tokenizerText` decodes the text, `doc.tokenizer` parses it)
  const unchanged = !doc.changed.has("tokenizer.json");
  const readDigest = unchanged ? doc.tokenizerSha256 : undefined;
  let textKey: string;
  let text: () => string;
  if (readDigest !== undefined) {
    // the text as read goes into the key by its digest; it is decoded only if the check runs
    textKey = `sha256:${readDigest}`;
    text = () => doc.tokenizerText!;
  } else {
    const t = unchanged && doc.tokenizerText !== undefined
      ? doc.tokenizerText
      : doc.tokenizer
      ? JSON.stringify(doc.tokenizer)
      : undefined;
    if (t === undefined) return;
    textKey = t;
    text = () => t;
  }
  const file = doc.present.get("tokenizer.json") ?? doc.source;
  const config = toPlain(doc.config);
  const specials = [...specialTokens(doc)];
  const key = inputDigest("tokenizer", [textKey, JSON.stringify(config), ...specials]);
  await once(key, () => loadInWorker(file, { text: text(), config, specials }, signal), signal);
}

/** The worker run of {@linkcode checkTokenizerLoads}: throws the coded error of a failure. */
async function loadInWorker(
  file: string,
  data: { text: string; config: unknown; specials: string[] },
  signal: AbortSignal | undefined,
): Promise<void> {
  checksRun.tokenizer++;
  const invalid = (message: string, cause?: unknown) =>
    new CkptError(
      "TOKENIZER_INVALID",
      `Cannot load "${file}" with @huggingface/tokenizers: ${message}`,
      { file, cause },
    );
  const reply = await runBounded<{ ok: boolean; missing?: string; message?: string }>(
    new URL("./_tokenizer_worker.ts", import.meta.url),
    data,
    { timeLimitMs: TOKENIZER_TIME_LIMIT_MS, heapLimitMb: TOKENIZER_HEAP_LIMIT_MB, signal },
    (failure: WorkerFailure) =>
      failure.kind === "aborted"
        ? new CkptError("ABORTED", `Cannot load "${file}": aborted`, { file })
        : failure.kind === "timeout"
        ? invalid(`it took longer than ${TOKENIZER_TIME_LIMIT_MS} ms`)
        : failure.kind === "memory"
        ? invalid(`it needed more than the ${TOKENIZER_HEAP_LIMIT_MB} MiB memory limit`)
        : invalid(failure.message, failure.cause),
  );
  if (reply.missing !== undefined) {
    throw new CkptError(
      "TOKENIZER_INVALID",
      `Cannot use special token "${reply.missing}": tokenizer.json has no id for it`,
      { file, details: { token: reply.missing } },
    );
  }
  if (!reply.ok) throw invalid(reply.message ?? "unknown error");
}

/**
 * Renders the chat template (when there is one) on a short conversation, in a bounded worker
 * (`render.ts`: `TEMPLATE_TIMEOUT`, `TEMPLATE_TOO_LARGE`, `ABORTED` on `signal`).
 */
export async function checkTemplateRenders(doc: TokenizerDoc, signal?: AbortSignal): Promise<void> {
  if (doc.template === undefined) return;
  const file = doc.present.get("chat_template.jinja") ?? doc.present.get("tokenizer_config.json") ??
    doc.source;
  const template = doc.template;
  const context = {
    messages: [
      { role: "user", content: "Hello" },
      { role: "assistant", content: "Hi there" },
      { role: "user", content: "How are you?" },
    ],
    add_generation_prompt: true,
    bos_token: tokenContent(doc.config.get("bos_token")) ?? "",
    eos_token: specialToken(doc, "eos_token") ?? "",
    pad_token: specialToken(doc, "pad_token") ?? "",
  };
  const key = inputDigest("template", [template, JSON.stringify(context)]);
  await once(key, async () => {
    checksRun.template++;
    const out = await renderTemplate(template, context, { signal, file });
    if (!out.includes("How are you?")) {
      throw new CkptError(
        "TOKENIZER_TEMPLATE",
        `Cannot render the chat template of "${file}": the rendered text does not contain the last message`,
        { file },
      );
    }
  }, signal);
}

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
 * The work happens in `tokenizer/`: `folder.ts` reads the folder, `edits.ts` holds one small
 * in-memory function per change, `validate.ts` the checks, `vocab.ts` the id counting,
 * `prepare.ts` puts them in order.
 * @module
 */
import { readTextInput } from "../../formats/read_text.ts";
import { defineStage, type Stage } from "../stage.ts";
import { preflightTokenizer, preparedTokenizer, writeTokenizerPlan } from "./tokenizer/prepare.ts";
import { writeTokenizerOptions } from "./tokenizer/options.ts";

export { TOKENIZER_FILES } from "./tokenizer/folder.ts";
export { embeddingRows } from "./tokenizer/vocab.ts";
export {
  prepareTokenizer,
  type PrepareTokenizerArgs,
  type TokenizerFile,
  type TokenizerPlan,
  writeTokenizerPlan,
} from "./tokenizer/prepare.ts";
export type { WriteTokenizerOptions } from "./tokenizer/options.ts";

/** The writeTokenizer stage (config name `writeTokenizer`). */
export const writeTokenizerStage: Stage = defineStage({
  name: "writeTokenizer",
  summary:
    "copy and validate the tokenizer (adapter folder first, then base); pad, template, tokens",
  options: writeTokenizerOptions,
  split: "one-part",
  /**
   * Finds the tokenizer files the run will use (`from`, else the adapter's folder then the model's,
   * as the earlier stages' preflights found them), reads them, applies the requested changes in
   * memory, so a missing, unreadable or malformed folder fails before any stage runs
   * (`TOKENIZER_MISSING`, `TOKENIZER_INVALID`, `JSON_PARSE`, `FS_PERMISSION`). Then it starts
   * the slow checks (loading `tokenizer.json` with `@huggingface/tokenizers`, rendering the chat
   * template; `TOKENIZER_INVALID`, `TOKENIZER_TEMPLATE`, `TEMPLATE_TIMEOUT`, `TEMPLATE_TOO_LARGE`)
   * and hands them to the runner (`ctx.defer`): the stages run meanwhile, a failure ends the run
   * at once, and the output is finished only after they passed (outside the runner it awaits
   * them). The plan is kept for the run. Only the vocabulary check against the weights waits for
   * the run. With no folder known (no gatherShards, no `from`), only a `chatTemplateFile` is read.
   */
  async preflight(ctx, options) {
    const { from, chatTemplateFile, ...rest } = options;
    const chatTemplatePath = chatTemplateFile === undefined
      ? undefined
      : ctx.resolve(chatTemplateFile);
    const sources = from !== undefined
      ? [ctx.resolve(from)]
      : [ctx.adapterDir, ctx.modelDir].filter((d): d is string => d !== undefined);
    if (sources.length === 0) {
      if (chatTemplatePath !== undefined) {
        await readTextInput(chatTemplatePath, { code: "INPUT_MISSING", what: "chat template" });
      }
      return;
    }
    const { checked } = await preflightTokenizer({
      ...rest,
      sources,
      ...(chatTemplatePath === undefined ? {} : { chatTemplatePath }),
      signal: ctx.signal,
    }, ctx);
    if (ctx.defer) ctx.defer(checked);
    else await checked;
  },
  /**
   * Uses the plan its preflight made in this run when the sources and options are the same and
   * no file it looked at changed (by `stat`: device, inode, size, modification and change times),
   * after its checks passed; otherwise prepares again, checks included. Then checks the ids fit
   * the state dict and `vocab_size` (`TOKENIZER_VOCAB`) and writes the files.
   */
  async run(ctx, options) {
    const sources = options.from !== undefined
      ? [ctx.resolve(options.from)]
      : [ctx.adapterDir, ctx.modelDir].filter((d): d is string => d !== undefined);
    const { from: _from, chatTemplateFile, ...rest } = options;
    const plan = await preparedTokenizer({
      ...rest,
      sources,
      ...(chatTemplateFile === undefined
        ? {}
        : { chatTemplatePath: ctx.resolve(chatTemplateFile) }),
      stateDict: ctx.stateDict,
      modelConfig: ctx.modelConfig,
      signal: ctx.signal,
    }, ctx);
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
});

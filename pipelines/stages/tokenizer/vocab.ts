/**
 * Token ids of a tokenizer in memory: the id of a token, how many ids there are, and whether they
 * all fit the model's embedding rows and `vocab_size` (`TOKENIZER_VOCAB`).
 * @module
 */
import { CkptError } from "../../../errors.ts";
import type { StateDict } from "../../../formats/state_dict.ts";
import { highestId, type TokenizerDoc } from "./folder.ts";

/** The id of `content` in `tokenizer.json` (added tokens first, then the vocab), if any. */
export function tokenId(doc: TokenizerDoc, content: string): number | undefined {
  const added = doc.tokenizer?.added_tokens;
  if (Array.isArray(added)) { for (const t of added) if (t.content === content) return t.id; }
  const vocab = doc.tokenizer?.model?.vocab;
  if (Array.isArray(vocab)) { // Unigram: [[piece, score], ...]
    const at = vocab.findIndex((e) => Array.isArray(e) && e[0] === content);
    return at >= 0 ? at : undefined;
  }
  if (vocab && typeof vocab === "object" && Object.hasOwn(vocab, content)) {
    const id = (vocab as Record<string, unknown>)[content];
    return typeof id === "number" ? id : undefined;
  }
  return undefined;
}

/** The highest token id, undefined when it cannot be known (no tokenizer.json, no vocab.json). */
export function maxTokenId(doc: TokenizerDoc): number | undefined {
  if (doc.tokenizerHighestId !== undefined && !doc.changed.has("tokenizer.json")) {
    return doc.tokenizerHighestId; // as read: no need to parse a text known to parse
  }
  const tok = doc.tokenizer;
  if (!tok) return doc.vocabJsonSize === undefined ? undefined : doc.vocabJsonSize - 1;
  return highestId(tok);
}

/** Number of token ids (highest id + 1), undefined when it cannot be known. */
export function tokenizerVocabSize(doc: TokenizerDoc): number | undefined {
  const m = maxTokenId(doc);
  return m === undefined ? undefined : m + 1;
}

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

/** `vocab_size` of a model config (or of its `text_config`). */
function configVocabSize(config: Record<string, unknown> | undefined): number | undefined {
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
 * `TOKENIZER_VOCAB` when `vocabSize` token ids do not fit the embedding rows of `stateDict` or the
 * `vocab_size` of `modelConfig`.
 */
export function checkVocabFits(
  vocabSize: number,
  model: { stateDict?: StateDict | undefined; modelConfig?: Record<string, unknown> | undefined },
  where: { source: string; file: string },
): void {
  const limits: { what: string; rows: number }[] = [];
  if (model.stateDict) {
    for (const e of embeddingRows(model.stateDict)) {
      limits.push({ what: `embedding "${e.name}"`, rows: e.rows });
    }
  }
  const cv = configVocabSize(model.modelConfig);
  if (cv !== undefined) limits.push({ what: "config.json vocab_size", rows: cv });
  for (const l of limits) {
    if (vocabSize > l.rows) {
      throw new CkptError(
        "TOKENIZER_VOCAB",
        `Cannot use the tokenizer of "${where.source}": it has ${vocabSize} token ids but the ${l.what} has ${l.rows} rows`,
        { file: where.file, details: { tokenizer: vocabSize, limit: l.rows, what: l.what } },
      );
    }
  }
}

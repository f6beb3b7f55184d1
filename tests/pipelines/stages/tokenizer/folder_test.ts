/**
 * `readTokenizerFolder()` parses a `tokenizer.json` whose text parsed before only when something
 * uses the parsed tree: the highest id is known without it (`_known_json.ts`).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { readTokenizerFolder } from "../../../../pipelines/stages/tokenizer/folder.ts";
import { prepareTokenizer } from "../../../../pipelines/stages/tokenizer/prepare.ts";
import { tokenizerVocabSize } from "../../../../pipelines/stages/tokenizer/vocab.ts";
import { withCacheDir } from "../../../_helpers/cache_dir.ts";
import { withTempDir } from "../../../_helpers/tmp.ts";
import { smallFolder } from "./_small_tokenizer.ts";

/** The lengths of the texts `JSON.parse` was given while `fn` ran. */
async function parsed<T>(fn: () => Promise<T>): Promise<{ result: T; lengths: number[] }> {
  const original = JSON.parse;
  const lengths: number[] = [];
  JSON.parse = ((text: string, reviver?: (k: string, v: unknown) => unknown) => {
    lengths.push(text.length);
    return original(text, reviver);
  }) as typeof JSON.parse;
  try {
    return { result: await fn(), lengths };
  } finally {
    JSON.parse = original;
  }
}

Deno.test("`readTokenizerFolder()` parses a tokenizer.json text it parsed before only when the tree is used", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "lazy");
      const size = (await Deno.stat(join(src, "tokenizer.json"))).size;
      const first = await parsed(() => readTokenizerFolder(src, { tree: false }));
      assert.ok(first.lengths.includes(size), String(first.lengths));
      const again = await parsed(() => readTokenizerFolder(src, { tree: false }));
      assert.equal(again.lengths.includes(size), false, String(again.lengths));
      // the same facts, and the same tree once asked for
      assert.equal(tokenizerVocabSize(again.result), 3);
      assert.equal(tokenizerVocabSize(again.result), tokenizerVocabSize(first.result));
      const used = await parsed(() => Promise.resolve(again.result.tokenizer));
      assert.deepEqual(used.lengths, [size]);
      assert.deepEqual(used.result, first.result.tokenizer);
    })
  );
});

Deno.test("a tokenizer read without parsing still takes edits that look up its tokens", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "lookup");
      await readTokenizerFolder(src, { tree: false });
      const plan = await prepareTokenizer({ sources: [src], padToken: "</s>" });
      assert.equal(plan.padToken, "</s>");
      assert.equal(plan.vocabSize, 3);
      await assert.rejects(
        () => prepareTokenizer({ sources: [src], padToken: "<|nope|>" }),
        (e: Error & { code?: string }) => e.code === "TOKENIZER_INVALID",
      );
    })
  );
});

Deno.test("`readTokenizerFolder()` digests tokenizer.json's bytes and decodes its text only when it is read, as readTextFile does", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "bom");
      const path = join(src, "tokenizer.json");
      await readTokenizerFolder(src, { tree: false }); // parsed once: the next read needs no parse
      // the same text after a BOM: other bytes, so read (and refused) anew
      const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...await Deno.readFile(path)]);
      await Deno.writeFile(path, bytes);
      await assert.rejects(
        () => readTokenizerFolder(src, { tree: false }),
        (e: Error & { code?: string }) => e.code === "JSON_PARSE",
        "a BOM is kept, and JSON.parse refuses it, as transformers' json.load does",
      );
      await Deno.writeFile(path, bytes.subarray(3));
      const doc = await readTokenizerFolder(src, { tree: false });
      const digest = createHash("sha256").update(bytes.subarray(3)).digest("hex");
      assert.equal(doc.tokenizerSha256, digest);
      const decoded = Object.getOwnPropertyDescriptor(doc, "tokenizerText");
      assert.equal(typeof decoded?.get, "function", "decoded on first use, not when read");
      assert.equal(doc.tokenizerText, await Deno.readTextFile(path), "as readTextFile decodes it");
    })
  );
});

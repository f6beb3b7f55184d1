/**
 * A `tokenizer.json` that parsed is recorded by its `stat` (`_known_json.ts`), so the next
 * preflight needs not read it; a record never outlives a change of the file.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { sha256Hex as sha256 } from "../../../../pipelines/hashing.ts";
import { readTokenizerFolder } from "../../../../pipelines/stages/tokenizer/folder.ts";
import {
  knownByStat,
  rememberByStat,
  SETTLED_MS,
} from "../../../../pipelines/stages/tokenizer/_known_json.ts";
import { tokenizerVocabSize } from "../../../../pipelines/stages/tokenizer/vocab.ts";
import { withCacheDir } from "../../../_helpers/cache_dir.ts";
import { withTempDir } from "../../../_helpers/tmp.ts";
import { smallFolder } from "./_small_tokenizer.ts";

/** The paths `Deno.readFile` and `Deno.readFileSync` were given while `fn` ran. */
async function reads<T>(fn: () => Promise<T>): Promise<{ result: T; paths: string[] }> {
  const { readFile, readFileSync } = Deno;
  const paths: string[] = [];
  Object.assign(Deno, {
    readFile: (p: string, o?: Deno.ReadFileOptions) => (paths.push(String(p)), readFile(p, o)),
    readFileSync: (p: string) => (paths.push(String(p)), readFileSync(p)),
  });
  try {
    return { result: await fn(), paths };
  } finally {
    Object.assign(Deno, { readFile, readFileSync });
  }
}

/** Runs `fn` on a fresh small tokenizer folder (its tokenizer.json's path too), in a fresh cache. */
function withTokenizer(word: string, fn: (src: string, path: string) => Promise<void>) {
  return withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), word);
      await fn(src, join(src, "tokenizer.json"));
    })
  );
}

Deno.test("a tokenizer.json recorded by its stat is not read until its text is used, and its text must still have the digest", async () => {
  await withTokenizer("stat", async (src, path) => {
    const bytes = await Deno.readFile(path);
    const settled = Date.now() + SETTLED_MS; // as if recorded later: the file is settled
    await rememberByStat(path, await Deno.stat(path), sha256(bytes), 2, settled);

    const { result: doc, paths } = await reads(() => readTokenizerFolder(src, { tree: false }));
    assert.equal(paths.includes(path), false, `not read: ${paths}`);
    assert.equal(doc.tokenizerSha256, sha256(bytes));
    assert.equal(tokenizerVocabSize(doc), 3, "the highest id of the record");
    const used = await reads(() => Promise.resolve(doc.tokenizer));
    assert.deepEqual(used.paths, [path], "read when the text is used");
    assert.deepEqual(used.result, JSON.parse(new TextDecoder().decode(bytes)));

    // a file that changed after the preflight looked at it is refused when its text is used
    const again = await readTokenizerFolder(src, { tree: false });
    const changed = bytes.slice();
    changed[changed.indexOf(0x7b /* { */)] = 0x20;
    await Deno.writeFile(path, changed);
    assert.throws(
      () => again.tokenizer,
      (e: Error & { code?: string }) =>
        e.code === "TOKENIZER_INVALID" && /changed since it was looked at/.test(e.message),
    );
  });
});

Deno.test("a tokenizer.json changed less than SETTLED_MS ago is not recorded by its stat", async () => {
  await withTokenizer("fresh", async (src, path) => {
    const info = await Deno.stat(path);
    await rememberByStat(path, info, sha256(await Deno.readFile(path)), 2, Date.now());
    assert.equal(await knownByStat(path, info), undefined);
    await readTokenizerFolder(src, { tree: false }); // a preflight does not record it either
    assert.equal(await knownByStat(path, await Deno.stat(path)), undefined);
  });
});

Deno.test("a rewrite that keeps the size and sets the modification time back no longer matches the record (the change time moved)", async () => {
  await withTokenizer("sneaky", async (src, path) => {
    const bytes = await Deno.readFile(path);
    const before = await Deno.stat(path);
    await rememberByStat(path, before, sha256(bytes), 2, Date.now() + SETTLED_MS);
    assert.deepEqual(await knownByStat(path, before), { sha256: sha256(bytes), highestId: 2 });

    await new Promise((r) => setTimeout(r, 1100)); // the change time has whole seconds
    const changed = bytes.slice();
    changed[changed.indexOf(0x7b /* { */)] = 0x20;
    await Deno.writeFile(path, changed);
    await Deno.utime(path, before.atime!, before.mtime!);
    const after = await Deno.stat(path);
    assert.equal(after.size, before.size);
    assert.equal(after.mtime?.getTime(), before.mtime?.getTime());
    assert.equal(await knownByStat(path, after), undefined);
    await assert.rejects(
      () => readTokenizerFolder(src, { tree: false }).then((d) => d.tokenizer),
      (e: Error & { code?: string }) => e.code === "JSON_PARSE",
      "the new bytes are read and refused",
    );
  });
});

Deno.test("a stat whose change time is its modification time (FAT keeps no other) is not recorded", async () => {
  await withTokenizer("fat", async (_src, path) => {
    const info = await Deno.stat(path);
    const old = new Date(Date.now() - 10 * SETTLED_MS);
    const fat = { ...info, mtime: old, ctime: old };
    await rememberByStat(path, fat, sha256(await Deno.readFile(path)), 2, Date.now());
    assert.equal(await knownByStat(path, fat), undefined);
    const ext4 = { ...info, mtime: old, ctime: new Date(old.getTime() + 1000) };
    await rememberByStat(path, ext4, sha256(await Deno.readFile(path)), 2, Date.now());
    assert.notEqual(await knownByStat(path, ext4), undefined, "the same file with a change time");
  });
});

Deno.test("a file is recorded only when it was settled at the time of the stat, not of the record", async () => {
  await withTokenizer("late", async (_src, path) => {
    const statAt = Date.now();
    const info = await Deno.stat(path);
    const digest = sha256(await Deno.readFile(path));
    await new Promise((r) => setTimeout(r, SETTLED_MS + 100)); // a slow read, parse or cache
    await rememberByStat(path, info, digest, 2, statAt);
    assert.equal(await knownByStat(path, info), undefined);
  });
});

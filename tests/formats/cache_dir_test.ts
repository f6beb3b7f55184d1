/** The cache folder and its atomic file writer (`formats/_cache_dir.ts`). */
import assert from "node:assert/strict";
import { join } from "node:path";
import { cacheDir, writeCacheFile } from "../../formats/_cache_dir.ts";
import { withTempDir } from "../_helpers/tmp.ts";

Deno.test("`writeCacheFile()` creates the folder and replaces the file whole, leaving no temporary file", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "deep", "er", "checks.json");
    await writeCacheFile(file, "one\n");
    await writeCacheFile(file, "two\n");
    assert.equal(await Deno.readTextFile(file), "two\n");
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(join(dir, "deep", "er")))).map((e) => e.name),
      ["checks.json"],
    );
  });
});

Deno.test("`writeCacheFile()` whose rename fails throws the OS error and removes its temporary file", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "checks.json");
    await Deno.mkdir(join(file, "in-the-way"), { recursive: true }); // a folder cannot be renamed over
    await assert.rejects(
      () => writeCacheFile(file, "text\n"),
      (e: Error & { code?: string }) =>
        e instanceof Deno.errors.IsADirectory || e instanceof Deno.errors.AlreadyExists ||
        ["EISDIR", "ENOTEMPTY", "EEXIST"].includes(e.code ?? ""),
    );
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name),
      ["checks.json"],
      "only the folder that was in the way",
    );
  });
});

Deno.test("`cacheDir()` follows CKPT_CACHE_DIR, then XDG_CACHE_HOME, then HOME", () => {
  const names = ["CKPT_CACHE_DIR", "XDG_CACHE_HOME", "HOME"] as const;
  const before = names.map((n) => Deno.env.get(n));
  try {
    for (const n of names) Deno.env.delete(n);
    Deno.env.set("HOME", "/home/u");
    assert.equal(cacheDir(), "/home/u/.cache/ckpt");
    Deno.env.set("XDG_CACHE_HOME", "/xdg");
    assert.equal(cacheDir(), "/xdg/ckpt");
    Deno.env.set("CKPT_CACHE_DIR", "/mine");
    assert.equal(cacheDir(), "/mine");
  } finally {
    names.forEach((n, i) =>
      before[i] === undefined ? Deno.env.delete(n) : Deno.env.set(n, before[i]!)
    );
  }
});

/**
 * The folder walk `ckpt verify` reports entries by: every kind of entry, named in words; a folder
 * it cannot walk is a failed check.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { folderEntries, specialKind } from "../../pipelines/_folder_entries.ts";
import { buildManifest, writeManifest } from "../../pipelines/manifest.ts";
import { verifyCheckpoint } from "../../pipelines/verify.ts";
import { withTempDir } from "../_helpers/tmp.ts";

Deno.test("`specialKind()` names a FIFO, a socket and a device, and anything it cannot look up a special file", async () => {
  await withTempDir(async (dir) => {
    await new Deno.Command("mkfifo", { args: [join(dir, "pipe")] }).output();
    using _socket = Deno.listen({ transport: "unix", path: join(dir, "sock") });
    assert.deepEqual(
      [
        await specialKind(join(dir, "pipe")),
        await specialKind(join(dir, "sock")),
        await specialKind("/dev/null"), // a character device on every Linux
        await specialKind(join(dir, "gone")),
      ],
      ["FIFO", "socket", "device", "special file"],
    );
  });
});

Deno.test("`folderEntries()` lists regular files sorted and every other entry with its kind", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "b", "c", "empty"), { recursive: true });
    await Deno.writeTextFile(join(dir, "b", "c", "z.txt"), "z");
    await Deno.writeTextFile(join(dir, "a.txt"), "a");
    await Deno.symlink("/dev/null", join(dir, "null"));
    await new Deno.Command("mkfifo", { args: [join(dir, "b", "pipe")] }).output();
    const { files, others } = await folderEntries(dir);
    assert.deepEqual(files, ["a.txt", "b/c/z.txt"]);
    assert.deepEqual([...others].sort(), [
      ["b/c/empty", "empty folder"],
      ["b/pipe", "FIFO"],
      ["null", "symlink"], // never followed to the device it names
    ]);
  });
});

Deno.test("`folderEntries()` of an empty folder is empty: only a folder below it counts as an empty folder", async () => {
  await withTempDir(async (dir) => {
    const { files, others } = await folderEntries(dir);
    assert.deepEqual([files, [...others]], [[], []]);
  });
});

Deno.test("`verifyCheckpoint()` reports a folder it cannot walk as a failed check with a coded error, never rejecting", async () => {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "ckpt-test-" });
  try {
    await Deno.writeTextFile(join(dir, "a.txt"), "a");
    await writeManifest(dir, await buildManifest(dir, { output: dir }));
    // 17 nested folders of 255 characters: their path is longer than PATH_MAX (4096 bytes), so
    // listing the deepest fails (ENAMETOOLONG); made from inside, one folder at a time, by a
    // child process (the working folder is the process's)
    const made = await new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `Deno.chdir(${JSON.stringify(dir)});
        for (let i = 0; i < 17; i++) { Deno.mkdirSync("d".repeat(255)); Deno.chdir("d".repeat(255)); }`,
      ],
    }).output();
    assert.equal(made.code, 0);
    const r = await verifyCheckpoint(dir);
    assert.equal(r.ok, false);
    assert.deepEqual(
      r.checks.filter((c) => !c.ok).map((c) => [c.kind, c.message.split("]")[0]]),
      [["manifest", "[FS_NAME_TOO_LONG"]],
    );
  } finally {
    // rm walks the tree relative to each folder, which Deno.remove cannot at this depth
    await new Deno.Command("rm", { args: ["-rf", dir] }).output();
  }
});

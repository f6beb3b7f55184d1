/**
 * ENOSPC at every write: the output folder is a small tmpfs the test mounts, swept page by page
 * from one page up to the size the run needs, so each write that needs a new page (the lock
 * file's note, every output file and block, the manifest) is the one that fails at some size.
 * Each failing run exits 1 with `FS_NO_SPACE` (`--log json`: a `pipeline-error` line, no stack
 * trace) and leaves nothing; after growing the tmpfs the next run cleans up and its output
 * verifies. The same for an `--overwrite` run over an existing output, which must survive. And
 * a weights file large enough for direct I/O fails the same way when the space runs out.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DIRECT_MIN_BYTES } from "../../formats/_file_sink.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import {
  assertCoded,
  assertVerifies,
  ckptChild,
  leftovers,
  makeSmallRun,
  mergeArgs,
  mountTmpfs,
  nextRun,
  sh,
  type SmallRun,
  unmount,
} from "./_harness.ts";

const PAGE = 4096;

/** Pages the files of `dir` take on a tmpfs. */
async function pagesOf(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    n += Math.ceil((await Deno.stat(join(dir, e.name))).size / PAGE);
  }
  return n;
}

/** One size: runs the merge on a tmpfs of `pages` pages; resolves to true when it succeeded. */
async function atSize(
  run: SmallRun,
  mnt: string,
  pages: number,
  overwrite: string | undefined,
  codes: Map<string, number>,
): Promise<boolean> {
  await mountTmpfs(mnt, (pages + (overwrite ? await pagesOf(overwrite) : 0)) * PAGE);
  try {
    const out = join(mnt, "out");
    if (overwrite) {
      // the old output first, then the space left is `pages`
      await sh("cp", "-r", overwrite, out);
    }
    const what = `${overwrite ? "--overwrite " : ""}merge on a ${pages}-page tmpfs`;
    const r = await ckptChild(
      mergeArgs(run, out, "--log", "json", ...(overwrite ? ["--overwrite"] : [])),
    );
    if (r.code === 0) {
      assert.deepEqual(await leftovers(mnt), [], what);
      assert.ok(await assertVerifies(run, out, what));
      return true;
    }
    const code = assertCoded(r, ["FS_NO_SPACE"], what);
    const message = r.stderr.split("\n").find((l) => l.includes('"pipeline-error"')) ?? "";
    const op = /Cannot (.+?) "/.exec(JSON.parse(message).message)?.[1] ?? "?";
    codes.set(`${code} at "${op}"`, (codes.get(`${code} at "${op}"`) ?? 0) + 1);
    assert.deepEqual(await leftovers(mnt), [], `${what}: a failed run leaves nothing`);
    if (overwrite) assert.ok(await assertVerifies(run, out, `${what}: the old output`));
    // More room: the next run cleans up and lands.
    await sh("mount", "-o", `remount,size=${64 * PAGE}`, mnt);
    const next = await nextRun(run, out, { overwrite: overwrite !== undefined });
    assert.equal(next, "ok", what);
    assert.deepEqual(await leftovers(mnt), [], `${what}: after the next run`);
    assert.ok(await assertVerifies(run, out, `${what}: after the next run`));
    return false;
  } finally {
    await unmount(mnt);
  }
}

Deno.test("faults: ENOSPC at every write of a merge and of an --overwrite merge (tmpfs)", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const previous = join(dir, "previous");
    assert.equal(await nextRun(run, previous), "ok");
    for (const overwrite of [undefined, previous]) {
      const codes = new Map<string, number>();
      let pages = 1;
      while (!(await atSize(run, join(dir, "mnt"), pages, overwrite, codes))) {
        pages++;
        assert.ok(pages < 64, "the small run fits in 64 pages");
      }
      console.log(
        `${overwrite ? "--overwrite" : "fresh"}: ${pages - 1} ENOSPC points, success at ${pages} ` +
          `pages; ${[...codes].map(([k, n]) => `${k} x${n}`).join(", ")}`,
      );
      assert.ok(pages - 1 >= 3, "several writes hit ENOSPC");
    }
  });
});

Deno.test("faults: ENOSPC in the direct-I/O write of a large weights file is FS_NO_SPACE and leaves nothing", async () => {
  await withTempDir(async (dir) => {
    // above DIRECT_MIN_BYTES, so model.safetensors is written with O_DIRECT (tmpfs takes it)
    const cols = 4096, rows = (DIRECT_MIN_BYTES + 8 * 2 ** 20) / (2 * cols);
    const base = join(dir, "base.safetensors");
    await writeSafetensors(
      base,
      new StateDict([[
        "w",
        tensorFromBytes("BF16", [rows, cols], new Uint8Array(rows * cols * 2)),
      ]]),
    );
    const mnt = join(dir, "mnt");
    for (const mib of [1, 16, 64]) {
      await mountTmpfs(mnt, mib * 2 ** 20);
      try {
        const what = `gather of a ${
          DIRECT_MIN_BYTES / 2 ** 20 + 8
        } MiB model onto a ${mib} MiB tmpfs`;
        const r = await ckptChild(["gather", base, "--out", join(mnt, "out"), "--log", "json"]);
        assert.equal(r.code, 1, what);
        assertCoded(r, ["FS_NO_SPACE"], what);
        assert.deepEqual(await leftovers(mnt), [], `${what}: a failed run leaves nothing`);
      } finally {
        await unmount(mnt);
      }
    }
  });
});

/**
 * What a checkpoint folder holds, symlinks not followed: its regular files, and every other entry
 * (a symlink, a FIFO, a socket, a device, an empty folder) with its kind in words. `ckpt verify`
 * reports the others by kind and never opens them (a FIFO would block, a symlink points anywhere).
 * @module
 */
import { join } from "node:path";

/** What a folder holds: its regular files, and every other entry with its kind. */
export interface FolderEntries {
  /** Regular files, relative, `/`-separated, sorted. */
  files: string[];
  /** Symlinks, FIFOs, sockets, devices and empty folders: relative path -> kind. */
  others: Map<string, string>;
}

/**
 * Every entry under `folder`, symlinks not followed: regular files, and everything else
 * (a symlink, a FIFO, a socket, a device, an empty folder) with its kind.
 *
 * @example A file, a symlink and an empty folder
 * ```ts
 * import { folderEntries } from "./_folder_entries.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/a.txt`, "a");
 * await Deno.symlink("a.txt", `${dir}/link`);
 * await Deno.mkdir(`${dir}/empty`);
 * const { files, others } = await folderEntries(dir);
 * assert.deepEqual(files, ["a.txt"]);
 * assert.deepEqual([...others].sort(), [["empty", "empty folder"], ["link", "symlink"]]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function folderEntries(folder: string): Promise<FolderEntries> {
  const files: string[] = [];
  const others = new Map<string, string>();
  async function walk(rel: string): Promise<void> {
    let n = 0;
    for await (const e of Deno.readDir(rel === "" ? folder : join(folder, rel))) {
      n++;
      const p = rel === "" ? e.name : `${rel}/${e.name}`;
      if (e.isSymlink) others.set(p, "symlink");
      else if (e.isDirectory) await walk(p);
      else if (e.isFile) files.push(p);
      else others.set(p, await specialKind(join(folder, p)));
    }
    if (n === 0 && rel !== "") others.set(rel, "empty folder");
  }
  await walk("");
  return { files: files.sort(), others };
}

/**
 * The kind of a special file, in words: "FIFO", "socket", "device" (block or character), else
 * "special file" (also when it cannot be looked up).
 *
 * @example /dev/null is a device
 * ```ts
 * import { specialKind } from "./_folder_entries.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(await specialKind("/dev/null"), "device");
 * ```
 */
export async function specialKind(path: string): Promise<string> {
  const st = await Deno.lstat(path).catch(() => undefined);
  if (st?.isFifo) return "FIFO";
  if (st?.isSocket) return "socket";
  if (st?.isBlockDevice || st?.isCharDevice) return "device";
  return "special file";
}

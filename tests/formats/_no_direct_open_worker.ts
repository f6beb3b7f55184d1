/**
 * The direct I/O worker (`formats/_direct_file_worker.ts`) on a file system that refuses
 * `O_DIRECT` when the file is opened (EINVAL, as some network and FUSE file systems answer), for
 * the test of the sink's page-cache fallback: every open asking for direct I/O fails that way.
 * @module
 */
import fs from "node:fs";
import "../../formats/_direct_file_worker.ts";

const realOpen = fs.openSync;
fs.openSync = ((path: fs.PathLike, flags: fs.OpenMode, mode?: fs.Mode | null) => {
  if (typeof flags === "number" && (flags & fs.constants.O_DIRECT) !== 0) {
    throw Object.assign(new Error(`EINVAL: invalid argument, open '${path}'`), { code: "EINVAL" });
  }
  return realOpen(path, flags, mode);
}) as typeof fs.openSync;

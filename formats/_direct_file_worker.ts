/**
 * Private: the worker behind `_file_sink.ts`'s direct sink. It owns one file opened with
 * `O_DIRECT` and writes blocks of a shared, page-aligned memory into it by position, so the data
 * goes from that memory to the device without a page-cache copy and the main thread never blocks
 * in a write. Messages in (each answered `{ id, ok: true, ... }` or `{ id, error }`):
 * `{ op: "open", path, buffer }` (opens the file the sink created, answered `direct: false` where
 * the file system refuses `O_DIRECT`: the file is then written through the page cache; a failed
 * open fails every later request but "close"), `{ op: "write", start, length, offset }`,
 * `{ op: "finish", size }` (truncates to the exact size and closes) and `{ op: "close" }`.
 * @module
 */
import fs from "node:fs";

type Request =
  | { id: number; op: "open"; path: string; buffer: SharedArrayBuffer }
  | { id: number; op: "write"; start: number; length: number; offset: number }
  | { id: number; op: "finish"; size: number }
  | { id: number; op: "close" };

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Request>) => void) | null;
  postMessage(message: unknown): void;
};

const { O_WRONLY, O_DIRECT } = fs.constants;
let fd: number | undefined;
let path = "";
let memory: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
/** False once the file system refused direct I/O and the file was opened buffered. */
let direct = true;
/** Why the file could not be opened: every later request but "close" fails with it. */
let openFailed: unknown;

function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" ? code : undefined;
}

function writeAt(start: number, length: number, offset: number): void {
  let done = 0;
  while (done < length) {
    done += fs.writeSync(fd!, memory, start + done, length - done, offset + done);
  }
}

function handle(m: Request): Record<string, unknown> {
  if (openFailed !== undefined && m.op !== "close") throw openFailed;
  switch (m.op) {
    case "open": {
      path = m.path;
      memory = new Uint8Array(m.buffer);
      try {
        fd = fs.openSync(path, O_WRONLY | O_DIRECT);
      } catch (err) {
        if (errnoOf(err) !== "EINVAL") throw openFailed = err;
        // the file system has no direct I/O: the same file, written through the page cache
        try {
          fd = fs.openSync(path, O_WRONLY);
        } catch (again) {
          throw openFailed = again;
        }
        direct = false;
      }
      return { direct };
    }
    case "write":
      try {
        writeAt(m.start, m.length, m.offset);
      } catch (err) {
        if (errnoOf(err) !== "EINVAL" || !direct) throw err;
        // opened direct, but this file system refuses direct writes: go on buffered
        const buffered = fs.openSync(path, O_WRONLY);
        fs.closeSync(fd!);
        fd = buffered;
        direct = false;
        writeAt(m.start, m.length, m.offset);
      }
      return {};
    case "finish":
      fs.ftruncateSync(fd!, m.size);
      fs.closeSync(fd!);
      fd = undefined;
      return { direct };
    case "close":
      if (fd !== undefined) {
        try {
          fs.closeSync(fd);
        } catch { /* closed */ }
        fd = undefined;
      }
      return {};
  }
}

scope.onmessage = (e) => {
  const m = e.data;
  try {
    scope.postMessage({ id: m.id, ok: true, ...handle(m) });
  } catch (err) {
    scope.postMessage({
      id: m.id,
      error: {
        message: err instanceof Error ? err.message : String(err),
        code: errnoOf(err),
      },
    });
  }
};

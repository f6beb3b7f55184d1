/**
 * The runner's output hashing: every file a stage leaves in the staging folder is hashed on the
 * worker as soon as the stage ends (overlapping the next stages), or taken from the digest of the
 * bytes the stage fed to `ctx.onOutputBytes` while writing it. The manifest then asks
 * {@linkcode OutputHasher.hash} for each file, which reuses that early hash when the file is
 * unchanged since and hashes it again otherwise.
 * @module
 */
import { join, relative, resolve, sep } from "node:path";
import { hashFile, type HashStream, HashWorker } from "./hashing.ts";
import { listFiles } from "./manifest.ts";
import type { PipelineEvent } from "./stage.ts";

type Digest = { size: number; sha256: string };

/** A hash started before the manifest asks for it, valid while the file keeps `key`. */
interface EarlyHash {
  key: string;
  hash: Promise<Digest>;
  streamed: boolean;
}

/** Identity of a file's contents for reuse: size, mtime and inode. */
function fileKey(st: Deno.FileInfo): string {
  return `${st.size}:${st.mtime?.getTime()}:${st.ino}`;
}

/** `abs` relative to `dir`, `/`-separated. */
function relPath(dir: string, abs: string): string {
  return relative(dir, abs).split(sep).join("/");
}

/** Hashes the outputs of one run's staging folder; see the module doc. */
export class OutputHasher {
  readonly #dir: string;
  readonly #signal: AbortSignal;
  readonly #worker = new HashWorker();
  readonly #early = new Map<string, EarlyHash>();
  /** Streams fed through `onOutputBytes`, by path relative to the folder. */
  readonly #streams = new Map<string, HashStream>();
  /** Files whose manifest hash came from a stream, and how many were read again. */
  readonly #streamed: string[] = [];
  #reread = 0;

  /** Hashes the files of `dir`; `signal` aborts the fallback hashing. */
  constructor(dir: string, signal: AbortSignal) {
    this.#dir = dir;
    this.#signal = signal;
    this.#worker.start(); // ready by the time the first stage writes
  }

  /** The `ctx.onOutputBytes` of the run: feeds `bytes` of `path` (relative to the folder). */
  onOutputBytes = (path: string, bytes: Uint8Array): Promise<void> | void => {
    const rel = relPath(this.#dir, resolve(this.#dir, path));
    let stream = this.#streams.get(rel);
    if (!stream) this.#streams.set(rel, stream = this.#worker.stream());
    return stream.update(bytes);
  };

  /**
   * Called when a stage ends: takes the digest of every file fed completely, and starts hashing
   * every other new or changed file on the worker.
   */
  async stageEnded(): Promise<void> {
    for (const rel of await listFiles(this.#dir)) {
      const abs = join(this.#dir, rel);
      const st = await Deno.stat(abs);
      const key = fileKey(st);
      if (this.#takeStream(rel, abs, key, st.size)) continue;
      if (this.#early.get(abs)?.key === key) continue;
      this.#remember(abs, key, this.#worker.hash(abs), false);
    }
    // fed bytes for a file the stage did not leave behind
    for (const stream of this.#streams.values()) stream.abort();
    this.#streams.clear();
  }

  /** Uses the stream fed for `rel` when its size matches the file; true when it did. */
  #takeStream(rel: string, abs: string, key: string, size: number): boolean {
    const stream = this.#streams.get(rel);
    if (!stream) return false;
    this.#streams.delete(rel);
    if (stream.size === size) {
      this.#remember(abs, key, stream.digest(), true);
      return true;
    }
    stream.abort();
    return false;
  }

  #remember(abs: string, key: string, hash: Promise<Digest>, streamed: boolean): void {
    hash.catch(() => {});
    this.#early.set(abs, { key, hash, streamed });
  }

  /** Size and sha256 of `abs` for the manifest: the early hash when still valid, else read now. */
  hash = async (abs: string): Promise<Digest> => {
    const e = this.#early.get(abs);
    if (e && e.key === fileKey(await Deno.stat(abs))) {
      try {
        const h = await e.hash;
        if (e.streamed) this.#streamed.push(abs);
        else this.#reread++;
        return h;
      } catch {
        // the worker failed: hash here
      }
    }
    this.#reread++;
    return await hashFile(abs, this.#signal);
  };

  /** A debug event saying how the outputs were hashed, when a stage fed any bytes. */
  summary(): PipelineEvent | undefined {
    const streamed = this.#streamed;
    if (streamed.length === 0) return undefined;
    return {
      type: "log",
      level: "debug",
      message:
        `output hashes: ${streamed.length} computed while written, ${this.#reread} by reading the file`,
      data: { streamed: streamed.map((abs) => relPath(this.#dir, abs)), reread: this.#reread },
    };
  }

  /** Stops the worker. */
  close(): void {
    this.#worker.close();
  }
}

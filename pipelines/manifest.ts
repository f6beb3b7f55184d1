/**
 * The manifest every finished checkpoint carries: `ckpt-manifest.json` with each file's size and
 * sha256 (streamed, never a whole file in memory), the inputs, the tool and runtime versions, the
 * merge backend used, the output dtype, the timings and each stage's report.
 *
 * @example Hashing a folder
 * ```ts
 * import { buildManifest, writeManifest, readManifest } from "./manifest.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/a.txt`, "abc");
 * const manifest = await buildManifest(dir, { output: dir });
 * assert.equal(manifest.files[0]!.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
 * await writeManifest(dir, manifest);
 * assert.equal((await readManifest(dir)).files.length, 1);
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { join, relative, sep } from "node:path";
import { z } from "zod";
import { CkptError } from "../errors.ts";
import { RandomAccessFile } from "../formats/_io.ts";
import denoJson from "../deno.json" with { type: "json" };

/** File name of the manifest inside a checkpoint folder. */
export const MANIFEST_NAME = "ckpt-manifest.json";

/** Block size for streamed hashing. */
const HASH_BLOCK = 4 * 1024 * 1024;

/** One output file. */
export interface ManifestFile {
  /** Path relative to the checkpoint folder, `/`-separated. */
  path: string;
  /** Size in bytes. */
  size: number;
  /** Lower-case hex sha256 of the file's bytes. */
  sha256: string;
}

/** One input the run read. */
export interface ManifestInput {
  /** Absolute path. */
  path: string;
  /** What it was used as (`base`, `adapter`, `optimizer`, ...). */
  role: string;
  /** Size in bytes for files, total for folders, when known. */
  size?: number;
  /** Modification time (ISO) when known. */
  mtime?: string;
}

/** Timing and report of one stage. */
export interface ManifestStage {
  /** Stage name. */
  name: string;
  /** Position in the pipeline. */
  index: number;
  /** Wall time in milliseconds. */
  ms: number;
  /** What the stage reported (files written, backend, counts). */
  report: Record<string, unknown>;
}

/** Contents of `ckpt-manifest.json`. */
export interface Manifest {
  /** Always `"ckpt-manifest"`. */
  format: "ckpt-manifest";
  /** Manifest format version. */
  version: 1;
  /** Tool that wrote the folder. */
  tool: { name: string; version: string; deno: string; v8: string; typescript: string };
  /** ISO time the manifest was written. */
  createdAt: string;
  /** Output folder the run targeted. */
  output: string;
  /** Config file and resolved variables, when the run came from a config. */
  config?: { source?: string; vars: Record<string, string> };
  /** Inputs the stages recorded. */
  inputs: ManifestInput[];
  /** Merge backend used (`webgpu`, `cpu`), or `none` when nothing was merged. */
  backend: string;
  /** Output weight dtype, when a stage wrote weights. */
  dtype?: string;
  /** Timings: total and per stage. */
  timings: { totalMs: number; stages: Array<{ name: string; ms: number }> };
  /** Each stage's report. */
  stages: ManifestStage[];
  /** Every file in the folder except the manifest, sorted by path. */
  files: ManifestFile[];
}

const ManifestSchema = z.looseObject({
  format: z.literal("ckpt-manifest"),
  version: z.literal(1),
  files: z.array(
    z.looseObject({
      path: z.string().min(1),
      size: z.number().int().nonnegative(),
      sha256: z.string().regex(/^[0-9a-f]{64}$/),
    }),
  ),
});

/** The tool and runtime versions recorded in every manifest. */
export function toolInfo(): Manifest["tool"] {
  return {
    name: denoJson.name,
    version: denoJson.version,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
  };
}

/** Streams a file through sha256; returns its size and hex digest. `signal` aborts between blocks. */
export async function hashFile(
  path: string,
  signal?: AbortSignal,
): Promise<{ size: number; sha256: string }> {
  const file = await RandomAccessFile.open(path);
  try {
    const hash = createHash("sha256");
    const buf = new Uint8Array(Math.min(HASH_BLOCK, Math.max(file.size, 1)));
    for (let off = 0; off < file.size; off += buf.length) {
      signal?.throwIfAborted();
      const len = Math.min(buf.length, file.size - off);
      hash.update(await file.readAt(off, len, buf));
    }
    return { size: file.size, sha256: hash.digest("hex") };
  } finally {
    await file.close();
  }
}

/**
 * A sha256 over bytes fed in order (a file's bytes as they are written), computed on the hash
 * worker; see {@linkcode HashWorker.stream}.
 */
export interface HashStream {
  /** Bytes fed so far. */
  readonly size: number;
  /**
   * Feeds `bytes`. They are copied before this returns, so the caller may reuse its buffer. Returns
   * a promise while more than the stream's queue limit waits on the worker: await it before
   * feeding more, to keep memory bounded.
   */
  update(bytes: Uint8Array): Promise<void> | void;
  /** Ends the stream: the size and sha256 of everything fed. */
  digest(): Promise<{ size: number; sha256: string }>;
  /** Discards the stream (no digest); a pending {@linkcode HashStream.update} promise resolves. */
  abort(): void;
}

/** Bytes a {@linkcode HashStream} lets wait on the worker before `update` asks the caller to wait. */
const STREAM_QUEUE_BYTES = 64 * 2 ** 20;

/** Block buffers a {@linkcode HashWorker} keeps for reuse. */
const SPARE_BUFFERS = 6;

/** A {@linkcode HashStream} hashing on the calling thread (when no worker can be started). */
function localHashStream(): HashStream {
  let hash: ReturnType<typeof createHash> | undefined = createHash("sha256");
  let size = 0;
  return {
    get size() {
      return size;
    },
    update(bytes: Uint8Array): void {
      if (!hash) throw new Error("hash stream already ended");
      hash.update(bytes);
      size += bytes.length;
    },
    digest(): Promise<{ size: number; sha256: string }> {
      if (!hash) return Promise.reject(new Error("hash stream already ended"));
      const sha256 = hash.digest("hex");
      hash = undefined;
      return Promise.resolve({ size, sha256 });
    },
    abort(): void {
      hash = undefined;
    },
  };
}

interface StreamState {
  queued: number;
  max: number;
  waiters: Array<() => void>;
}

function release(s: StreamState): void {
  const w = s.waiters;
  s.waiters = [];
  for (const r of w) r();
}

/**
 * Hashes files, and streams of bytes, on a worker thread (one, created on first use), so hashing
 * overlaps other work. Falls back to hashing on the calling thread when workers are unavailable.
 *
 * @example Streaming bytes as they are written
 * ```ts
 * import { HashWorker, sha256Hex } from "./manifest.ts";
 * import assert from "node:assert/strict";
 *
 * const worker = new HashWorker();
 * const stream = worker.stream();
 * const buf = new Uint8Array(4);
 * for (const v of [1, 2]) {
 *   buf.fill(v);
 *   await stream.update(buf); // copied: the buffer may be reused at once
 * }
 * const { size, sha256 } = await stream.digest();
 * assert.equal(size, 8);
 * assert.equal(sha256, sha256Hex(new Uint8Array([1, 1, 1, 1, 2, 2, 2, 2])));
 * worker.close();
 * ```
 */
export class HashWorker {
  #worker: Worker | undefined;
  #failed = false;
  #next = 0;
  #pending = new Map<
    number,
    { resolve: (v: { size: number; sha256: string }) => void; reject: (e: Error) => void }
  >();
  #streams = new Map<number, StreamState>();
  /** Buffers the worker gave back after hashing a streamed block. */
  #spare: ArrayBuffer[] = [];

  /** `bytes` copied into a spare buffer (fresh pages for every block cost more than the copy). */
  #copy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
    const i = this.#spare.findIndex((b) => b.byteLength >= bytes.length);
    const buffer = i >= 0 ? this.#spare.splice(i, 1)[0]! : new ArrayBuffer(bytes.length);
    const copy = new Uint8Array(buffer, 0, bytes.length);
    copy.set(bytes);
    return copy;
  }

  /** Size and sha256 of `path`. */
  hash(path: string): Promise<{ size: number; sha256: string }> {
    const worker = this.#start();
    if (!worker) return hashFile(path);
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      worker.postMessage({ id, path });
    });
  }

  /**
   * Starts a sha256 over bytes fed in order, hashed on the worker while the caller goes on (one
   * worker serves any number of streams). At most `maxQueuedBytes` (default 64 MiB) wait on the
   * worker before {@linkcode HashStream.update} returns a promise to await.
   */
  stream(maxQueuedBytes: number = STREAM_QUEUE_BYTES): HashStream {
    const worker = this.#start();
    if (!worker) return localHashStream();
    const id = this.#next++;
    const state: StreamState = { queued: 0, max: maxQueuedBytes, waiters: [] };
    this.#streams.set(id, state);
    let size = 0;
    let ended = false;
    const end = (): void => {
      ended = true;
      this.#streams.delete(id);
      release(state);
    };
    return {
      get size() {
        return size;
      },
      update: (bytes: Uint8Array): Promise<void> | void => {
        if (ended) throw new Error("hash stream already ended");
        if (bytes.length === 0) return;
        const copy = this.#copy(bytes);
        size += copy.length;
        state.queued += copy.length;
        worker.postMessage({ id, op: "update", bytes: copy }, [copy.buffer]);
        if (state.queued > state.max && this.#streams.has(id)) {
          return new Promise<void>((r) => state.waiters.push(r));
        }
      },
      digest: (): Promise<{ size: number; sha256: string }> => {
        if (ended) return Promise.reject(new Error("hash stream already ended"));
        end();
        if (this.#worker !== worker) return Promise.reject(new Error("hash worker closed"));
        return new Promise((resolve, reject) => {
          this.#pending.set(id, { resolve, reject });
          worker.postMessage({ id, op: "digest" });
        });
      },
      abort: (): void => {
        if (ended) return;
        end();
        if (this.#worker === worker) worker.postMessage({ id, op: "abort" });
      },
    };
  }

  #start(): Worker | undefined {
    if (this.#worker || this.#failed) return this.#worker;
    try {
      const w = new Worker(new URL("./_hash_worker.ts", import.meta.url), { type: "module" });
      w.onmessage = (
        e: MessageEvent<
          {
            id: number;
            size?: number;
            sha256?: string;
            error?: string;
            ack?: number;
            buffer?: ArrayBuffer;
          }
        >,
      ) => {
        if (e.data.ack !== undefined) {
          if (e.data.buffer && this.#spare.length < SPARE_BUFFERS) this.#spare.push(e.data.buffer);
          const s = this.#streams.get(e.data.id);
          if (!s) return;
          s.queued -= e.data.ack;
          if (s.queued <= s.max) release(s);
          return;
        }
        const p = this.#pending.get(e.data.id);
        if (!p) return;
        this.#pending.delete(e.data.id);
        if (e.data.error !== undefined) p.reject(new Error(e.data.error));
        else p.resolve({ size: e.data.size!, sha256: e.data.sha256! });
      };
      w.onerror = (e) => {
        e.preventDefault();
        this.#fail(new Error(`hash worker failed: ${e.message}`));
        this.#failed = true;
      };
      this.#worker = w;
    } catch {
      this.#failed = true;
    }
    return this.#worker;
  }

  #fail(err: Error): void {
    this.#spare = [];
    this.#worker?.terminate();
    this.#worker = undefined;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    for (const s of this.#streams.values()) release(s);
    this.#streams.clear();
  }

  /** Stops the worker; pending hashes and digests reject, streams' waiting updates resolve. */
  close(): void {
    this.#fail(new Error("hash worker closed"));
  }
}

/** sha256 hex of bytes in memory. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Every regular file under `dir`, as sorted `/`-separated relative paths. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string): Promise<void> {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (e.isDirectory) await walk(p);
      else if (e.isFile) out.push(relative(dir, p).split(sep).join("/"));
    }
  }
  await walk(dir);
  return out.sort();
}

/** What {@linkcode buildManifest} records besides the files. */
export interface ManifestInfo {
  /** Output folder the run targets. */
  output: string;
  /** Config source and variables. */
  config?: { source?: string; vars: Record<string, string> };
  /** Inputs. Default none. */
  inputs?: ManifestInput[];
  /** Stage timings and reports. Default none. */
  stages?: ManifestStage[];
  /** Total wall time so far in ms. Default: sum of stages. */
  totalMs?: number;
  /** Aborts hashing. */
  signal?: AbortSignal;
  /** Hashes one file (absolute path); default {@linkcode hashFile}. The runner passes one that
   * reuses hashes computed while later stages ran. */
  hasher?: (path: string) => Promise<{ size: number; sha256: string }>;
}

function pickString(stages: ManifestStage[], key: string): string | undefined {
  for (let i = stages.length - 1; i >= 0; i--) {
    const v = stages[i]!.report[key];
    if (typeof v === "string") return v;
  }
  return undefined;
}

/**
 * Hashes every file in `dir` (except an existing manifest) and assembles the manifest. The
 * `backend` and `dtype` fields come from the last stage report that has such a string key.
 */
export async function buildManifest(dir: string, info: ManifestInfo): Promise<Manifest> {
  const files: ManifestFile[] = [];
  for (const path of await listFiles(dir)) {
    if (path === MANIFEST_NAME) continue;
    info.signal?.throwIfAborted();
    const abs = join(dir, path);
    const { size, sha256 } = info.hasher
      ? await info.hasher(abs)
      : await hashFile(abs, info.signal);
    files.push({ path, size, sha256 });
  }
  const stages = info.stages ?? [];
  const dtype = pickString(stages, "dtype");
  const manifest: Manifest = {
    format: "ckpt-manifest",
    version: 1,
    tool: toolInfo(),
    createdAt: new Date().toISOString(),
    output: info.output,
    ...(info.config ? { config: info.config } : {}),
    inputs: info.inputs ?? [],
    backend: pickString(stages, "backend") ?? "none",
    ...(dtype === undefined ? {} : { dtype }),
    timings: {
      totalMs: info.totalMs ?? stages.reduce((s, st) => s + st.ms, 0),
      stages: stages.map((s) => ({ name: s.name, ms: s.ms })),
    },
    stages,
    files,
  };
  return manifest;
}

/** Writes `ckpt-manifest.json` into `dir`; returns the sha256 of the bytes written. */
export async function writeManifest(dir: string, manifest: Manifest): Promise<string> {
  const bytes = new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n");
  await Deno.writeFile(join(dir, MANIFEST_NAME), bytes);
  return sha256Hex(bytes);
}

/**
 * Reads and checks the shape of `dir/ckpt-manifest.json`: `MANIFEST_MISSING` when absent,
 * `MANIFEST_INVALID` when it does not parse or lacks the file list.
 */
export async function readManifest(dir: string): Promise<Manifest> {
  const file = join(dir, MANIFEST_NAME);
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (cause) {
    throw new CkptError(
      "MANIFEST_MISSING",
      `Cannot read the manifest of "${dir}": no ${MANIFEST_NAME}`,
      {
        file,
        cause,
      },
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new CkptError("MANIFEST_INVALID", `Cannot parse "${file}": ${(cause as Error).message}`, {
      file,
      cause,
    });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new CkptError(
      "MANIFEST_INVALID",
      `Cannot use "${file}": at ${issue.path.join(".") || "(root)"}: ${issue.message}`,
      { file },
    );
  }
  return raw as Manifest;
}

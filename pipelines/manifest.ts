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
import { join, relative, sep } from "node:path";
import { z } from "zod";
import { CkptError } from "../errors.ts";
import { osError } from "../errors/os.ts";
import { fsStep } from "./_faults.ts";
import denoJson from "../deno.json" with { type: "json" };
import { readTextInput } from "../formats/read_text.ts";
import { hashFile, sha256Hex } from "./hashing.ts";

// Moved to hashing.ts; still importable from here.
export { hashFile };

/** File name of the manifest inside a checkpoint folder. */
export const MANIFEST_NAME = "ckpt-manifest.json";

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
  /**
   * The files to list (relative paths, sorted); default every regular file in the folder. The
   * runner passes the files the stages reported, after checking the folder holds nothing else.
   */
  files?: readonly string[];
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
  for (const path of info.files ?? await listFiles(dir)) {
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

/**
 * Writes `ckpt-manifest.json` into `dir` and fsyncs it; returns the sha256 of the bytes written.
 * A file-system error is a coded one (`FS_NO_SPACE`, `FS_READ_ONLY`, ...).
 */
export async function writeManifest(dir: string, manifest: Manifest): Promise<string> {
  const bytes = new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n");
  const path = join(dir, MANIFEST_NAME);
  fsStep("write-manifest", path);
  try {
    const file = await Deno.open(path, { write: true, create: true, truncate: true });
    try {
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
      fsStep("fsync", path);
      await file.sync();
    } finally {
      file.close();
    }
  } catch (err) {
    await Deno.remove(path).catch(() => {});
    throw osError(err, "write the manifest", path);
  }
  return sha256Hex(bytes);
}

/**
 * Reads and checks the shape of `dir/ckpt-manifest.json`: `MANIFEST_MISSING` when absent,
 * `MANIFEST_INVALID` when it does not parse or lacks the file list.
 */
export async function readManifest(dir: string): Promise<Manifest> {
  const file = join(dir, MANIFEST_NAME);
  const text = await readTextInput(file, { code: "MANIFEST_MISSING", what: "manifest" });
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

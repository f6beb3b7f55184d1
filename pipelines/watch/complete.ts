/**
 * Decides whether a checkpoint folder is completely written, from the training side's own signals
 * plus a quiet period. The signals (rule `"signals"`):
 *
 * - **weights present**: a folder without weights is still being saved (HALOs' `save()` writes the
 *   tokenizer, `metrics.json`, `optimizer.pt` and `scheduler.pt` first and the weights last).
 *   Weights are `model*.safetensors`, `pytorch_model*.bin`, `adapter_model.*`, an index JSON or a
 *   torch.distributed.checkpoint folder.
 * - **DCP**: a folder with `*.distcp` files needs its `.metadata` (torch writes it last, by rename).
 * - **index JSON**: `*.index.json` must name only shards that exist and are complete; numbered
 *   shards (`model-00001-of-00002.safetensors`) without their index are incomplete (the index is
 *   written after the shards).
 * - **adapter**: `adapter_model.*` needs `adapter_config.json` (PEFT writes it after the weights).
 * - **structure**: every `.safetensors` file's header must cover the file exactly; every torch zip
 *   (`.bin`, `.pt`, `.pth`) must end with its end-of-central-directory record.
 * - **no temp files** (`*.tmp`, `*.part`, `*.partial`, `*.incomplete`, rsync's `.name.XXXXXX`).
 *
 * Other rules are file globs (relative to the folder, `/` for subfolders) that must match. The quiet
 * period applies to every rule set: the newest mtime of any file or folder inside must be at least
 * `quietSeconds` old, so a folder being copied or written slowly is left alone.
 *
 * @example A folder with truncated weights is incomplete
 * ```ts
 * import { checkComplete } from "./complete.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * const header = new TextEncoder().encode('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}');
 * const file = new Uint8Array(8 + header.length + 8);
 * new DataView(file.buffer).setBigUint64(0, BigInt(header.length), true);
 * file.set(header, 8);
 * await Deno.writeFile(`${dir}/model.safetensors`, file.subarray(0, file.length - 3));
 * let c = await checkComplete(dir, { complete: ["signals"], quietSeconds: 0 });
 * assert.equal(c.complete, false);
 * assert.equal(c.reason, "truncated");
 * await Deno.writeFile(`${dir}/model.safetensors`, file);
 * c = await checkComplete(dir, { complete: ["signals"], quietSeconds: 0 });
 * assert.equal(c.complete, true);
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";
import { RandomAccessFile } from "../../formats/_io.ts";
import { countHeaderEntries, MAX_HEADER_ENTRIES } from "../../formats/_safetensors_entries.ts";
import { globMatcher, SIGNALS } from "./config.ts";

/** Why a folder is (in)complete; `reason` is a stable keyword, `detail` names the file. */
export interface Completeness {
  /** True when every rule holds and the folder is quiet. */
  readonly complete: boolean;
  /**
   * `"complete"`, or the first failing rule: `"vanished"`, `"empty"`, `"temp-file"`, `"no-weights"`,
   * `"dcp-no-metadata"`, `"index-missing-shard"`, `"index-unreadable"`, `"shards-without-index"`,
   * `"adapter-no-config"`, `"truncated"`, `"missing-file"`, `"not-quiet"`.
   */
  readonly reason: string;
  /** The file or glob the reason concerns, if any. */
  readonly detail?: string;
  /** Number of files, total bytes and newest mtime (ms) seen. */
  readonly files: number;
  /** Total bytes of the files. */
  readonly bytes: number;
  /** Newest mtime (ms since epoch) of any file or folder inside. */
  readonly newestMtimeMs: number;
}

/** Options of {@linkcode checkComplete}. */
export interface CompleteOptions {
  /** `"signals"` and/or file globs (default `["signals"]`). */
  complete?: readonly string[];
  /** Quiet period in seconds (default 30). */
  quietSeconds?: number;
  /** Clock in ms (tests). Default `Date.now`. */
  now?: () => number;
}

interface FileInfo {
  rel: string;
  path: string;
  size: number;
}

/** Temp files of writers still at work: `*.tmp`, `*.part`, `*.partial`, `*.incomplete`, rsync's `.name.XXXXXX`. */
const TEMP_FILE = /(\.(tmp|part|partial|incomplete)$)|(^|\/)\.[^/]+\.[A-Za-z0-9]{6}$/i;
const NUMBERED_SHARD = /^(.+)-\d{5}-of-\d{5}\.(safetensors|bin)$/;
const WEIGHTS =
  /^(model.*\.safetensors|pytorch_model.*\.bin|adapter_model\.(safetensors|bin)|.*\.index\.json|consolidated.*\.(safetensors|pth|pt))$/;

/** Checks `folder` against the rules; never throws for missing or unreadable files (they make it incomplete). */
export async function checkComplete(
  folder: string,
  options: CompleteOptions = {},
): Promise<Completeness> {
  const rules = options.complete ?? [SIGNALS];
  const quietMs = (options.quietSeconds ?? 30) * 1000;
  const now = (options.now ?? Date.now)();
  const files: FileInfo[] = [];
  const dirs = new Set<string>();
  let newest = 0;
  let bytes = 0;
  const walk = async (dir: string, rel: string): Promise<void> => {
    const st = await Deno.stat(dir);
    newest = Math.max(newest, st.mtime?.getTime() ?? 0);
    dirs.add(rel);
    for await (const e of Deno.readDir(dir)) {
      const path = join(dir, e.name);
      const r = rel === "" ? e.name : `${rel}/${e.name}`;
      const s = await Deno.stat(path).catch(() => undefined);
      if (!s) continue;
      if (s.isDirectory) await walk(path, r);
      else if (s.isFile) {
        newest = Math.max(newest, s.mtime?.getTime() ?? 0);
        bytes += s.size;
        files.push({ rel: r, path, size: s.size });
      }
    }
  };
  let vanished = false;
  try {
    await walk(folder, "");
  } catch (err) {
    // Removed or replaced while we looked (a trainer rotating its checkpoints): not complete.
    if (!(err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory)) {
      throw err;
    }
    vanished = true;
  }
  const result = (reason: string, detail?: string): Completeness => ({
    complete: reason === "complete",
    reason,
    ...(detail === undefined ? {} : { detail }),
    files: files.length,
    bytes,
    newestMtimeMs: newest,
  });

  if (vanished) return result("vanished");
  if (files.length === 0) return result("empty");
  if (now - newest < quietMs) return result("not-quiet");
  for (const rule of rules) {
    if (rule === SIGNALS) {
      const failure = await checkSignals(files);
      if (failure) return result(failure[0], failure[1]);
    } else {
      const re = globMatcher(rule);
      if (!files.some((f) => re.test(f.rel)) && !dirs.has(rule)) {
        return result("missing-file", rule);
      }
    }
  }
  // A second look: anything that changed while we read headers means a writer is still busy.
  const again = await Deno.stat(folder).catch(() => undefined);
  if ((again?.mtime?.getTime() ?? 0) > newest) return result("not-quiet");
  return result("complete");
}

async function checkSignals(files: FileInfo[]): Promise<[string, string] | undefined> {
  const byRel = new Map(files.map((f) => [f.rel, f]));
  const temp = files.find((f) => TEMP_FILE.test(f.rel));
  if (temp) return ["temp-file", temp.rel];

  // torch.distributed.checkpoint: every folder with .distcp files needs its .metadata.
  const dcpDirs = new Set(files.filter((f) => f.rel.endsWith(".distcp")).map((f) => dirOf(f.rel)));
  for (const d of dcpDirs) {
    if (!byRel.has(d === "" ? ".metadata" : `${d}/.metadata`)) {
      return ["dcp-no-metadata", d === "" ? ".metadata" : `${d}/.metadata`];
    }
  }
  const hasDcp = files.some((f) => basename(f.rel) === ".metadata" && dcpDirs.has(dirOf(f.rel)));

  // Index JSONs name shards that must exist (and are checked structurally below).
  const indexed = new Set<string>();
  for (const f of files.filter((f) => f.rel.endsWith(".index.json"))) {
    let weightMap: Record<string, unknown>;
    try {
      const json = JSON.parse(await Deno.readTextFile(f.path));
      weightMap = json?.weight_map;
      if (typeof weightMap !== "object" || weightMap === null) throw new Error("no weight_map");
    } catch {
      return ["index-unreadable", f.rel];
    }
    for (const shard of new Set(Object.values(weightMap))) {
      const rel = dirOf(f.rel) === "" ? String(shard) : `${dirOf(f.rel)}/${String(shard)}`;
      if (!byRel.has(rel)) return ["index-missing-shard", rel];
      indexed.add(rel);
    }
  }
  const unindexed = files.find((f) => NUMBERED_SHARD.test(basename(f.rel)) && !indexed.has(f.rel));
  if (unindexed) return ["shards-without-index", unindexed.rel];

  const adapter = files.find((f) => /^adapter_model\.(safetensors|bin)$/.test(basename(f.rel)));
  if (adapter) {
    const cfg = dirOf(adapter.rel) === ""
      ? "adapter_config.json"
      : `${dirOf(adapter.rel)}/adapter_config.json`;
    if (!byRel.has(cfg)) return ["adapter-no-config", cfg];
  }

  if (!hasDcp && !files.some((f) => WEIGHTS.test(basename(f.rel)))) return ["no-weights", ""];

  for (const f of files) {
    const ok = f.rel.endsWith(".safetensors")
      ? await safetensorsComplete(f)
      : /\.(bin|pt|pth)$/.test(f.rel)
      ? await torchZipComplete(f)
      : true;
    if (!ok) return ["truncated", f.rel];
  }
  return undefined;
}

function dirOf(rel: string): string {
  const d = dirname(rel);
  return d === "." ? "" : d;
}

/** True when the safetensors header parses and its data offsets end exactly at the file's end. */
async function safetensorsComplete(f: FileInfo): Promise<boolean> {
  if (f.size < 8) return false;
  let file: RandomAccessFile | undefined;
  try {
    file = await RandomAccessFile.open(f.path);
    const n = new DataView((await file.readAt(0, 8)).buffer).getBigUint64(0, true);
    if (n > BigInt(Math.min(file.size - 8, 100_000_000))) return false;
    const bytes = await file.readAt(8, Number(n));
    // the reader's bound on entries (and so on parsing memory) holds here too
    if (countHeaderEntries(bytes, MAX_HEADER_ENTRIES) > MAX_HEADER_ENTRIES) return false;
    const header = JSON.parse(new TextDecoder().decode(bytes));
    let end = 0;
    for (const [key, value] of Object.entries(header as Record<string, unknown>)) {
      if (key === "__metadata__") continue;
      const offsets = (value as { data_offsets?: unknown })?.data_offsets;
      if (!Array.isArray(offsets) || typeof offsets[1] !== "number") return false;
      end = Math.max(end, offsets[1]);
    }
    return 8 + Number(n) + end === file.size;
  } catch {
    return false;
  } finally {
    await file?.close();
  }
}

/**
 * True when a torch file is a zip ending with its end-of-central-directory record (torch writes no
 * zip comment). Legacy (non-zip) torch files have no such marker and are accepted.
 */
async function torchZipComplete(f: FileInfo): Promise<boolean> {
  if (f.size < 4) return false;
  let file: RandomAccessFile | undefined;
  try {
    file = await RandomAccessFile.open(f.path);
    const head = await file.readAt(0, 4);
    const isZip = head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04;
    if (!isZip) return true;
    if (file.size < 22) return false;
    const tail = await file.readAt(file.size - 22, 22);
    return new DataView(tail.buffer, tail.byteOffset).getUint32(0, true) === 0x06054b50;
  } catch {
    return false;
  } finally {
    await file?.close();
  }
}

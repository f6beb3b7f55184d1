/**
 * Checks a finished checkpoint folder: the manifest's sizes and sha256 hashes (and that no file
 * was added or removed), that every file loads (safetensors headers, torch pickles through the
 * restricted unpickler, JSON), and, when the base model and the adapter are given, recomputes
 * sampled merged rows `W + s·B·A` in float64 and compares them with the stored ones.
 *
 * Verification failures do not throw: they come back as failed checks (`ok: false`).
 *
 * @example Verifying a folder written by the runner
 * ```ts
 * import { verifyCheckpoint } from "./verify.ts";
 * import { buildManifest, writeManifest } from "./manifest.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/metrics.json`, '{"counter": 64}');
 * await writeManifest(dir, await buildManifest(dir, { output: dir }));
 * assert.equal((await verifyCheckpoint(dir)).ok, true);
 * await Deno.writeTextFile(`${dir}/metrics.json`, '{"counter": 65}');
 * assert.equal((await verifyCheckpoint(dir)).ok, false);
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { dirname, join } from "node:path";
import { CkptError } from "../errors.ts";
import { isOsError, osError } from "../errors/os.ts";
import { decodeF32, type DType } from "../formats/dtype.ts";
import type { StateDict, TensorRef } from "../formats/state_dict.ts";
import { loadTorch } from "../formats/torch/load.ts";
import { openInput } from "../readers/kinds.ts";
import { stripStateDict } from "../readers/names.ts";
import { hashFile, listFiles, MANIFEST_NAME, readManifest } from "./manifest.ts";
import { folderEntries } from "./_folder_entries.ts";
import { parsePyJson } from "./stages/_pyjson.ts";

/** Options of {@linkcode verifyCheckpoint}. */
export interface VerifyOptions {
  /** Base model (folder or weights file) the checkpoint was merged from. */
  base?: string;
  /** LoRA adapter folder merged into it. With `base`, sampled merged rows are recomputed. */
  adapter?: string;
  /** Rows sampled per adapted tensor. Default 4. */
  samples?: number;
  /** Skip loading files (hashes only). Default false. */
  hashesOnly?: boolean;
  /** Aborts between files. */
  signal?: AbortSignal;
}

/** One check and its outcome. */
export interface VerifyCheck {
  /** What was checked. */
  kind: "manifest" | "hash" | "load" | "merge";
  /** File concerned (relative to the folder), if any. */
  file?: string;
  /** Tensor concerned, if any. */
  tensor?: string;
  /** Whether it passed. */
  ok: boolean;
  /** What was found. */
  message: string;
}

/** The outcome of {@linkcode verifyCheckpoint}. */
export interface VerifyResult {
  /** True when every check passed. */
  ok: boolean;
  /** The folder verified. */
  folder: string;
  /** Every check, in order. */
  checks: VerifyCheck[];
  /** Files whose hash was checked. */
  filesHashed: number;
  /** Files loaded. */
  filesLoaded: number;
  /** Merged rows recomputed. */
  rowsChecked: number;
}

const WEIGHT_FILES = /^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$/;

/** Opens `path` with the input kind called `kind` and counts its tensors (headers only). */
async function countTensors(path: string, kind: string): Promise<number> {
  const { stateDict } = await openInput(path, { kind });
  const n = stateDict.size;
  await stateDict.close();
  return n;
}

async function loadFile(folder: string, rel: string): Promise<string> {
  const path = join(folder, rel);
  if (rel.endsWith(".safetensors.index.json")) {
    return `shard index consistent with its shards, ${await countTensors(
      path,
      "hf-shards",
    )} tensors`;
  }
  if (rel.endsWith(".bin.index.json")) {
    const n = await countTensors(path, "torch-shards");
    return `shard index consistent with its shards, ${n} tensors`;
  }
  if (rel.endsWith(".json")) {
    // Python's json module (HALOs' json.dump of eval results) writes NaN and ±Infinity: the
    // grammar accepted is exactly what json.loads reads, no more.
    checkPyJson(await Deno.readTextFile(path), rel);
    return "JSON parses";
  }
  if (rel.endsWith(".jsonl")) {
    const lines = (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim() !== "");
    for (const l of lines) checkPyJson(l, rel);
    return `${lines.length} JSON lines parse`;
  }
  if (rel.endsWith(".safetensors")) {
    return `safetensors header valid, ${await countTensors(path, "safetensors")} tensors`;
  }
  if (rel.endsWith(".pt") || rel.endsWith(".bin") || rel.endsWith(".pth")) {
    // Any torch.save value (optimizer.pt, scheduler.pt), not only state dicts.
    const loaded = await loadTorch(path);
    await loaded.close();
    return "torch pickle loads (restricted unpickler)";
  }
  return "not a structured file (hash only)";
}

/** Opens the weights of a model folder or file as a lazy state dict, wrapper names stripped. */
export async function openModelWeights(path: string): Promise<StateDict> {
  const { stateDict } = await openInput(path);
  try {
    return stripStateDict(stateDict);
  } catch (err) {
    await stateDict.close();
    throw err;
  }
}

function relTolerance(dtype: DType): number {
  switch (dtype) {
    case "BF16":
      return 2 ** -8;
    case "F16":
      return 2 ** -11;
    default:
      return 2 ** -20;
  }
}

async function decodeRow(sd: StateDict, name: string, row: number): Promise<Float32Array> {
  const t = sd.require(name);
  return decodeF32(t.dtype, await t.read(row, row + 1));
}

/** Picks up to `n` distinct rows spread over `[0, rows)`: first, last and evenly in between. */
export function sampleRows(rows: number, n: number): number[] {
  if (rows <= n) return Array.from({ length: rows }, (_, i) => i);
  const out = new Set<number>();
  for (let i = 0; i < n; i++) out.add(Math.round((i * (rows - 1)) / Math.max(1, n - 1)));
  return [...out].sort((a, b) => a - b);
}

/** The input embedding of a checkpoint without `lm_head.weight` (a tied model), if any. */
function tiedInput(sd: StateDict): TensorRef | undefined {
  const key = [...sd.keys()].find((k) => /(^|\.)embed_tokens\.weight$/.test(k));
  return key === undefined ? undefined : sd.get(key);
}

async function checkMerge(
  folder: string,
  base: string,
  adapterPath: string,
  samples: number,
  checks: VerifyCheck[],
  signal: AbortSignal | undefined,
): Promise<number> {
  const { loadAdapter, classifyAdapterKey } = await import("../formats/peft.ts");
  const { resolveModuleScaling } = await import("../formats/peft_config.ts");
  const { untargetedReason } = await import("../formats/peft_targets.ts");
  const out = await openModelWeights(folder);
  const baseSd = await openModelWeights(base);
  const adapter = await loadAdapter(adapterPath);
  let rows = 0;
  try {
    const modules = new Map<string, { a?: string; b?: string; target: string }>();
    for (const key of adapter.tensors.keys()) {
      const k = classifyAdapterKey(key);
      if (k.kind !== "lora_A" && k.kind !== "lora_B") continue;
      const m = modules.get(k.module) ?? { target: k.target };
      if (k.kind === "lora_A") m.a = key;
      else m.b = key;
      modules.set(k.module, m);
    }
    if (modules.size === 0) {
      checks.push({ kind: "merge", ok: false, message: "the adapter has no LoRA factors" });
      return 0;
    }
    for (const [module, m] of [...modules].sort(([x], [y]) => x < y ? -1 : 1)) {
      signal?.throwIfAborted();
      if (!m.a || !m.b) {
        checks.push({
          kind: "merge",
          tensor: m.target,
          ok: false,
          message: "lora_A or lora_B missing",
        });
        continue;
      }
      const target = m.target;
      // a tied base stores lm_head once, as the input embedding: that is the head's original
      const w = baseSd.get(target) ?? (target === "lm_head.weight" ? tiedInput(baseSd) : undefined);
      const o = out.get(target);
      if (!w || !o) {
        checks.push({
          kind: "merge",
          tensor: target,
          ok: false,
          message: `${!w ? "base" : "output"} has no tensor ${target}`,
        });
        continue;
      }
      const aRef = adapter.tensors.require(m.a);
      const bRef = adapter.tensors.require(m.b);
      const [outF, inF] = [w.shape[0] ?? 0, w.shape[1] ?? 0];
      const r = aRef.shape[0] ?? 0;
      if (
        w.shape.length !== 2 || aRef.shape[1] !== inF || bRef.shape[0] !== outF ||
        bRef.shape[1] !== r || o.shape.join() !== w.shape.join()
      ) {
        checks.push({
          kind: "merge",
          tensor: target,
          ok: true,
          message:
            `skipped: layout W[${w.shape}] A[${aRef.shape}] B[${bRef.shape}] is not a plain Linear`,
        });
        continue;
      }
      // a module the adapter's config does not adapt keeps the base weight, as PEFT leaves it
      const untargeted = untargetedReason(adapter.config, module);
      const scale = untargeted ? 0 : resolveModuleScaling(adapter.config, module).scale;
      const a = decodeF32(aRef.dtype, await aRef.read());
      const rel = relTolerance(o.dtype);
      let worst = 0;
      let bad = 0;
      for (const i of sampleRows(outF, samples)) {
        const wRow = decodeF32(w.dtype, await w.read(i, i + 1));
        const oRow = await decodeRow(out, target, i);
        const bRow = decodeF32(bRef.dtype, await bRef.read(i, i + 1));
        for (let j = 0; j < inF; j++) {
          let delta = 0;
          let mag = 0;
          for (let k = 0; k < r; k++) {
            const p = bRow[k]! * a[k * inF + j]!;
            delta += p;
            mag += Math.abs(p);
          }
          const expected = wRow[j]! + scale * delta;
          const tol = rel * Math.abs(expected) +
            2 ** -20 * (Math.abs(wRow[j]!) + Math.abs(scale) * mag) + 1e-30;
          const err = Math.abs(oRow[j]! - expected);
          if (!(err <= tol)) bad++;
          worst = Math.max(worst, err / tol);
        }
        rows++;
      }
      checks.push({
        kind: "merge",
        tensor: target,
        ok: bad === 0,
        message: bad === 0 && untargeted
          ? `sampled rows equal the base (the config's ${untargeted} leaves ${module} unadapted)`
          : bad === 0
          ? `sampled rows match W + ${scale}·B·A (worst error ${worst.toFixed(3)} of tolerance)`
          : `${bad} sampled elements differ from W + ${scale}·B·A (worst ${
            worst.toExponential(2)
          }× tolerance)`,
      });
    }
  } finally {
    await out.close();
    await baseSd.close();
    await adapter.tensors.close();
  }
  return rows;
}

/**
 * Verifies `folder` (see the module doc). Resolves to a {@linkcode VerifyResult}, a folder that
 * cannot be read included (a failed `manifest` check with the OS error's code); only an abort
 * (`ABORTED`) rejects.
 */
export async function verifyCheckpoint(
  folder: string,
  options: VerifyOptions = {},
): Promise<VerifyResult> {
  const checks: VerifyCheck[] = [];
  let filesHashed = 0;
  let filesLoaded = 0;
  let rowsChecked = 0;
  const signal = options.signal;
  try {
    signal?.throwIfAborted();
    let listed: string[] = [];
    try {
      const manifest = await readManifest(folder);
      const tree = await folderEntries(folder);
      listed = manifest.files.map((f) => f.path);
      const present = new Set(tree.files);
      const listedFolders = new Set<string>();
      for (const p of listed) {
        for (let d = dirname(p); d !== "."; d = dirname(d)) listedFolders.add(d);
      }
      for (const f of manifest.files) {
        signal?.throwIfAborted();
        const other = tree.others.get(f.path);
        if (other !== undefined) {
          // never opened: a FIFO would block, a symlink points anywhere
          checks.push({
            kind: "hash",
            file: f.path,
            ok: false,
            message: `${article(other)} ${other}, not a regular file`,
          });
          tree.others.delete(f.path);
          continue;
        }
        if (!present.has(f.path)) {
          checks.push({ kind: "hash", file: f.path, ok: false, message: "missing" });
          continue;
        }
        present.delete(f.path);
        const got = await hashFile(join(folder, f.path), signal);
        filesHashed++;
        const ok = got.size === f.size && got.sha256 === f.sha256;
        checks.push({
          kind: "hash",
          file: f.path,
          ok,
          message: ok
            ? `sha256 ${got.sha256.slice(0, 12)}..., ${got.size} bytes`
            : got.size !== f.size
            ? `size ${got.size}, manifest says ${f.size}`
            : `sha256 ${got.sha256}, manifest says ${f.sha256}`,
        });
      }
      present.delete(MANIFEST_NAME);
      for (const extra of present) {
        checks.push({ kind: "hash", file: extra, ok: false, message: "not in the manifest" });
      }
      for (const [extra, kind] of tree.others) {
        // an empty folder on the way to a listed file cannot be: it would hold that file
        if (kind === "empty folder" && listedFolders.has(extra)) continue;
        checks.push({
          kind: "hash",
          file: extra,
          ok: false,
          message: `not in the manifest (${article(kind)} ${kind})`,
        });
      }
      checks.push({
        kind: "manifest",
        file: MANIFEST_NAME,
        ok: true,
        message: `${manifest.files.length} files listed, written by ${manifest.tool?.name ?? "?"} ${
          manifest.tool?.version ?? ""
        }`.trim(),
      });
    } catch (err) {
      // a folder that cannot be read or walked (a path past PATH_MAX) is a failed check too
      const coded = err instanceof CkptError
        ? err
        : isOsError(err) && !signal?.aborted
        ? osError(err, "read the folder", folder)
        : undefined;
      if (coded === undefined) throw err;
      checks.push({
        kind: "manifest",
        file: MANIFEST_NAME,
        ok: false,
        message: `[${coded.code}] ${coded.message}`,
      });
      listed = (await listFiles(folder).catch(() => [])).filter((f) => f !== MANIFEST_NAME);
    }

    if (!options.hashesOnly) {
      for (const rel of listed) {
        signal?.throwIfAborted();
        // only a regular file is opened (a symlink or FIFO was reported above)
        const st = await Deno.lstat(join(folder, rel)).catch(() => undefined);
        if (!st?.isFile) continue;
        try {
          const message = await loadFile(folder, rel);
          filesLoaded++;
          checks.push({ kind: "load", file: rel, ok: true, message });
        } catch (err) {
          checks.push({
            kind: "load",
            file: rel,
            ok: false,
            message: err instanceof CkptError
              ? `[${err.code}] ${err.message}`
              : (err as Error).message,
          });
        }
      }
    }

    if (options.base !== undefined && options.adapter !== undefined) {
      if (!listed.some((f) => WEIGHT_FILES.test(f.split("/").pop() ?? ""))) {
        checks.push({
          kind: "merge",
          ok: false,
          message: "the folder has no merged model weights to compare (an adapter-only save?)",
        });
      } else {
        try {
          rowsChecked = await checkMerge(
            folder,
            options.base,
            options.adapter,
            options.samples ?? 4,
            checks,
            signal,
          );
        } catch (err) {
          if (signal?.aborted) throw err;
          checks.push({
            kind: "merge",
            ok: false,
            message: err instanceof CkptError
              ? `[${err.code}] ${err.message}`
              : (err as Error).message,
          });
        }
      }
    }
  } catch (cause) {
    if (!signal?.aborted) throw cause;
    throw new CkptError("ABORTED", `Cannot finish verifying "${folder}": aborted`, { cause });
  }
  return {
    ok: checks.length > 0 && checks.every((c) => c.ok),
    folder,
    checks,
    filesHashed,
    filesLoaded,
    rowsChecked,
  };
}

/**
 * Throws `JSON_PARSE` unless `text` is JSON as Python's `json.loads` reads it. Strict JSON (the
 * common case, a 10 MB tokenizer.json included) is checked by the native parser; only text it
 * refuses goes through the Python-grammar reader (NaN, Infinity), which names the offset.
 */
function checkPyJson(text: string, file: string): void {
  try {
    JSON.parse(text);
  } catch {
    parsePyJson(text, file);
  }
}

/** "a" or "an" before `word`. */
function article(word: string): string {
  return /^[aeiouAEIOU]/.test(word) ? "an" : "a";
}

/**
 * Private: strict parsing and validation of a safetensors header, and the deterministic header the
 * reference writer (`safetensors` `prepare`, tensor.rs) produces. Public API in `safetensors.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";
import { type DType, DTYPES, isDType } from "./dtype.ts";
import { checkHeaderEntries } from "./_safetensors_entries.ts";

/** Largest header the reference accepts (`MAX_HEADER_SIZE` in safetensors' tensor.rs). */
export const MAX_HEADER_SIZE: number = 100_000_000;

/** Largest offset or dimension the safetensors JSON schema allows (2^48 - 1). */
const MAX_SIZE_T = 2 ** 48 - 1;

/** One tensor of a safetensors header. */
export interface SafetensorsTensorInfo {
  /** State-dict key. */
  readonly name: string;
  /** Element type. */
  readonly dtype: DType;
  /** Shape (`[]` for a scalar). */
  readonly shape: readonly number[];
  /** `[begin, end)` relative to the start of the data buffer (the byte after the header). */
  readonly dataOffsets: readonly [number, number];
}

/** A parsed, validated safetensors header. */
export interface SafetensorsHeader {
  /** File the header was read from. */
  readonly path: string;
  /** Byte length of the JSON header (`N`, padding included). */
  readonly headerSize: number;
  /** Absolute offset of the data buffer (`8 + N`). */
  readonly dataStart: number;
  /** File size in bytes (`8 + N + data`). */
  readonly fileSize: number;
  /** The `__metadata__` map, or `undefined` when the file has none. */
  readonly metadata: Record<string, string> | undefined;
  /** Tensors in data-offset order (the order their bytes appear in the file). */
  readonly tensors: readonly SafetensorsTensorInfo[];
}

/** Dtypes the reference knows that ckpt does not read (for a clearer message). */
const REFERENCE_ONLY = new Set([
  "U16",
  "U32",
  "U64",
  "C64",
  "F4",
  "F6_E2M3",
  "F6_E3M2",
  "F8_E8M0",
  "F8_E4M3FNUZ",
  "F8_E5M2FNUZ",
]);

/**
 * Top-level keys of a JSON object text, in order, duplicates included. `text` must already be
 * valid JSON whose top level is an object.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      i++;
      while (text.charCodeAt(i) !== 0x22) i += text.charCodeAt(i) === 0x5c /* \ */ ? 2 : 1;
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(start, i + 1)) as string);
        expectKey = false;
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    } else if (c === 0x2c /* , */ && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

function isSizeT(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= MAX_SIZE_T;
}

/**
 * True when a file of `fileSize` bytes whose first bytes are `head` starts like a safetensors file:
 * an 8-byte little-endian header length `N` with `2 <= N <= MAX_HEADER_SIZE` and `8 + N <= fileSize`,
 * then `{` (the format requires the header to begin with it). Never throws; `head` needs 9 bytes.
 */
export function startsLikeSafetensors(head: Uint8Array, fileSize: number): boolean {
  if (head.length < 9) return false;
  const n = new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true);
  return n >= 2n && n <= BigInt(MAX_HEADER_SIZE) && 8n + n <= BigInt(fileSize) &&
    head[8] === 0x7b;
}

/**
 * Reads the 8-byte length prefix and returns `N`; validates it against the limit and the file size.
 * `first8` holds the first bytes of the file (fewer than 8 when the file is shorter).
 */
export function checkHeaderLength(path: string, fileSize: number, first8: Uint8Array): number {
  if (fileSize < 8) {
    throw new CkptError(
      "SAFETENSORS_HEADER_TOO_SMALL",
      `Cannot read safetensors "${path}": the file has ${fileSize} bytes, fewer than the 8-byte header length`,
      { file: path },
    );
  }
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_SIZE)) {
    const head = new TextDecoder().decode(first8.subarray(0, 8));
    const hint = head.startsWith("version ")
      ? " (this looks like a Git LFS pointer, not the file: run `git lfs pull`)"
      : first8[0] === 0x50 && first8[1] === 0x4b
      ? " (this is a zip file: a torch.save checkpoint, not safetensors)"
      : first8[0] === 0x80
      ? " (this looks like a pickle: a legacy torch checkpoint, not safetensors)"
      : "";
    throw new CkptError(
      "SAFETENSORS_HEADER_TOO_LARGE",
      `Cannot read safetensors "${path}": header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit${hint}`,
      { file: path },
    );
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new CkptError(
      "SAFETENSORS_HEADER_LENGTH",
      `Cannot read safetensors "${path}": header length ${len} runs past the end of the ${fileSize}-byte file`,
      { file: path },
    );
  }
  return len;
}

/**
 * Parses and validates the header bytes (the `N` bytes after the length prefix) as the reference
 * does, plus the checks the reference skips (duplicate names, safe-integer sizes).
 */
export function parseHeader(
  path: string,
  fileSize: number,
  headerBytes: Uint8Array,
): SafetensorsHeader {
  const headerSize = headerBytes.byteLength;
  checkHeaderEntries(path, headerBytes);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    throw new CkptError(
      "SAFETENSORS_HEADER_UTF8",
      `Cannot read safetensors "${path}": header is not UTF-8`,
      { file: path },
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CkptError(
      "SAFETENSORS_HEADER_JSON",
      `Cannot read safetensors "${path}": header is not JSON (${(err as Error).message})`,
      { file: path },
    );
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new CkptError(
      "SAFETENSORS_HEADER_JSON",
      `Cannot read safetensors "${path}": header is JSON ${
        Array.isArray(json) ? "array" : json === null ? "null" : typeof json
      }, not an object`,
      { file: path },
    );
  }
  const seen = new Set<string>();
  for (const key of topLevelKeys(text)) {
    if (seen.has(key)) {
      throw new CkptError(
        "SAFETENSORS_DUPLICATE",
        `Cannot read safetensors "${path}": tensor "${key}" appears twice in the header`,
        { file: path, tensor: key },
      );
    }
    seen.add(key);
  }
  const obj = json as Record<string, unknown>;
  let metadata: Record<string, string> | undefined;
  const tensors: SafetensorsTensorInfo[] = [];
  for (const [name, value] of Object.entries(obj)) {
    if (name === "__metadata__") {
      if (value === null) continue;
      if (typeof value !== "object" || Array.isArray(value)) {
        throw new CkptError(
          "SAFETENSORS_METADATA",
          `Cannot read safetensors "${path}": __metadata__ is not an object of strings`,
          { file: path },
        );
      }
      metadata = {};
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== "string") {
          throw new CkptError(
            "SAFETENSORS_METADATA",
            `Cannot read safetensors "${path}": __metadata__ value of "${k}" is ${
              v === null ? "null" : typeof v
            }, not a string`,
            { file: path },
          );
        }
        metadata[k] = v;
      }
      continue;
    }
    tensors.push(parseEntry(path, name, value));
  }
  tensors.sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  let end = 0;
  for (const t of tensors) {
    const [b, e] = t.dataOffsets;
    if (b !== end || e < b) {
      throw new CkptError(
        "SAFETENSORS_OFFSETS",
        `Cannot read safetensors "${path}": tensor "${t.name}" has data_offsets [${b}, ${e}], ` +
          (b > end
            ? `leaving a hole after byte ${end}`
            : e < b
            ? "ending before it begins"
            : `overlapping the previous tensor (ends at ${end})`),
        { file: path, tensor: t.name },
      );
    }
    const expected = checkedByteLength(path, t);
    if (e - b !== expected) {
      throw new CkptError(
        "SAFETENSORS_TENSOR_SIZE",
        `Cannot read safetensors "${path}": tensor "${t.name}" is ${t.dtype}[${
          t.shape.join(", ")
        }] = ${expected} bytes but data_offsets [${b}, ${e}] hold ${e - b}`,
        { file: path, tensor: t.name },
      );
    }
    end = e;
  }
  const dataStart = 8 + headerSize;
  const dataSize = fileSize - dataStart;
  if (end > dataSize) {
    const last = tensors[tensors.length - 1]!;
    throw new CkptError(
      "SAFETENSORS_TRUNCATED",
      `Cannot read safetensors "${path}": tensor "${last.name}" ends at data byte ${end} but the file holds ${dataSize} data bytes (truncated?)`,
      { file: path, tensor: last.name },
    );
  }
  if (end < dataSize) {
    throw new CkptError(
      "SAFETENSORS_TRAILING",
      `Cannot read safetensors "${path}": ${
        dataSize - end
      } bytes after the last tensor's data (the header does not cover the file)`,
      { file: path },
    );
  }
  return { path, headerSize, dataStart, fileSize, metadata, tensors };
}

function parseEntry(path: string, name: string, value: unknown): SafetensorsTensorInfo {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new CkptError(
      "SAFETENSORS_ENTRY",
      `Cannot read safetensors "${path}": entry of tensor "${name}" is not an object`,
      { file: path, tensor: name },
    );
  }
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (!isDType(dtype)) {
    if (typeof dtype === "string" && REFERENCE_ONLY.has(dtype)) {
      throw new CkptError(
        "SAFETENSORS_DTYPE",
        `Cannot read safetensors "${path}": tensor "${name}" has dtype ${dtype}, which ckpt does not support`,
        { file: path, tensor: name },
      );
    }
    throw new CkptError(
      "SAFETENSORS_DTYPE",
      `Cannot read safetensors "${path}": tensor "${name}" has unknown dtype ${
        JSON.stringify(dtype) ?? "(missing)"
      }`,
      { file: path, tensor: name },
    );
  }
  if (!Array.isArray(shape) || !shape.every(isSizeT)) {
    throw new CkptError(
      "SAFETENSORS_SHAPE",
      `Cannot read safetensors "${path}": tensor "${name}" has shape ${
        JSON.stringify(shape) ?? "(missing)"
      }, not a list of non-negative integers`,
      { file: path, tensor: name },
    );
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSizeT)) {
    throw new CkptError(
      "SAFETENSORS_OFFSETS",
      `Cannot read safetensors "${path}": tensor "${name}" has data_offsets ${
        JSON.stringify(offsets) ?? "(missing)"
      }, not [begin, end] non-negative integers`,
      { file: path, tensor: name },
    );
  }
  return {
    name,
    dtype,
    shape: shape as number[],
    dataOffsets: [offsets[0] as number, offsets[1] as number],
  };
}

/** numel x size with overflow detection (BigInt; `SAFETENSORS_OVERFLOW` beyond 2^53). */
function checkedByteLength(path: string, t: SafetensorsTensorInfo): number {
  // Like the reference's checked multiplication, any prefix product that overflows fails, even
  // when a later dimension is 0; the limit here is 2^53 (JS safe integers) instead of 2^64.
  let n = BigInt(DTYPES[t.dtype].size);
  const limit = BigInt(Number.MAX_SAFE_INTEGER);
  for (const d of t.shape) {
    n *= BigInt(d);
    if (n > limit) {
      throw new CkptError(
        "SAFETENSORS_OVERFLOW",
        `Cannot read safetensors "${path}": tensor "${t.name}" has shape [${
          t.shape.join(", ")
        }] whose byte size overflows`,
        { file: path, tensor: t.name },
      );
    }
  }
  return Number(n);
}

/** Write order of the reference: dtype rank descending (its enum order), then name by bytes. */
const DTYPE_RANK: Record<DType, number> = {
  BOOL: 0,
  U8: 1,
  I8: 2,
  F8_E5M2: 3,
  F8_E4M3: 4,
  I16: 5,
  F16: 6,
  BF16: 7,
  I32: 8,
  F32: 9,
  F64: 10,
  I64: 11,
};

/** Compares two strings by their UTF-8 bytes (Rust's `String` order). */
export function compareUtf8(a: string, b: string): number {
  if (a === b) return 0;
  const enc = new TextEncoder();
  const x = enc.encode(a);
  const y = enc.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}

/** A planned safetensors file: the exact header bytes and the tensor layout. */
export interface PlannedFile {
  /** Length prefix + padded JSON header. */
  readonly headerBytes: Uint8Array;
  /** Tensors in data order. */
  readonly tensors: readonly SafetensorsTensorInfo[];
  /** Bytes of tensor data. */
  readonly dataBytes: number;
  /** Total file size. */
  readonly fileBytes: number;
}

/**
 * Plans a file as the reference writer does: tensors sorted by dtype rank descending then name,
 * contiguous offsets from 0, compact JSON with `__metadata__` first (keys sorted; omitted when
 * empty or undefined), padded with spaces to a multiple of 8.
 */
export function planFile(
  entries: readonly { name: string; dtype: DType; shape: readonly number[] }[],
  metadata: Record<string, string> | undefined,
): PlannedFile {
  const sorted = [...entries].sort((a, b) =>
    DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || compareUtf8(a.name, b.name)
  );
  const tensors: SafetensorsTensorInfo[] = [];
  const parts: string[] = [];
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    const keys = Object.keys(metadata).sort(compareUtf8);
    parts.push(
      `"__metadata__":{${
        keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(",")
      }}`,
    );
  }
  let offset = 0;
  for (const { name, dtype, shape } of sorted) {
    let n = DTYPES[dtype].size;
    for (const d of shape) n *= d;
    const dataOffsets: [number, number] = [offset, offset + n];
    offset += n;
    tensors.push({ name, dtype, shape: [...shape], dataOffsets });
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${dtype}","shape":[${shape.join(",")}],"data_offsets":[${
        dataOffsets[0]
      },${dataOffsets[1]}]}`,
    );
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const n = Math.ceil(json.length / 8) * 8;
  const headerBytes = new Uint8Array(8 + n).fill(0x20, 8 + json.length);
  new DataView(headerBytes.buffer).setBigUint64(0, BigInt(n), true);
  headerBytes.set(json, 8);
  return { headerBytes, tensors, dataBytes: offset, fileBytes: 8 + n + offset };
}

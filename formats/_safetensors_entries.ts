/**
 * Private: the bound on how many entries a safetensors header may hold, checked on the raw bytes
 * before anything is decoded. The 100 MB header limit alone admits ~1.5 million entries, whose
 * parse takes gigabytes; with this bound a header's parse stays under about half a gigabyte.
 * Public API in `safetensors.ts`.
 * @module
 */
import { CkptError } from "../errors.ts";

/**
 * Most entries a safetensors header may hold: tensors plus `__metadata__` values (2^18 =
 * 262,144). A 5 GB shard of the largest mixture-of-experts models holds a few thousand tensors;
 * parsing a header at the limit takes about 0.4 GB.
 */
export const MAX_HEADER_ENTRIES: number = 262_144;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const METADATA_KEY = new TextEncoder().encode("__metadata__");

function isMetadataKey(bytes: Uint8Array, start: number, end: number): boolean {
  if (end - start !== METADATA_KEY.length) return false;
  for (let k = 0; k < METADATA_KEY.length; k++) {
    if (bytes[start + k] !== METADATA_KEY[k]) return false;
  }
  return true;
}

/**
 * Counts the entries of a header's JSON bytes (the tensors, i.e. the top-level keys but
 * `__metadata__`, plus the keys of the `__metadata__` object), stopping as soon as the count
 * passes `limit`. One pass over the bytes, no allocation; never throws or loops on bytes that are
 * not JSON (they are refused by the parse that follows).
 */
export function countHeaderEntries(bytes: Uint8Array, limit: number = Infinity): number {
  let count = 0;
  let depth = 0;
  let expectKey = false;
  let metaKey = false; // the last top-level key was __metadata__
  let inMeta = false; // inside the __metadata__ object, at depth 2
  const n = bytes.length;
  for (let i = 0; i < n; i++) {
    const c = bytes[i]!;
    if (c === QUOTE) {
      const start = i + 1;
      i++;
      while (i < n && bytes[i] !== QUOTE) i += bytes[i] === BACKSLASH ? 2 : 1;
      if (!expectKey) continue;
      expectKey = false;
      if (depth === 1) {
        metaKey = isMetadataKey(bytes, start, i);
        if (!metaKey) count++;
      } else if (inMeta) count++;
      if (count > limit) return count;
    } else if (c === 0x7b /* { */) {
      depth++;
      if (depth === 1) expectKey = true;
      else if (depth === 2 && metaKey) inMeta = expectKey = true;
    } else if (c === 0x5b /* [ */) {
      depth++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      if (depth === 2) inMeta = false;
      depth--;
    } else if (c === 0x2c /* , */) {
      if (depth === 1) {
        expectKey = true;
        metaKey = false;
      } else if (depth === 2 && inMeta) expectKey = true;
    }
  }
  return count;
}

/**
 * Refuses (`SAFETENSORS_TOO_MANY_ENTRIES`, naming the file and the limit) a header of more than
 * {@linkcode MAX_HEADER_ENTRIES} entries, before its bytes are decoded.
 */
export function checkHeaderEntries(path: string, headerBytes: Uint8Array): void {
  const count = countHeaderEntries(headerBytes, MAX_HEADER_ENTRIES);
  if (count > MAX_HEADER_ENTRIES) {
    throw new CkptError(
      "SAFETENSORS_TOO_MANY_ENTRIES",
      `Cannot read safetensors "${path}": its header holds more than ${MAX_HEADER_ENTRIES} ` +
        `entries (tensors and __metadata__ values), the limit that bounds the memory parsing takes`,
      { file: path, details: { limit: MAX_HEADER_ENTRIES } },
    );
  }
}

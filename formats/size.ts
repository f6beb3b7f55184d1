/**
 * Byte sizes as users write them (`"5GB"`, `"500MB"`, `"2GiB"`, `1000`), parsed the way
 * huggingface_hub's `parse_size_to_int` does for decimal units (KB = 10^3, MB = 10^6, GB = 10^9,
 * TB = 10^12), plus binary units (KiB = 2^10 ... TiB = 2^40).
 *
 * @example
 * ```ts
 * import { parseSize } from "./size.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(parseSize("5GB"), 5_000_000_000);
 * assert.equal(parseSize("2GiB"), 2 * 2 ** 30);
 * assert.equal(parseSize(4096), 4096);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";

const UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

/**
 * Parses a size in bytes: a non-negative integer number, or a string `<number><unit>` with an
 * optional space, units case-insensitive (`KB`/`MB`/`GB`/`TB` decimal, `KiB`/`MiB`/`GiB`/`TiB`
 * binary, `B` or none for bytes). Fractions are allowed with a unit (`"1.5GB"`) and rounded down
 * to whole bytes, as Python's `int(float(...) * unit)` does. `SIZE_INVALID` otherwise.
 */
export function parseSize(size: string | number): number {
  if (typeof size === "number") {
    if (Number.isSafeInteger(size) && size >= 0) return size;
    throw new CkptError(
      "SIZE_INVALID",
      `Cannot parse size: ${size} is not a whole number of bytes`,
    );
  }
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/.exec(size);
  const unit = m ? UNITS[m[2]!.toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw new CkptError(
      "SIZE_INVALID",
      `Cannot parse size: "${size}" is not like "5GB", "500MB", "2GiB" or a byte count`,
    );
  }
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) {
    throw new CkptError("SIZE_INVALID", `Cannot parse size: "${size}" is too large`);
  }
  return bytes;
}

/** Formats bytes for people: `1.50 GB` (decimal units, like the sizes transformers prints). */
export function formatSize(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  const units = ["KB", "MB", "GB", "TB", "PB"];
  let v = bytes;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(2)} ${units[i]}`;
}

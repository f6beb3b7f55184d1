/**
 * JSON as Python's `json` module reads and writes it, for files the stages must write the way
 * HALOs / transformers do (`metrics.json`, `tokenizer_config.json`, `config.json`):
 * - ints and floats stay distinct (`2` vs `2.0`), ints of any size are exact (bigint),
 * - `NaN`, `Infinity` and `-Infinity` parse and print,
 * - object key order is kept exactly (a `Map`, so integer-like keys are not reordered),
 * - output matches `json.dumps(obj, indent=..., sort_keys=..., ensure_ascii=...)` byte for byte,
 *   floats printed as Python's `repr` prints them.
 * @module
 */
import { CkptError } from "../../errors.ts";

/** A float read from or written as JSON (so `2.0` keeps its point). */
export class JsonFloat {
  /** The value. */
  readonly value: number;
  /** Wraps `value`. */
  constructor(value: number) {
    this.value = value;
  }
}

/** A JSON value with Python's distinctions kept. */
export type PyJson =
  | null
  | boolean
  | string
  | number
  | bigint
  | JsonFloat
  | PyJson[]
  | Map<string, PyJson>;

/** Parses JSON text (plus Python's NaN/Infinity) into a {@linkcode PyJson} tree; `JSON_PARSE` on errors. */
export function parsePyJson(text: string, file?: string): PyJson {
  let i = 0;
  const name = file === undefined ? "JSON text" : `"${file}"`;
  const fail = (what: string): never => {
    throw new CkptError(
      "JSON_PARSE",
      `Cannot parse ${name}: ${what} at character ${i}`,
      file === undefined ? { offset: i } : { file, offset: i },
    );
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
  };
  const lit = (word: string): boolean => {
    if (text.startsWith(word, i)) {
      i += word.length;
      return true;
    }
    return false;
  };
  const str = (): string => {
    if (text[i] !== '"') fail("expected a string");
    const start = i;
    i++;
    let simple = true;
    while (i < text.length && text[i] !== '"') {
      const c = text.charCodeAt(i);
      if (c < 0x20) fail("control character in a string");
      if (text[i] === "\\") {
        simple = false;
        i += 2;
      } else i++;
    }
    if (i >= text.length) fail("unterminated string");
    i++;
    const raw = text.slice(start, i);
    if (simple) return raw.slice(1, -1);
    try {
      return JSON.parse(raw) as string;
    } catch {
      return fail("bad escape in a string");
    }
  };
  const num = (): PyJson => {
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) return fail("unexpected character");
    i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return new JsonFloat(Number(m[0]));
  };
  const value = (depth: number): PyJson => {
    if (depth > 512) fail("nesting deeper than 512");
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const map = new Map<string, PyJson>();
      ws();
      if (text[i] === "}") {
        i++;
        return map;
      }
      for (;;) {
        ws();
        const k = str();
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        map.set(k, value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return map;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr: PyJson[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    if (lit("true")) return true;
    if (lit("false")) return false;
    if (lit("null")) return null;
    if (lit("NaN")) return new JsonFloat(NaN);
    if (lit("Infinity")) return new JsonFloat(Infinity);
    if (lit("-Infinity")) return new JsonFloat(-Infinity);
    return num();
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail("trailing characters");
  return v;
}

/** Python's `repr(float)`: shortest round-trip digits, fixed for 1e-4 <= |x| < 1e16, else `1e-05`. */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, expStr] = x.toExponential().split("e") as [string, string];
  const exp = Number(expStr);
  const neg = mant.startsWith("-");
  const digits = mant.replace("-", "").replace(".", "");
  let out = "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) out = "0." + "0".repeat(-exp - 1) + digits;
    else if (digits.length > exp + 1) out = digits.slice(0, exp + 1) + "." + digits.slice(exp + 1);
    else out = digits + "0".repeat(exp + 1 - digits.length) + ".0";
  }
  if (out === "") {
    const m = digits.length > 1 ? digits[0] + "." + digits.slice(1) : digits;
    const e = Math.abs(exp);
    out = `${m}e${exp < 0 ? "-" : "+"}${e < 10 ? "0" : ""}${e}`;
  }
  return neg ? "-" + out : out;
}

function pyString(s: string, ensureAscii: boolean): string {
  let out = '"';
  for (let k = 0; k < s.length; k++) {
    const ch = s[k]!;
    const c = s.charCodeAt(k);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || (ensureAscii && c > 0x7e)) {
      out += "\\u" + c.toString(16).padStart(4, "0");
    } else out += ch;
  }
  return out + '"';
}

/** Options of {@linkcode dumpPyJson}, named as in Python's `json.dumps`. */
export interface DumpOptions {
  /** Spaces per level; undefined writes one line with `", "` and `": "` separators. */
  indent?: number;
  /** Sort object keys (`sort_keys=True`). Default false. */
  sortKeys?: boolean;
  /** Escape non-ASCII as `\uXXXX` (`ensure_ascii`). Default true, as in Python. */
  ensureAscii?: boolean;
}

/** `json.dumps(value, ...)` as Python writes it (no trailing newline). */
export function dumpPyJson(value: PyJson, options: DumpOptions = {}): string {
  const ensureAscii = options.ensureAscii ?? true;
  const indent = options.indent;
  const item = indent === undefined ? ", " : ",";
  const walk = (v: PyJson, level: number): string => {
    if (v === null) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (typeof v === "string") return pyString(v, ensureAscii);
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      return pyFloatRepr(v);
    }
    if (v instanceof JsonFloat) return pyFloatRepr(v.value);
    const nl = indent === undefined ? "" : "\n" + " ".repeat(indent * (level + 1));
    const close = indent === undefined ? "" : "\n" + " ".repeat(indent * level);
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      return "[" + v.map((x) => nl + walk(x, level + 1)).join(item) + close + "]";
    }
    const keys = [...v.keys()];
    if (keys.length === 0) return "{}";
    if (options.sortKeys) keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return "{" +
      keys.map((k) => nl + pyString(k, ensureAscii) + ": " + walk(v.get(k)!, level + 1)).join(
        item,
      ) +
      close + "}";
  };
  return walk(value, 0);
}

/** Converts a {@linkcode PyJson} tree to plain JS values (Maps to objects, floats to numbers). */
export function toPlain(v: PyJson): unknown {
  if (v instanceof JsonFloat) return v.value;
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of v) o[k] = toPlain(x);
    return o;
  }
  return v;
}

/** Converts plain JS values to a {@linkcode PyJson} tree (non-integer numbers become floats). */
export function fromPlain(v: unknown): PyJson {
  if (v === null || v === undefined) return null;
  if (typeof v === "boolean" || typeof v === "string" || typeof v === "bigint") return v;
  if (typeof v === "number") return Number.isInteger(v) ? v : new JsonFloat(v);
  if (v instanceof JsonFloat) return v;
  if (v instanceof Map) {
    const m = new Map<string, PyJson>();
    for (const [k, x] of v) m.set(String(k), fromPlain(x));
    return m;
  }
  if (Array.isArray(v)) return v.map(fromPlain);
  if (typeof v === "object") {
    const m = new Map<string, PyJson>();
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) m.set(k, fromPlain(x));
    return m;
  }
  return String(v);
}

/** True when `v` is a JSON object (a Map). */
export function isObject(v: PyJson | undefined): v is Map<string, PyJson> {
  return v instanceof Map;
}

/** The integer value of `v` (int, bigint in range, or an integral float), else undefined. */
export function asInt(v: PyJson | undefined): number | undefined {
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint" && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= 0n) return Number(v);
  if (v instanceof JsonFloat && Number.isInteger(v.value)) return v.value;
  return undefined;
}

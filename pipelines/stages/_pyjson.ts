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
  const r = new PyJsonReader(text, file);
  const v = r.value(0);
  r.ws();
  if (r.i !== text.length) r.fail("trailing characters");
  return v;
}

/** A recursive-descent reader over one JSON text. */
class PyJsonReader {
  /** Next character. */
  i = 0;
  constructor(readonly text: string, readonly file: string | undefined) {}

  fail(what: string): never {
    const name = this.file === undefined ? "JSON text" : `"${this.file}"`;
    throw new CkptError(
      "JSON_PARSE",
      `Cannot parse ${name}: ${what} at character ${this.i}`,
      this.file === undefined ? { offset: this.i } : { file: this.file, offset: this.i },
    );
  }
  ws(): void {
    const text = this.text;
    while (this.i < text.length) {
      const c = text.charCodeAt(this.i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.i++;
      else break;
    }
  }
  #lit(word: string): boolean {
    if (!this.text.startsWith(word, this.i)) return false;
    this.i += word.length;
    return true;
  }
  /** The character at the cursor is `c`: consume it. */
  #eat(c: string): boolean {
    if (this.text[this.i] !== c) return false;
    this.i++;
    return true;
  }
  str(): string {
    const text = this.text;
    if (text[this.i] !== '"') this.fail("expected a string");
    const start = this.i++;
    let simple = true;
    while (this.i < text.length && text[this.i] !== '"') {
      if (text.charCodeAt(this.i) < 0x20) this.fail("control character in a string");
      if (text[this.i] === "\\") {
        simple = false;
        this.i += 2;
      } else this.i++;
    }
    if (this.i >= text.length) this.fail("unterminated string");
    this.i++;
    const raw = text.slice(start, this.i);
    if (simple) return raw.slice(1, -1);
    try {
      return JSON.parse(raw) as string;
    } catch {
      return this.fail("bad escape in a string");
    }
  }
  #num(): PyJson {
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(
      this.text.slice(this.i, this.i + 400),
    );
    if (!m) return this.fail("unexpected character");
    this.i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return new JsonFloat(Number(m[0]));
  }
  #object(depth: number): Map<string, PyJson> {
    const map = new Map<string, PyJson>();
    this.ws();
    if (this.#eat("}")) return map;
    for (;;) {
      this.ws();
      const k = this.str();
      this.ws();
      if (!this.#eat(":")) this.fail("expected ':'");
      map.set(k, this.value(depth + 1));
      this.ws();
      if (this.#eat(",")) continue;
      if (this.#eat("}")) return map;
      this.fail("expected ',' or '}'");
    }
  }
  #array(depth: number): PyJson[] {
    const arr: PyJson[] = [];
    this.ws();
    if (this.#eat("]")) return arr;
    for (;;) {
      arr.push(this.value(depth + 1));
      this.ws();
      if (this.#eat(",")) continue;
      if (this.#eat("]")) return arr;
      this.fail("expected ',' or ']'");
    }
  }
  value(depth: number): PyJson {
    if (depth > 512) this.fail("nesting deeper than 512");
    this.ws();
    const c = this.text[this.i];
    if (c === "{") {
      this.i++;
      return this.#object(depth);
    }
    if (c === "[") {
      this.i++;
      return this.#array(depth);
    }
    if (c === '"') return this.str();
    if (this.#lit("true")) return true;
    if (this.#lit("false")) return false;
    if (this.#lit("null")) return null;
    if (this.#lit("NaN")) return new JsonFloat(NaN);
    if (this.#lit("Infinity")) return new JsonFloat(Infinity);
    if (this.#lit("-Infinity")) return new JsonFloat(-Infinity);
    return this.#num();
  }
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
    for (const [k, x] of v) {
      // an own "__proto__" key, as JSON.parse makes it (an assignment would set the prototype)
      Object.defineProperty(o, k, {
        value: toPlain(x),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
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

/**
 * Finds every error code the library's sources use, by reading them: the second net behind the type
 * check (`CkptError`'s constructor takes an `ErrorCode`, so `deno check` already rejects an unknown
 * literal). The scan looks at every place a code is written:
 *
 * - `new CkptError("CODE", ...)` (also `CkptError("CODE"` split over lines);
 * - calls of a helper declared in any source file with a parameter `code: ErrorCode` or a union
 *   of code literals, in that parameter's position (`this.#err("PICKLE_MEMO", ...)`,
 *   `fail("ZIP_EOCD", ...)`, `unmatched(key, what, "LORA_NO_BASE")`);
 * - `code: "CODE"` properties and parameters, including literal unions
 *   (`code: "LORA_NO_BASE" | "LORA_UNMATCHED"`, `readTextInput(p, { code: "INPUT_MISSING" })`);
 * - comparisons: `.code === "CODE"`, `code !== "CODE"`, `isCkptError(e, "CODE")`.
 *
 * ```sh
 * deno run -A tests/_helpers/error_codes.ts   # every code with the files that use it
 * ```
 * @module
 */
import { join, relative } from "node:path";
import { REPO_ROOT } from "./peer.ts";

/** One place a code is written. */
export interface CodeSite {
  /** The code, such as `SAFETENSORS_OFFSETS`. */
  code: string;
  /** File, relative to the repository root. */
  file: string;
  /** 1-based line. */
  line: number;
  /** Which pattern found it. */
  kind: "throw" | "helper" | "property" | "compare";
}

/** Folders and files that are not library sources. */
const NOT_SOURCES = new Set(["tests", "bench", "examples", "tools", "node_modules", "docs"]);

/** The file that defines the codes (its keys are not uses). */
export const CODES_FILE = "errors/codes.ts";

/** Every library source file (`.ts`), relative to `root`, sorted. */
export async function sourceFiles(root: string = REPO_ROOT): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for await (const e of Deno.readDir(join(root, dir))) {
      const rel = dir === "" ? e.name : `${dir}/${e.name}`;
      if (e.name.startsWith(".") || (dir === "" && NOT_SOURCES.has(e.name))) continue;
      if (e.isDirectory) await walk(rel);
      else if (e.isFile && e.name.endsWith(".ts")) out.push(rel);
    }
  };
  await walk("");
  return out.sort();
}

const CODE = `[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*`;
const LIT = `["'\`](${CODE})["'\`]`;

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * The top-level arguments (or parameters) of the parenthesis opened at `open`, as text, or
 * undefined when it does not close. Strings, template literals (with `${}`), comments and nested
 * brackets are skipped over.
 */
export function splitArgs(text: string, open: number): string[] | undefined {
  const args: string[] = [];
  let depth = 0;
  let start = open + 1;
  for (let i = open; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"' || c === "'") {
      for (i++; i < text.length && text[i] !== c; i++) if (text[i] === "\\") i++;
    } else if (c === "`") {
      i = skipTemplate(text, i);
    } else if (c === "/" && text[i + 1] === "/") {
      i = text.indexOf("\n", i);
      if (i < 0) return undefined;
    } else if (c === "/" && text[i + 1] === "*") {
      i = text.indexOf("*/", i + 2) + 1;
      if (i <= 0) return undefined;
    } else if (c === "(" || c === "[" || c === "{") {
      depth++;
    } else if (c === ")" || c === "]" || c === "}") {
      depth--;
      if (depth === 0) {
        const last = text.slice(start, i).trim();
        if (last !== "" || args.length > 0) args.push(last);
        return args;
      }
    } else if (c === "," && depth === 1) {
      args.push(text.slice(start, i).trim());
      start = i + 1;
    }
  }
  return undefined;
}

/** The index of the closing backtick of the template literal opened at `open`. */
function skipTemplate(text: string, open: number): number {
  for (let i = open + 1; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === "`") return i;
    else if (text[i] === "$" && text[i + 1] === "{") {
      let depth = 0;
      for (i++; i < text.length; i++) {
        if (text[i] === "`") i = skipTemplate(text, i);
        else if (text[i] === "{") depth++;
        else if (text[i] === "}" && --depth === 0) break;
      }
    }
  }
  return text.length;
}

const CODE_PARAM = new RegExp(
  `^code\\??\\s*:\\s*(?:ErrorCode\\b|["'\`]${"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*"}["'\`](?:\\s*\\|\\s*["'\`][A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*["'\`])*\\s*$)`,
);

/**
 * The helpers declared in `text` with a parameter `code` typed `ErrorCode` or a union of code
 * literals, each with the position of that parameter: `#err(code: ErrorCode, ...)` (0),
 * `const fail = (code: ErrorCode, ...) =>` (0), `unmatched = (key, what, code: "A" | "B") =>` (2).
 */
export function codeHelpers(text: string): Map<string, number> {
  const helpers = new Map<string, number>();
  const decl = /(#?[A-Za-z_$][\w$]*)\s*(?::\s*[A-Za-z_$][\w$]*\s*)?(?:=\s*(?:async\s*)?)?\(/g;
  for (const m of text.matchAll(decl)) {
    if (!/\bcode\??\s*:/.test(text.slice(m.index!, m.index! + 400))) continue;
    const params = splitArgs(text, m.index! + m[0].length - 1);
    const at = params?.findIndex((p) => CODE_PARAM.test(p)) ?? -1;
    if (at >= 0) helpers.set(m[1]!, at);
  }
  return helpers;
}

/**
 * The code sites in one file's text. Helper calls are found for the helpers declared in the file
 * and for `sharedHelpers` (declared in another source file, such as the unpickler's `err` method
 * that its opcode modules call).
 */
export function scanCodeSites(
  text: string,
  file: string,
  sharedHelpers: ReadonlyMap<string, number> = new Map(),
): CodeSite[] {
  const sites: CodeSite[] = [];
  const lineAt = (index: number): number => text.slice(0, index).split("\n").length;
  const add = (re: RegExp, kind: CodeSite["kind"]): void => {
    for (const m of text.matchAll(re)) {
      const start = m.index! + m[0].indexOf(m[1]!) - 1;
      sites.push({ code: m[1]!, file, line: lineAt(start), kind });
    }
  };
  add(new RegExp(`\\bCkptError\\(\\s*${LIT}`, "g"), "throw");
  // Calls of helpers with a code parameter: the literal passed in that position.
  const helpers = new Map([...sharedHelpers, ...codeHelpers(text)]);
  for (const [name, at] of helpers) {
    for (const m of text.matchAll(new RegExp(`(?<![\\w$#])${escapeRegExp(name)}\\(`, "g"))) {
      const arg = splitArgs(text, m.index! + m[0].length - 1)?.[at];
      const lit = arg?.match(new RegExp(`^${LIT}$`));
      if (lit) {
        sites.push({
          code: lit[1]!,
          file,
          line: lineAt(text.indexOf(arg!, m.index!)),
          kind: "helper",
        });
      }
    }
  }
  // `code: "A"`, `code?: "A" | "B"` (every literal of the union), `code: cond ? x : "A"`.
  const prop = `\\bcode\\??\\s*:\\s*(?:[^,;\\n{}?]*\\?[^,;\\n{}]*:\\s*)?`;
  for (const m of text.matchAll(new RegExp(`${prop}${LIT}(?:\\s*\\|\\s*${LIT})*`, "g"))) {
    for (const lit of m[0].matchAll(new RegExp(LIT, "g"))) {
      sites.push({ code: lit[1]!, file, line: lineAt(m.index! + lit.index!), kind: "property" });
    }
  }
  add(new RegExp(`\\bcode\\s*[!=]==?\\s*${LIT}`, "g"), "compare");
  add(new RegExp(`\\bisCkptError\\([^,()]*,\\s*${LIT}`, "g"), "compare");
  return sites;
}

/** Every code site in the library's sources under `root`. */
export async function collectCodeSites(root: string = REPO_ROOT): Promise<CodeSite[]> {
  const texts = new Map<string, string>();
  for (const file of await sourceFiles(root)) {
    if (file !== CODES_FILE) texts.set(file, await Deno.readTextFile(join(root, file)));
  }
  // Helpers are collected across files: one module may declare `err(code: ErrorCode, ...)` and
  // the modules it is split into call it.
  const shared = new Map([...texts.values()].flatMap((text) => [...codeHelpers(text)]));
  const sites: CodeSite[] = [];
  for (const [file, text] of texts) sites.push(...scanCodeSites(text, file, shared));
  return sites;
}

/** Codes mapped to the files that use them (sorted). */
export function codesByFile(sites: CodeSite[]): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const s of [...sites].sort((a, b) => a.code < b.code ? -1 : a.code > b.code ? 1 : 0)) {
    const files = map.get(s.code) ?? [];
    if (!files.includes(s.file)) files.push(s.file);
    map.set(s.code, files);
  }
  return map;
}

if (import.meta.main) {
  for (const [code, files] of codesByFile(await collectCodeSites())) {
    console.log(
      `${code.padEnd(32)} ${files.map((f) => relative(".", join(REPO_ROOT, f))).join(", ")}`,
    );
  }
}

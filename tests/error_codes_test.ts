import assert from "node:assert/strict";
import { join } from "node:path";
import { CkptError, ERROR_CODES, isCkptError } from "../errors.ts";
import {
  CODES_FILE,
  codesByFile,
  collectCodeSites,
  scanCodeSites,
  sourceFiles,
} from "./_helpers/error_codes.ts";
import { REPO_ROOT } from "./_helpers/peer.ts";
import { ERRORS_DOC, expectedErrorsDoc } from "../tools/docs.ts";

const sites = await collectCodeSites();
const used = codesByFile(sites);

Deno.test("the scan finds codes in every position a code is written", () => {
  const text = [
    `throw new CkptError(\n  "ZIP_EOCD", "Cannot read");`,
    `#err(code: ErrorCode, msg: string) {}`,
    `throw this.#err("PICKLE_MEMO", "memo entry 3 is missing");`,
    `const fail = (code: ErrorCode, msg: string) => new CkptError(code, msg);`,
    `throw fail('ZIP_NAME', "bad name");`,
    `readTextInput(p, { code: "INPUT_MISSING", what: "metrics" });`,
    `type K = { code: "LORA_NO_BASE" | "LORA_UNMATCHED" };`,
    `emit({ code: e instanceof CkptError ? e.code : "INTERNAL" });`,
    `if (err.code === "ABORTED") return 130;`,
    `assert.ok(isCkptError(e, "WATCH_STATE"));`,
    `other("NOT_A_SITE"); const x = "ALSO_NOT";`,
    `const unmatched = (key: string, what: string, code: "LORA_NO_BASE" | "LORA_UNMATCHED") => {};`,
    'unmatched(k, `no "${t}" (a, b)`, "LORA_UNMATCHED"); unmatched("NOT_A_CODE_ARG", w, c);',
    `throw code === "GATHER_DUPLICATE" ? a : b;`,
  ].join("\n");
  const found = scanCodeSites(text, "x.ts").map((s) => `${s.kind}:${s.code}@${s.line}`);
  assert.deepEqual(found.sort(), [
    "compare:ABORTED@10",
    "compare:GATHER_DUPLICATE@15",
    "compare:WATCH_STATE@11",
    "helper:LORA_UNMATCHED@14",
    "helper:PICKLE_MEMO@4",
    "helper:ZIP_NAME@6",
    "property:INPUT_MISSING@7",
    "property:INTERNAL@9",
    "property:LORA_NO_BASE@13",
    "property:LORA_NO_BASE@8",
    "property:LORA_UNMATCHED@13",
    "property:LORA_UNMATCHED@8",
    "throw:ZIP_EOCD@2",
  ]);
});

Deno.test("every code the sources use is in ERROR_CODES", () => {
  const unknown = sites.filter((s) => !Object.hasOwn(ERROR_CODES, s.code))
    .map((s) => `${s.code} (${s.file}:${s.line})`);
  assert.deepEqual(unknown, [], "add each to errors/codes.ts with its one line");
});

Deno.test("the scan is not empty: it sees each kind of site and every documented code", () => {
  const kinds = new Set(sites.map((s) => s.kind));
  assert.deepEqual([...kinds].sort(), ["compare", "helper", "property", "throw"]);
  // The unpickler's codes are raised only through its helper: the scan must still see them.
  for (const code of ["PICKLE_MEMO", "PICKLE_GLOBAL", "PICKLE_TRUNCATED", "ZIP_EOCD"] as const) {
    assert.ok(sites.some((s) => s.code === code && s.kind === "helper"), `${code} via a helper`);
  }
  const unused = Object.keys(ERROR_CODES).filter((c) => !used.has(c));
  assert.deepEqual(unused, [], "documented codes that no source raises or reports");
});

Deno.test("each code has one documented line", () => {
  for (const [code, line] of Object.entries(ERROR_CODES)) {
    assert.match(code, /^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/);
    assert.ok(line.length >= 20 && line.length <= 110, `${code}: ${line.length} characters`);
    assert.ok(!line.includes("\n") && /^[A-Z_a-z$"'`].*\.$/.test(line), `${code}: "${line}"`);
  }
});

Deno.test("docs/errors.md is generated from ERROR_CODES and current", async () => {
  const have = await Deno.readTextFile(join(REPO_ROOT, ERRORS_DOC));
  assert.ok(have === await expectedErrorsDoc(), `${ERRORS_DOC} is stale: run deno task docs`);
  for (const code of Object.keys(ERROR_CODES)) assert.ok(have.includes(`| \`${code}\``), code);
});

Deno.test("no error-code literal in the sources escapes the scan", async () => {
  // Outside comments, every string literal that is a code must be a site the scan found: a code
  // raised some way the scan does not know would make the checks above pass without seeing it.
  const at = new Set(sites.map((s) => `${s.file}:${s.line}:${s.code}`));
  const escaped: string[] = [];
  let literals = 0;
  for (const file of await sourceFiles()) {
    if (file === CODES_FILE) continue;
    const lines = (await Deno.readTextFile(join(REPO_ROOT, file))).split("\n");
    for (const [i, line] of lines.entries()) {
      if (/^\s*(\*|\/\/|\/\*)/.test(line)) continue;
      for (const m of line.matchAll(/["'`]([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)["'`]/g)) {
        if (!Object.hasOwn(ERROR_CODES, m[1]!)) continue;
        literals++;
        if (!at.has(`${file}:${i + 1}:${m[1]}`)) escaped.push(`${file}:${i + 1}: ${line.trim()}`);
      }
    }
  }
  assert.deepEqual(escaped, []);
  assert.ok(literals >= Object.keys(ERROR_CODES).length, `${literals} code literals`);
  assert.ok(sites.length >= literals, `${sites.length} sites for ${literals} literals`);
});

Deno.test("an unknown code does not type-check, and no source casts its way around that", async () => {
  // deno check (the gate's type check) fails if either line below compiles.
  const typeOnly = (): void => {
    // @ts-expect-error: not a code of ERROR_CODES
    new CkptError("NOT_A_CODE", "Cannot test: x");
    // @ts-expect-error: not a code of ERROR_CODES
    isCkptError(undefined, "NOT_A_CODE");
  };
  void typeOnly;
  const casts: string[] = [];
  for (const file of await sourceFiles()) {
    const text = await Deno.readTextFile(join(REPO_ROOT, file));
    for (const m of text.matchAll(/\bas\s+(?:ErrorCode|never|any)\b|<ErrorCode>/g)) {
      casts.push(`${file}: ${m[0]}`);
    }
  }
  assert.deepEqual(casts, []);
});

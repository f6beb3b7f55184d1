/**
 * Pipeline configs: JSONC (comments and trailing commas allowed), `${name}` variables, strict
 * validation with zod (unknown keys are errors), and every stage's options checked against the
 * stage's own schema before anything runs.
 *
 * A config looks like this (paths are relative to the config file's folder):
 *
 * ```jsonc
 * {
 *   "vars": { "run": "runs/llama3-kto" },
 *   "output": "${run}/FINAL",
 *   "stages": [
 *     { "use": "gatherShards", "from": "${run}/state/model" },
 *     { "use": "writeModel", "dtype": "bfloat16" }
 *   ]
 * }
 * ```
 *
 * Variables: `${name}` is looked up, first match wins, in
 * 1. the `vars` given by the caller (`ckpt run --var name=value`),
 * 2. the environment variable `CKPT_VAR_<name>`,
 * 3. the config's own `vars` block (whose values may use other variables).
 *
 * `${env:NAME}` reads the environment variable `NAME` directly; `$${` writes a literal `${`.
 * A variable that is never defined is a `CONFIG_VAR_UNDEFINED` error naming the JSON path.
 *
 * @example Loading a config from text
 * ```ts
 * import { parseConfig } from "./config.ts";
 * import { z } from "zod";
 * import assert from "node:assert/strict";
 *
 * const stages = {
 *   hello: {
 *     name: "hello",
 *     summary: "says hello",
 *     options: z.strictObject({ to: z.string() }),
 *     run: () => Promise.resolve(),
 *   },
 * };
 * const config = parseConfig(
 *   `{ "vars": { "who": "world" }, "output": "out/\${who}", "stages": [{ "use": "hello", "to": "\${who}", }] }`,
 *   { baseDir: "/runs", stages, env: {} },
 * );
 * assert.equal(config.output, "/runs/out/world");
 * assert.deepEqual(config.stages[0]!.options, { to: "world" });
 * ```
 * @module
 */
import { dirname, isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { CkptError } from "../errors.ts";
import type { SchemaIssue, Stage } from "./stage.ts";

/** One stage of a loaded config, its options parsed by the stage's schema (defaults applied). */
export interface ConfigStage {
  /** Stage name as written after `"use"`. */
  readonly use: string;
  /** Position in `stages` (0-based). */
  readonly index: number;
  /** The stage implementation from the registry. */
  readonly stage: Stage;
  /** Options after variable substitution and schema parsing. */
  readonly options: unknown;
}

/** A loaded, validated pipeline config. */
export interface PipelineConfig {
  /** Absolute output folder. */
  readonly output: string;
  /** Folder relative paths in stage options resolve against (the config file's folder). */
  readonly baseDir: string;
  /** The config file, when loaded from one. */
  readonly source: string | undefined;
  /** Every variable after resolution (config vars overridden by caller and environment). */
  readonly vars: Readonly<Record<string, string>>;
  /** The stages in order. */
  readonly stages: readonly ConfigStage[];
  /** Optional free-form description from the config. */
  readonly description: string | undefined;
  /** The `watch` block, passed through unvalidated for `ckpt watch` (it validates its own). */
  readonly watch: Record<string, unknown> | undefined;
}

/** Options of {@linkcode parseConfig} and {@linkcode loadConfig}. */
export interface ConfigOptions {
  /** Variables that override the config's `vars` (from `--var k=v`). Default: none. */
  vars?: Record<string, string>;
  /** Folder relative paths resolve against. Default: the config file's folder, else the cwd. */
  baseDir?: string;
  /** The stage registry. Default: the built-in stages. */
  stages?: Record<string, Stage>;
  /** Environment used for `CKPT_VAR_<name>` and `${env:NAME}`. Default: `Deno.env`. */
  env?: Record<string, string>;
  /** File name used in error messages. */
  source?: string;
}

/** The JSON value a variable may hold in a config's `vars` block. */
const VarValue = z.union([z.string(), z.number(), z.boolean()]);

/** Schema of a config file before the stages' own options are checked. */
const ConfigFileSchema: z.ZodType<RawConfig> = z.strictObject({
  $schema: z.string().optional(),
  description: z.string().optional(),
  vars: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]*$/), VarValue).optional(),
  output: z.string().min(1),
  stages: z.array(z.looseObject({ use: z.string().min(1) })).min(1),
  watch: z.record(z.string(), z.unknown()).optional(),
});

/** A config file as written (before substitution). */
export interface RawConfig {
  /** Editor schema hint, ignored. */
  $schema?: string | undefined;
  /** Free-form description. */
  description?: string | undefined;
  /** Variables. */
  vars?: Record<string, string | number | boolean> | undefined;
  /** Output folder. */
  output: string;
  /** Stages: `{ "use": name, ...options }`. */
  stages: Array<{ use: string; [k: string]: unknown }>;
  /** Watch settings for `ckpt watch`. */
  watch?: Record<string, unknown> | undefined;
}

/**
 * Removes `//` and `/* *\/` comments and trailing commas from JSONC text, keeping strings intact
 * and line numbers unchanged (comments become spaces), then parses it.
 * Throws `CONFIG_PARSE` with the line and column of a syntax error.
 */
export function parseJsonc(text: string, source = "config"): unknown {
  const out: string[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < n && text[j] !== '"') {
        if (text[j] === "\\") j++;
        j++;
      }
      out.push(text.slice(i, j + 1));
      i = j + 1;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < n && text[i] !== "\n") {
        out.push(" ");
        i++;
      }
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      const stop = end === -1 ? n : end + 2;
      for (; i < stop; i++) out.push(text[i] === "\n" ? "\n" : " ");
    } else if (c === ",") {
      // A trailing comma: the next significant character closes an object or array.
      let j = i + 1;
      for (;;) {
        while (j < n && /\s/.test(text[j]!)) j++;
        if (text[j] === "/" && text[j + 1] === "/") {
          while (j < n && text[j] !== "\n") j++;
        } else if (text[j] === "/" && text[j + 1] === "*") {
          const end = text.indexOf("*/", j + 2);
          j = end === -1 ? n : end + 2;
        } else break;
      }
      out.push(text[j] === "}" || text[j] === "]" ? " " : ",");
      i++;
    } else {
      out.push(c);
      i++;
    }
  }
  const stripped = out.join("");
  try {
    return JSON.parse(stripped);
  } catch (cause) {
    const pos = errorOffset(stripped);
    const before = stripped.slice(0, pos).split("\n");
    const where = ` at line ${before.length}, column ${before[before.length - 1]!.length + 1}`;
    throw new CkptError(
      "CONFIG_PARSE",
      `Cannot parse ${source}${where}: ${(cause as Error).message}`,
      { file: source, offset: pos, cause },
    );
  }
}

/** Offset of the first character JSON.parse rejects (V8 does not always say). */
function errorOffset(text: string): number {
  const atEnd = (prefix: string): boolean => {
    try {
      JSON.parse(prefix);
      return true;
    } catch (err) {
      const msg = (err as Error).message;
      if (/end of JSON input/i.test(msg)) return true;
      const pos = Number(msg.match(/position (\d+)/)?.[1] ?? NaN);
      return Number.isFinite(pos) && pos >= prefix.length;
    }
  };
  for (let p = 1; p <= text.length; p++) {
    // Literals (true, 1e5) are only judged whole.
    if (p < text.length && /[A-Za-z0-9.+-]/.test(text[p]!) && /[A-Za-z0-9.+-]/.test(text[p - 1]!)) {
      continue;
    }
    if (!atEnd(text.slice(0, p))) return p - 1;
  }
  return text.length;
}

/** Formats a JSON path like `stages[2].maxShardSize`. */
export function formatJsonPath(path: readonly PropertyKey[]): string {
  let s = "";
  for (const p of path) {
    if (typeof p === "number") s += `[${p}]`;
    else s += s === "" ? String(p) : `.${String(p)}`;
  }
  return s === "" ? "(root)" : s;
}

function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch {
    text = String(v);
  }
  if (text.length > 60) text = `${text.slice(0, 57)}...`;
  const kind = v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
  return `${text} (${kind})`;
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[p as string];
  }
  return v;
}

function expectedOf(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case "invalid_type":
      return issue.expected;
    case "unrecognized_keys":
      return `no key ${issue.keys.map((k) => `"${k}"`).join(", ")} (unknown keys are errors)`;
    case "invalid_value":
      return `one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "too_small":
      return `${issue.origin} of at least ${String(issue.minimum)}`;
    case "too_big":
      return `${issue.origin} of at most ${String(issue.maximum)}`;
    default:
      return issue.message;
  }
}

/**
 * Turns a zod error into a `CONFIG_INVALID` {@linkcode CkptError} whose message gives the JSON path,
 * the value found and what was expected (first issue; all issues are in `details.issues`).
 */
function configError(
  error: { readonly issues: readonly SchemaIssue[] },
  root: unknown,
  prefix: readonly PropertyKey[],
  source: string,
  knownKeys?: readonly string[],
): CkptError {
  const issues = error.issues.map((schemaIssue) => {
    // Zod's issues carry the per-code fields read below; other schemas fall back to `message`.
    const issue = schemaIssue as z.core.$ZodIssue;
    const path = [...prefix, ...issue.path];
    let found = describeValue(valueAt(root, path));
    let expected = expectedOf(issue);
    if (issue.code === "unrecognized_keys") {
      found = `unknown key${issue.keys.length > 1 ? "s" : ""} ${
        issue.keys.map((k) => `"${k}"`).join(", ")
      }`;
      if (issue.path.length === 0 && knownKeys && knownKeys.length > 0) {
        const hint = closest(issue.keys[0]!, knownKeys);
        expected = `one of ${knownKeys.join(", ")}${hint ? ` (did you mean "${hint}"?)` : ""}`;
      }
    }
    return { path: formatJsonPath(path), found, expected, message: issue.message };
  });
  const first = issues[0]!;
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
  return new CkptError(
    "CONFIG_INVALID",
    `Cannot load ${source}: at ${first.path}: found ${first.found}, expected ${first.expected}${more}`,
    {
      file: source,
      details: { path: first.path, found: first.found, expected: first.expected, issues },
    },
  );
}

/** Edit distance between two short strings (case-insensitive). */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const cur = [i];
    for (let j = 1; j <= y.length; j++) {
      cur[j] = Math.min(
        prev[j]! + 1,
        cur[j - 1]! + 1,
        prev[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1),
      );
    }
    prev = cur;
  }
  return prev[y.length]!;
}

/** The known name closest to `name`, when it is a plausible typo (distance at most 2). */
function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

/** Keys of an object schema (`z.strictObject`), when it is one. */
function schemaKeys(schema: unknown): string[] | undefined {
  const shape = (schema as { shape?: unknown }).shape;
  return shape && typeof shape === "object" ? Object.keys(shape) : undefined;
}

const TOP_KEYS = ["$schema", "description", "vars", "output", "stages", "watch"];

/** Resolves variables and substitutes `${name}` in every string of a JSON value. */
class Substituter {
  #resolved = new Map<string, string | number | boolean>();
  #resolving = new Set<string>();
  constructor(
    readonly callerVars: Record<string, string>,
    readonly configVars: Record<string, string | number | boolean>,
    readonly env: Record<string, string>,
    readonly source: string,
  ) {}

  lookup(name: string, path: string): string | number | boolean {
    if (name.startsWith("env:")) {
      const v = this.env[name.slice(4)];
      if (v === undefined) {
        throw new CkptError(
          "CONFIG_VAR_UNDEFINED",
          `Cannot substitute \${${name}} at ${path} in ${this.source}: the environment variable ${
            name.slice(4)
          } is not set`,
          { file: this.source, details: { path, variable: name } },
        );
      }
      return v;
    }
    const done = this.#resolved.get(name);
    if (done !== undefined) return done;
    if (Object.hasOwn(this.callerVars, name)) return this.#store(name, this.callerVars[name]!);
    const fromEnv = this.env[`CKPT_VAR_${name}`];
    if (fromEnv !== undefined) return this.#store(name, fromEnv);
    if (Object.hasOwn(this.configVars, name)) {
      const raw = this.configVars[name]!;
      if (typeof raw !== "string") return this.#store(name, raw);
      if (this.#resolving.has(name)) {
        throw new CkptError(
          "CONFIG_VAR_CYCLE",
          `Cannot resolve variable "${name}" in ${this.source}: it refers to itself through ${
            [...this.#resolving].join(" -> ")
          }`,
          { file: this.source, details: { path: `vars.${name}`, variable: name } },
        );
      }
      this.#resolving.add(name);
      try {
        return this.#store(name, this.substitute(raw, `vars.${name}`));
      } finally {
        this.#resolving.delete(name);
      }
    }
    throw new CkptError(
      "CONFIG_VAR_UNDEFINED",
      `Cannot substitute \${${name}} at ${path} in ${this.source}: the variable is never defined ` +
        `(define it in "vars", pass --var ${name}=..., or set CKPT_VAR_${name})`,
      { file: this.source, details: { path, variable: name } },
    );
  }

  #store(name: string, v: string | number | boolean): string | number | boolean {
    this.#resolved.set(name, v);
    return v;
  }

  /** Substitutes one string; a string that is exactly one `${name}` keeps a number/boolean var's type. */
  substitute(text: string, path: string): string | number | boolean {
    const whole = text.match(/^\$\{([^}]+)\}$/);
    if (whole) return this.lookup(whole[1]!, path);
    return text.replace(/\$(\$)?\{([^}]*)\}/g, (_m, escape: string | undefined, name: string) => {
      if (escape) return `\${${name}}`;
      return String(this.lookup(name, path));
    });
  }

  walk(value: unknown, path: PropertyKey[]): unknown {
    if (typeof value === "string") return this.substitute(value, formatJsonPath(path));
    if (Array.isArray(value)) return value.map((v, i) => this.walk(v, [...path, i]));
    if (value !== null && typeof value === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = this.walk(v, [...path, k]);
      return out;
    }
    return value;
  }

  all(): Record<string, string> {
    const names = new Set([
      ...Object.keys(this.configVars),
      ...Object.keys(this.callerVars),
    ]);
    const out: Record<string, string> = {};
    for (const name of names) out[name] = String(this.lookup(name, `vars.${name}`));
    return out;
  }
}

function processEnv(): Record<string, string> {
  try {
    return Deno.env.toObject();
  } catch {
    return {};
  }
}

let defaultRegistry: Record<string, Stage> | undefined;

/**
 * Registers the built-in stage registry used when {@linkcode ConfigOptions.stages} is not given.
 * The runner calls this with `pipelines/stages/registry.ts`; library users rarely need it.
 */
export function setDefaultStages(stages: Record<string, Stage>): void {
  defaultRegistry = stages;
}

/**
 * Loads the built-in stage registry (`pipelines/stages/registry.ts`) once and makes it the default.
 * Lazy, so programs that only use custom stages never load the built-ins.
 */
export async function builtinStages(): Promise<Record<string, Stage>> {
  if (!loadedBuiltins) {
    const { STAGES } = await import("./stages/registry.ts");
    loadedBuiltins = STAGES;
    defaultRegistry ??= STAGES;
  }
  return loadedBuiltins;
}
let loadedBuiltins: Record<string, Stage> | undefined;

/** The stage registry in use when none is passed (empty until the built-ins are loaded). */
export function defaultStages(): Record<string, Stage> {
  return defaultRegistry ?? {};
}

/**
 * Validates a config object (already parsed from JSONC): checks its shape, substitutes variables,
 * resolves the output against `baseDir`, and parses every stage's options with its schema.
 * Errors: `CONFIG_INVALID` (path, value found, expected), `CONFIG_UNKNOWN_STAGE`,
 * `CONFIG_VAR_UNDEFINED`, `CONFIG_VAR_CYCLE`.
 */
export function validateConfig(raw: unknown, options: ConfigOptions = {}): PipelineConfig {
  const source = options.source ?? "config";
  const top = ConfigFileSchema.safeParse(raw);
  if (!top.success) throw configError(top.error, raw, [], source, TOP_KEYS);
  const cfg = top.data;
  const registry = options.stages ?? defaultStages();
  const sub = new Substituter(
    options.vars ?? {},
    cfg.vars ?? {},
    options.env ?? processEnv(),
    source,
  );
  const baseDir = resolve(options.baseDir ?? Deno.cwd());
  const outputValue = sub.substitute(cfg.output, "output");
  if (typeof outputValue !== "string" || outputValue === "") {
    throw new CkptError(
      "CONFIG_INVALID",
      `Cannot load ${source}: at output: found ${
        describeValue(outputValue)
      }, expected a folder path`,
      { file: source, details: { path: "output" } },
    );
  }
  const output = isAbsolute(outputValue) ? resolve(outputValue) : resolve(baseDir, outputValue);
  const stages: ConfigStage[] = cfg.stages.map((entry, index) => {
    const stage = Object.hasOwn(registry, entry.use) ? registry[entry.use] : undefined;
    if (!stage) {
      const known = Object.keys(registry).sort().join(", ") || "none registered";
      const hint = closest(entry.use, Object.keys(registry));
      throw new CkptError(
        "CONFIG_UNKNOWN_STAGE",
        `Cannot load ${source}: at stages[${index}].use: found "${entry.use}", expected a stage name (${known})${
          hint ? ` (did you mean "${hint}"?)` : ""
        }`,
        { file: source, details: { path: `stages[${index}].use`, found: entry.use, known } },
      );
    }
    const { use: _use, ...rest } = entry;
    const substituted = sub.walk(rest, ["stages", index]);
    const parsed = stage.options.safeParse(substituted);
    if (!parsed.success) {
      throw configError(
        parsed.error,
        { stages: { [index]: substituted } },
        ["stages", index],
        source,
        schemaKeys(stage.options),
      );
    }
    return { use: entry.use, index, stage, options: parsed.data };
  });
  return {
    output,
    baseDir,
    source: options.source,
    vars: sub.all(),
    stages,
    description: cfg.description,
    watch: cfg.watch,
  };
}

/** Parses JSONC text and validates it with {@linkcode validateConfig}. */
export function parseConfig(text: string, options: ConfigOptions = {}): PipelineConfig {
  return validateConfig(parseJsonc(text, options.source ?? "config"), options);
}

/**
 * Reads and validates a config file; relative paths resolve against its folder (unless
 * `options.baseDir` is given). `CONFIG_READ` when the file cannot be read.
 */
export async function loadConfig(
  path: string,
  options: ConfigOptions = {},
): Promise<PipelineConfig> {
  const file = resolve(path);
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (cause) {
    throw new CkptError(
      "CONFIG_READ",
      `Cannot read config "${file}": ${(cause as Error).message}`,
      {
        file,
        cause,
      },
    );
  }
  const stages = options.stages ?? (defaultRegistry ?? await builtinStages());
  return parseConfig(text, {
    baseDir: dirname(file),
    ...options,
    stages,
    source: options.source ?? file,
  });
}

/**
 * Parses `--var name=value` strings into a record; `CONFIG_VAR_SYNTAX` for one without `=`.
 */
export function parseVarArgs(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0) {
      throw new CkptError(
        "CONFIG_VAR_SYNTAX",
        `Cannot read variable "${pair}": expected name=value`,
        { details: { found: pair } },
      );
    }
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

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
import { type Node, type ParseError, parseTree, printParseErrorCode } from "jsonc-parser";
import { z } from "zod";
import { CkptError } from "../errors.ts";
import { readTextInput } from "../formats/read_text.ts";
import type { Stage } from "./stage.ts";
import {
  closest,
  configError,
  describeValue,
  formatJsonPath,
  schemaKeys,
} from "./_config_errors.ts";
import { Substituter } from "./_vars.ts";

export { formatJsonPath };

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
 * Parses JSONC text (JSON plus `//` and `/* *\/` comments and trailing commas) with Microsoft's
 * `jsonc-parser`. Throws `CONFIG_PARSE` with the line and column of the first syntax error.
 */
export function parseJsonc(text: string, source = "config"): unknown {
  const errors: ParseError[] = [];
  const tree = parseTree(text, errors, { allowTrailingComma: true, disallowComments: false });
  const first = errors[0];
  if (first === undefined && tree !== undefined) return nodeValue(tree);
  const offset = first?.offset ?? text.length;
  const before = text.slice(0, offset).split("\n");
  const where = ` at line ${before.length}, column ${before[before.length - 1]!.length + 1}`;
  const what = first === undefined ? "ValueExpected" : printParseErrorCode(first.error);
  throw new CkptError(
    "CONFIG_PARSE",
    `Cannot parse ${source}${where}: ${what.replace(/(?<=[a-z])(?=[A-Z])/g, " ").toLowerCase()}`,
    { file: source, offset },
  );
}

/**
 * The value of a parsed node, built as `JSON.parse` builds it (a `"__proto__"` key is an own
 * property, the last of duplicate keys wins).
 */
function nodeValue(node: Node): unknown {
  if (node.type === "array") return (node.children ?? []).map(nodeValue);
  if (node.type !== "object") return node.value;
  const out: Record<string, unknown> = {};
  for (const prop of node.children ?? []) {
    const [key, value] = prop.children ?? [];
    if (key === undefined || value === undefined) continue;
    Object.defineProperty(out, String(key.value), {
      value: nodeValue(value),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

const TOP_KEYS = ["$schema", "description", "vars", "output", "stages", "watch"];

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
  const text = await readTextInput(file, { code: "CONFIG_READ", what: "config" });
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

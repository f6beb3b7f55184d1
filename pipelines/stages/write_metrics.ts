/**
 * The writeMetrics stage: `metrics.json` as HALOs' `BasicTrainer.save` writes it, i.e. the eval
 * results dict plus `counter` (the example counter HALOs reads back to resume), serialised as
 * Python's `json.dump(metrics, f)` does (one line, `", "`/`": "` separators, ASCII escapes, floats
 * as Python prints them, no trailing newline).
 *
 * Input: a JSON file (an object; `field` picks a nested object such as `"results"` of a HALOs eval
 * dump) or a JSONL log (one object a line; the last line, or the line whose `stepKey` equals
 * `step`), and/or inline `metrics`. The counter comes from `counter` in the config, else from the
 * selected input's `counter` (or its `stepKey` value); without one the stage fails with
 * `METRICS_COUNTER` before writing.
 *
 * @example Writing metrics.json from inline values
 * ```ts
 * import { writeMetricsFile } from "./write_metrics.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = await Deno.makeTempDir();
 * await writeMetricsFile(`${dir}/metrics.json`, { metrics: { "loss/eval": 0.5 }, counter: 64 });
 * assert.equal(await Deno.readTextFile(`${dir}/metrics.json`), '{"loss/eval": 0.5, "counter": 64}');
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { z } from "zod";
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import { readTextInput } from "../../formats/read_text.ts";
import { defineStage, type Stage } from "../stage.ts";
import type { Same } from "./_options.ts";
import { asInt, dumpPyJson, fromPlain, isObject, parsePyJson, type PyJson } from "./_pyjson.ts";

const intLike = z.union([
  z.number().int().nonnegative(),
  z.string().regex(/^\d+$/, "a non-negative integer").transform(Number),
]);
/** A counter: an int, a decimal string, or `""` for none (a preset variable left empty). */
const counterLike = z.union([intLike, z.literal("").transform(() => undefined)]);

/** The writeMetrics options schema (unknown keys rejected). */
const writeMetricsOptions = z.strictObject({
  /** JSON or JSONL file with the eval results (relative to the config). */
  from: z.string().min(1).optional(),
  /** Dot path of the object to take inside each JSON value (e.g. `"results"`); default the whole value. */
  field: z.string().min(1).optional(),
  /** JSONL: take the line whose `stepKey` equals this value (default: the last line). */
  step: intLike.optional(),
  /** Key naming the step in JSONL lines (default `"counter"`). */
  stepKey: z.string().min(1).default("counter"),
  /** Extra metric values (merged over the input's). */
  metrics: z.record(z.string(), z.unknown()).optional(),
  /** The example counter; overrides the input's. `""` means none (take the input's). */
  counter: counterLike.optional(),
  /** Output file name (default `metrics.json`). */
  file: z.string().min(1).default("metrics.json"),
});

/** Options of the writeMetrics stage, as a config writes them (the schema's input type). */
export interface WriteMetricsOptions {
  /** JSON or JSONL file with the eval results (relative to the config). */
  from?: string | undefined;
  /** Dot path of the object to take inside each JSON value (e.g. `"results"`); default the whole value. */
  field?: string | undefined;
  /** JSONL: take the line whose `stepKey` equals this value (default: the last line). */
  step?: number | string | undefined;
  /** Key naming the step in JSONL lines. Default `"counter"`. */
  stepKey?: string | undefined;
  /** Extra metric values (merged over the input's). */
  metrics?: Record<string, unknown> | undefined;
  /** The example counter; overrides the input's. `""` means none (take the input's). */
  counter?: number | string | undefined;
  /** Output file name. Default `metrics.json`. */
  file?: string | undefined;
}

const _sameOptions: Same<z.input<typeof writeMetricsOptions>, WriteMetricsOptions> = true;

/** What {@linkcode buildMetrics} produced. */
export interface MetricsResult {
  /** The exact file text. */
  text: string;
  /** The counter written. */
  counter: number;
  /** Metric keys written (counter last). */
  keys: string[];
}

function pick(value: PyJson, field: string | undefined, where: string): Map<string, PyJson> {
  let v: PyJson | undefined = value;
  if (field !== undefined) {
    for (const part of field.split(".")) {
      v = isObject(v) ? v.get(part) : undefined;
    }
  }
  if (!isObject(v)) {
    throw new CkptError(
      "METRICS_INPUT",
      `Cannot read metrics from ${where}: ${
        field === undefined ? "it is not a JSON object" : `field "${field}" is not an object`
      }`,
      { details: { field } },
    );
  }
  return v;
}

async function readInput(
  path: string,
  options: z.output<typeof writeMetricsOptions>,
): Promise<Map<string, PyJson>> {
  const text = await readTextInput(path, { code: "INPUT_MISSING", what: "metrics" });
  const trimmed = text.trim();
  // A single JSON document (possibly pretty-printed) versus JSON lines.
  const lines = trimmed.split(/\r?\n/).filter((l) => l.trim() !== "");
  let whole: PyJson | undefined;
  if (lines.length <= 1 || !path.endsWith(".jsonl")) {
    try {
      whole = parsePyJson(trimmed, path);
    } catch (err) {
      if (lines.length <= 1) throw err;
    }
  }
  if (whole !== undefined && !Array.isArray(whole)) {
    if (options.step !== undefined) {
      const obj = pick(whole, options.field, `"${path}"`);
      const at = asInt(obj.get(options.stepKey));
      if (at !== options.step) {
        throw new CkptError(
          "METRICS_STEP",
          `Cannot find step ${options.step} in "${path}": its ${options.stepKey} is ${at}`,
          { file: path },
        );
      }
      return obj;
    }
    return pick(whole, options.field, `"${path}"`);
  }
  const records: PyJson[] = Array.isArray(whole)
    ? whole
    : lines.map((l, n) => parsePyJson(l, `${path}:${n + 1}`));
  if (records.length === 0) {
    throw new CkptError("METRICS_INPUT", `Cannot read metrics from "${path}": it is empty`, {
      file: path,
    });
  }
  if (options.step === undefined) {
    return pick(records[records.length - 1]!, options.field, `the last line of "${path}"`);
  }
  for (let n = records.length - 1; n >= 0; n--) {
    const rec = records[n]!;
    const obj = pick(rec, options.field, `line ${n + 1} of "${path}"`);
    const top = isObject(rec) ? asInt(rec.get(options.stepKey)) : undefined;
    if (asInt(obj.get(options.stepKey)) === options.step || top === options.step) return obj;
  }
  throw new CkptError(
    "METRICS_STEP",
    `Cannot find step ${options.step} in "${path}": no line has ${options.stepKey} = ${options.step}`,
    { file: path, details: { step: options.step, stepKey: options.stepKey } },
  );
}

/**
 * Builds the `metrics.json` text from a resolved input path and/or inline values. Validates
 * everything (input parse, step, counter) and writes nothing.
 */
export async function buildMetrics(
  input: string | undefined,
  options: WriteMetricsOptions,
): Promise<MetricsResult> {
  const opts = writeMetricsOptions.parse(options);
  const out = new Map<string, PyJson>();
  if (input !== undefined) {
    for (const [k, v] of await readInput(input, opts)) out.set(k, v);
  }
  if (opts.metrics) {
    const extra = fromPlain(opts.metrics) as Map<string, PyJson>;
    for (const [k, v] of extra) out.set(k, v);
  }
  if (input === undefined && opts.metrics === undefined && opts.counter === undefined) {
    throw new CkptError(
      "METRICS_INPUT",
      "Cannot write metrics: give `from`, `metrics` or `counter`",
    );
  }
  const counter = opts.counter ?? asInt(out.get("counter")) ??
    (opts.stepKey !== "counter" ? asInt(out.get(opts.stepKey)) : undefined);
  if (counter === undefined || counter < 0) {
    throw new CkptError(
      "METRICS_COUNTER",
      `Cannot write metrics: no example counter (set "counter" in the config or give an input with "counter")`,
      input === undefined ? {} : { file: input },
    );
  }
  // HALOs assigns metrics['counter'] last: an existing key keeps its position, a new one goes last.
  out.set("counter", counter);
  return { text: dumpPyJson(out), counter, keys: [...out.keys()] };
}

/** Builds and writes `metrics.json` to `path` (see {@linkcode buildMetrics}). */
export async function writeMetricsFile(
  path: string,
  options: WriteMetricsOptions & { input?: string },
): Promise<MetricsResult> {
  const { input, ...rest } = options;
  const result = await buildMetrics(input, rest);
  await Deno.writeTextFile(path, result.text);
  return result;
}

/** The writeMetrics stage (config name `writeMetrics`). */
export const writeMetricsStage: Stage = defineStage({
  name: "writeMetrics",
  summary: "write metrics.json (eval results + counter) as HALOs does, from JSON/JSONL or config",
  options: writeMetricsOptions,
  split: "one-part",
  /**
   * Builds the metrics without writing them, so a missing or unparsable input, a missing step or an
   * unresolvable counter fails before any stage runs (`INPUT_MISSING`, `JSON_PARSE`,
   * `METRICS_INPUT`, `METRICS_STEP`, `METRICS_COUNTER`).
   */
  async preflight(ctx, options) {
    const input = options.from === undefined ? undefined : ctx.resolve(options.from);
    // A pipe or device is read once, by the stage: reading it here would consume its data.
    if (input !== undefined && !(await Deno.stat(input).then((s) => s.isFile, () => true))) return;
    await buildMetrics(input, options);
  },
  async run(ctx, options) {
    const input = options.from === undefined ? undefined : ctx.resolve(options.from);
    if (input !== undefined) ctx.addInput(input, "metrics");
    const result = await buildMetrics(input, options);
    const bytes = new TextEncoder().encode(result.text).byteLength;
    ctx.report("writeMetrics", { files: [{ path: options.file, bytes }], counter: result.counter });
    if (ctx.dryRun) return;
    await Deno.writeTextFile(join(ctx.outDir, options.file), result.text);
    ctx.emit({ type: "progress", stage: "writeMetrics", done: 1, total: 1, unit: "files" });
  },
});

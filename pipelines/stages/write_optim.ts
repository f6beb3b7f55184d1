/**
 * The writeOptim stage: `optimizer.pt` and `scheduler.pt` as HALOs' `BasicTrainer.save` writes
 * them, so a run resumes from the finished checkpoint:
 *
 * - `optimizer.pt` = `torch.save({'state_dict': optimizer.state_dict(), 'class': 'AdamW'})`
 * - `scheduler.pt` = `torch.save(scheduler.state_dict())`
 *
 * Inputs: a torch file of the run (`.pt`/`.bin`: the HALOs layout above, or a bare optimizer state
 * dict `{'state': ..., 'param_groups': ...}`), a JSON description with tensors in safetensors, or
 * any source added with `registerOptimizerSource` (`pipelines/optimizer_sources.ts`) (torch.distributed.checkpoint optimizer
 * folders). Python types survive (dict vs OrderedDict, tuples, int vs float, int or name keys).
 *
 * ## JSON + safetensors description
 * ```jsonc
 * {
 *   "class": "AdamW",                      // optional (default: the `optimizerClass` option, else "AdamW")
 *   "tensors": "optim.safetensors",        // optional; default: <this file's name>.safetensors beside it
 *   "state_dict": {                        // or put "state" and "param_groups" at the top level
 *     "state": {                           // keys that are decimal integers become int keys
 *       "0": { "step": 2.0, "exp_avg": { "__tensor__": "state.0.exp_avg" }, "exp_avg_sq": { "__tensor__": "state.0.exp_avg_sq" } }
 *     },
 *     "param_groups": [{ "lr": 0.001, "betas": { "__tuple__": [0.9, 0.999] }, "eps": 1e-08, "params": [0] }]
 *   }
 * }
 * ```
 * `{"__tensor__": name}` is a tensor of the safetensors file, `{"__tuple__": [...]}` a tuple,
 * `{"__float__": 1}` (or `1.0`) a float; a numeric `step` becomes the 0-d float32 tensor torch 2.x
 * stores. A scheduler JSON is the scheduler's state dict with the same conventions.
 *
 * ## Checks (before anything is written)
 * The state must be well formed (`OPTIM_INVALID`): every state key is listed in some param group.
 * When a model state dict is present, per-parameter tensors must fit the model's parameters
 * (`OPTIM_MISMATCH`): name-keyed states by name (PEFT names such as `...q_proj.lora_A.default.weight`
 * are checked against the base weight's dims), int-keyed states when `params` names the parameter
 * order (`"model"`: the state dict's floating-point tensors in order).
 *
 * @example Checking an optimizer state tree
 * ```ts
 * import { checkOptimizerState } from "./write_optim.ts";
 * import { pyDict, tensorOfBytes } from "../../formats/torch/values.ts";
 * import assert from "node:assert/strict";
 *
 * const exp = tensorOfBytes("F32", [2], new Uint8Array(8));
 * const opt = pyDict([
 *   ["state", pyDict([[0, pyDict([["exp_avg", exp]])]])],
 *   ["param_groups", [pyDict([["lr", 0.001], ["params", [0]]])]],
 * ]);
 * assert.deepEqual(checkOptimizerState(opt, "memory").params, [0]);
 * ```
 * @module
 */
import { z } from "zod";
import { basename, dirname, extname, join } from "node:path";
import { CkptError } from "../../errors.ts";
import { DTYPES } from "../../formats/dtype.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { openSafetensors } from "../../formats/safetensors.ts";
import { loadTorch } from "../../formats/torch/load.ts";
import { saveTorch } from "../../formats/torch/save.ts";
import {
  PyDict,
  pyDict,
  PyFloat,
  type PyKey,
  PyTuple,
  pyTypeName,
  type PyValue,
  tensorOfBytes,
  tensorsOf,
  type TorchTensor,
  torchTensor,
} from "../../formats/torch/values.ts";
import type { Stage, StageContext } from "../stage.ts";
import { isObject, JsonFloat, parsePyJson, type PyJson } from "./_pyjson.ts";
import { stripWrapperNames } from "./gather_shards.ts";
import { type LoadedValue, optimizerSources } from "../optimizer_sources.ts";
import "../optimizer_dcp.ts"; // registers the torch.distributed.checkpoint optimizer source

function isJsonPath(path: string): boolean {
  return /\.jsonc?$/i.test(path);
}

/** Converts a JSON description value to a Python value (see the module doc for the markers). */
function pyFromJson(
  v: PyJson,
  tensors: StateDict | undefined,
  file: string,
  key?: string,
): PyValue {
  if (v === null || typeof v === "boolean" || typeof v === "string" || typeof v === "bigint") {
    return v;
  }
  if (typeof v === "number") {
    return key === "step" ? stepTensor(v) : v;
  }
  if (v instanceof JsonFloat) {
    if (key === "step") return stepTensor(v.value);
    return Number.isInteger(v.value) ? new PyFloat(v.value) : v.value;
  }
  if (Array.isArray(v)) return v.map((x) => pyFromJson(x, tensors, file));
  if (v.size === 1 && v.has("__tensor__")) {
    const name = v.get("__tensor__");
    if (typeof name !== "string") {
      throw new CkptError(
        "OPTIM_INVALID",
        `Cannot read "${file}": __tensor__ needs a tensor name`,
        {
          file,
        },
      );
    }
    const ref = tensors?.get(name);
    if (!ref) {
      throw new CkptError(
        "OPTIM_INVALID",
        `Cannot find tensor "${name}" for "${file}": ${
          tensors ? "it is not in the tensors file" : "no tensors file"
        }`,
        { file, tensor: name },
      );
    }
    return torchTensor(ref);
  }
  if (v.size === 1 && v.has("__tuple__")) {
    const items = v.get("__tuple__");
    if (!Array.isArray(items)) {
      throw new CkptError("OPTIM_INVALID", `Cannot read "${file}": __tuple__ needs a list`, {
        file,
      });
    }
    return new PyTuple(items.map((x) => pyFromJson(x, tensors, file)));
  }
  if (v.size === 1 && v.has("__float__")) {
    const x = v.get("__float__");
    const n = typeof x === "number" ? x : x instanceof JsonFloat ? x.value : NaN;
    return Number.isInteger(n) ? new PyFloat(n) : n;
  }
  const d = pyDict([]);
  for (const [k, x] of v) {
    const pk: PyKey = /^-?\d+$/.test(k) && Number.isSafeInteger(Number(k)) ? Number(k) : k;
    d.set(pk, pyFromJson(x, tensors, file, k));
  }
  return d;
}

function stepTensor(step: number): TorchTensor {
  return tensorOfBytes("F32", [], new Uint8Array(new Float32Array([step]).buffer));
}

/**
 * Loads a torch file or a JSON description (with its safetensors tensors) as a Python value.
 * `tensorsPath` overrides where the JSON's tensors come from.
 */
export async function loadValue(
  path: string,
  tensorsPath?: string,
  keys: "int" | "name" = "int",
): Promise<LoadedValue> {
  try {
    await Deno.stat(path);
  } catch (cause) {
    throw new CkptError("INPUT_MISSING", `Cannot read "${path}": it does not exist`, {
      file: path,
      cause,
    });
  }
  for (const source of optimizerSources()) {
    if (await source.detect(path)) return await source.load(path, { keys });
  }
  if (!isJsonPath(path)) {
    const loaded = await loadTorch(path);
    return { value: loaded.value, close: () => loaded.close() };
  }
  const json = parsePyJson(await Deno.readTextFile(path), path);
  let tfile = tensorsPath;
  if (tfile === undefined && isObject(json) && typeof json.get("tensors") === "string") {
    tfile = join(dirname(path), json.get("tensors") as string);
  }
  if (tfile === undefined) {
    const sibling = join(dirname(path), basename(path, extname(path)) + ".safetensors");
    try {
      await Deno.stat(sibling);
      tfile = sibling;
    } catch {
      // no tensors file: fine when the description holds no tensors
    }
  }
  const tensors = tfile === undefined ? undefined : await openSafetensors(tfile);
  try {
    let body: PyJson = json;
    if (isObject(json) && json.has("tensors")) {
      body = new Map([...json].filter(([k]) => k !== "tensors"));
    }
    const value = pyFromJson(body, tensors, path);
    return { value, close: async () => await tensors?.close() };
  } catch (err) {
    await tensors?.close();
    throw err;
  }
}

/** What {@linkcode checkOptimizerState} found. */
export interface OptimizerStateInfo {
  /** Parameter ids in group order (ints, or names for name-keyed states). */
  params: PyKey[];
  /** `"int"` or `"name"`. */
  keyed: "int" | "name";
  /** Number of per-parameter state entries. */
  entries: number;
}

/** Validates the structure of an optimizer `state_dict()` (`OPTIM_INVALID`). */
export function checkOptimizerState(sd: PyValue, file: string): OptimizerStateInfo {
  const bad = (what: string): never => {
    throw new CkptError("OPTIM_INVALID", `Cannot use the optimizer state of "${file}": ${what}`, {
      file,
    });
  };
  if (!(sd instanceof PyDict)) return bad(`expected a dict, found ${pyTypeName(sd)}`);
  const state = sd.get("state");
  const groups = sd.get("param_groups");
  if (!(state instanceof PyDict)) return bad(`"state" is ${pyTypeName(state)}, not a dict`);
  if (!Array.isArray(groups)) return bad(`"param_groups" is ${pyTypeName(groups)}, not a list`);
  const params: PyKey[] = [];
  const seen = new Set<PyKey>();
  for (const [gi, g] of groups.entries()) {
    if (!(g instanceof PyDict)) return bad(`param group ${gi} is ${pyTypeName(g)}`);
    const ps = g.get("params");
    if (!Array.isArray(ps)) return bad(`param group ${gi} has no "params" list`);
    for (const p of ps) {
      if (typeof p !== "number" && typeof p !== "string") {
        return bad(`param group ${gi} lists ${pyTypeName(p)} as a parameter`);
      }
      if (seen.has(p)) return bad(`parameter ${JSON.stringify(p)} is in two param groups`);
      seen.add(p);
      params.push(p);
    }
  }
  const keyed = params.length > 0 && typeof params[0] === "string" ? "name" : "int";
  if (params.some((p) => (typeof p === "string") !== (keyed === "name"))) {
    return bad("param groups mix int and name parameter ids");
  }
  for (const k of state.keys()) {
    if (!seen.has(k)) {
      throw new CkptError(
        "OPTIM_MISMATCH",
        `Cannot use the optimizer state of "${file}": state entry ${
          JSON.stringify(k)
        } belongs to no param group`,
        { file, details: { key: String(k) } },
      );
    }
    if (!(state.get(k) instanceof PyDict)) return bad(`state entry ${String(k)} is not a dict`);
  }
  return { params, keyed, entries: state.size };
}

/** Normalises a (possibly PEFT-wrapped) parameter name to the model's key. */
function modelKeyOf(name: string): string {
  let k = stripWrapperNames(name);
  if (k.startsWith("base_model.model.")) k = k.slice("base_model.model.".length);
  k = k.replace(/\.default(?=\.|$)/g, "");
  k = k.replace(/\.modules_to_save(?=\.)/, "").replace(/\.original_module(?=\.)/, "");
  return k.replace(/\.base_layer\./, ".");
}

/** The expected shape of a parameter named `name` (PEFT names derive from the base weight), or a reason. */
function expectedShape(name: string, sd: StateDict): readonly number[] | string {
  const k = modelKeyOf(name);
  const direct = sd.get(k);
  if (direct) return direct.shape;
  const m =
    /^(.*)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)$/
      .exec(k);
  if (m) {
    const base = sd.get(`${m[1]}.weight`);
    if (!base || base.shape.length < 2) return `the model has no 2-d "${m[1]}.weight"`;
    return `lora:${m[2]}:${base.shape.join("x")}`;
  }
  return `the model has no parameter "${k}"`;
}

function shapeFits(actual: readonly number[], expected: readonly number[] | string): boolean {
  if (typeof expected !== "string") {
    return actual.length === expected.length && actual.every((d, i) => d === expected[i]);
  }
  const m = /^lora:([^:]+):(\d+)x(\d+)/.exec(expected);
  if (!m) return false;
  const out = Number(m[2]);
  const inn = Number(m[3]);
  switch (m[1]) {
    case "lora_A.weight":
      return actual.length >= 2 && actual[1] === inn;
    case "lora_B.weight":
      return actual.length >= 2 && actual[0] === out;
    case "lora_embedding_A":
      return actual.length === 2 && actual[1] === out;
    case "lora_embedding_B":
      return actual.length === 2 && actual[0] === inn;
    case "lora_magnitude_vector":
      return actual.length === 1 && actual[0] === out;
  }
  return false;
}

/**
 * Checks the per-parameter tensors of an optimizer state against the model (`OPTIM_MISMATCH`).
 * `params`: for int-keyed states, the parameter names in optimizer order (`"model"`: the float
 * tensors of `model` in order); name-keyed states are checked by name.
 */
export function checkOptimizerAgainstModel(
  sd: PyDict,
  model: StateDict,
  file: string,
  params?: "model" | readonly string[],
): number {
  const info = checkOptimizerState(sd, file);
  const state = sd.get("state") as PyDict;
  let order: readonly string[] | undefined;
  if (info.keyed === "int" && params !== undefined) {
    order = params === "model"
      ? [...model].filter(([, r]) => DTYPES[r.dtype].float).map(([n]) => n)
      : params;
  }
  let checked = 0;
  for (const [k, entry] of state) {
    let name: string;
    if (typeof k === "string") name = k;
    else if (order) {
      const n = order[Number(k)];
      if (n === undefined) {
        throw new CkptError(
          "OPTIM_MISMATCH",
          `Cannot match optimizer state ${
            String(k)
          } of "${file}" to a parameter: the model has ${order.length}`,
          { file, details: { index: String(k), parameters: order.length } },
        );
      }
      name = n;
    } else continue;
    const expected = expectedShape(name, model);
    for (const [slot, t] of tensorsOf(entry)) {
      if (t.shape.length === 0) continue; // step and other scalars
      if (!shapeFits(t.shape, expected)) {
        throw new CkptError(
          "OPTIM_MISMATCH",
          `Cannot use the optimizer state of "${file}" for this model: ${name} ${slot} has shape [${
            t.shape.join(", ")
          }] but ${
            typeof expected === "string" && !expected.startsWith("lora:")
              ? expected
              : `the parameter is [${
                typeof expected === "string" ? expected.split(":")[2] : expected.join(", ")
              }]`
          }`,
          { file, tensor: name, details: { slot, shape: [...t.shape] } },
        );
      }
    }
    checked++;
  }
  return checked;
}

/** Renumbers a name-keyed optimizer state to torch's int keys (params numbered in group order). */
export function toIntKeys(sd: PyDict): PyDict {
  const groups = sd.get("param_groups") as PyDict[];
  const ids = new Map<PyKey, number>();
  const newGroups = groups.map((g) => {
    const ng = new PyDict(g.entries(), g.kind);
    ng.set(
      "params",
      (g.get("params") as PyKey[]).map((p) => {
        if (!ids.has(p)) ids.set(p, ids.size);
        return ids.get(p)!;
      }),
    );
    return ng;
  });
  const state = sd.get("state") as PyDict;
  const newState = new PyDict([], state.kind);
  for (const [k, v] of state) newState.set(ids.get(k) ?? (k as number), v);
  const out = new PyDict(sd.entries(), sd.kind);
  out.set("state", newState);
  out.set("param_groups", newGroups);
  return out;
}

/** The writeOptim options schema (unknown keys rejected). */
const writeOptimOptions = z.strictObject({
  /** Optimizer input: torch `.pt`/`.bin` or JSON description (relative to the config). */
  optimizer: z.string().min(1).optional(),
  /** safetensors file with the JSON description's tensors (default: from the JSON or beside it). */
  optimizerTensors: z.string().min(1).optional(),
  /** Optimizer class name written as `'class'` (default: the input's, else `"AdamW"`). */
  optimizerClass: z.string().min(1).optional(),
  /** Scheduler input: torch `.pt` or JSON (relative to the config). */
  scheduler: z.string().min(1).optional(),
  /** safetensors file with the scheduler JSON's tensors, if any. */
  schedulerTensors: z.string().min(1).optional(),
  /** Keep the state's keys (`"keep"`, default) or renumber name keys to ints (`"int"`). */
  keys: z.enum(["keep", "int"]).default("keep"),
  /** Parameter order of an int-keyed state for the model check: `"model"` or a list of names. */
  params: z.union([z.literal("model"), z.array(z.string())]).optional(),
  /** Check the state against the model's parameters when a state dict is present. Default true. */
  check: z.boolean().default(true),
});

/** Options of the writeOptim stage, as a config writes them. */
export interface WriteOptimOptions {
  /** Optimizer input: torch `.pt`/`.bin` or JSON description (relative to the config). */
  optimizer?: string | undefined;
  /** safetensors file with the JSON description's tensors (default: named in the JSON, or beside it). */
  optimizerTensors?: string | undefined;
  /** Optimizer class name written as `'class'` (default: the input's, else `"AdamW"`). */
  optimizerClass?: string | undefined;
  /** Scheduler input: torch `.pt` or JSON (relative to the config). */
  scheduler?: string | undefined;
  /** safetensors file with the scheduler JSON's tensors, if any. */
  schedulerTensors?: string | undefined;
  /** Keep the state's keys (`"keep"`, default) or renumber name keys to ints (`"int"`). */
  keys?: "keep" | "int" | undefined;
  /** Parameter order of an int-keyed state for the model check: `"model"` or a list of names. */
  params?: "model" | string[] | undefined;
  /** Check the state against the model's parameters when a state dict is present. Default true. */
  check?: boolean | undefined;
}

/** The prepared optimizer payload (validated, not written). */
export interface PreparedOptimizer {
  /** `{'state_dict': ..., 'class': ...}`. */
  value: PyDict;
  /** Class name. */
  className: string;
  /** Per-parameter entries. */
  entries: number;
  /** `"int"` or `"name"` keys as written. */
  keyed: "int" | "name";
  /** Releases the input. */
  close(): Promise<void>;
}

/** Loads and validates an optimizer input into the HALOs `optimizer.pt` value. */
export async function prepareOptimizer(
  path: string,
  options: {
    tensors?: string;
    className?: string;
    keys?: "keep" | "int";
    model?: StateDict | undefined;
    params?: "model" | readonly string[];
    check?: boolean;
  } = {},
): Promise<PreparedOptimizer> {
  const loaded = await loadValue(path, options.tensors);
  try {
    const v = loaded.value;
    let sd: PyValue | undefined;
    let cls: string | undefined;
    if (v instanceof PyDict && v.has("state_dict")) {
      sd = v.get("state_dict");
      const c = v.get("class");
      if (typeof c === "string") cls = c;
    } else sd = v;
    if (v instanceof PyDict && !v.has("state_dict") && typeof v.get("class") === "string") {
      cls = v.get("class") as string;
      const rest = new PyDict([...v.entries()].filter(([k]) => k !== "class"), v.kind);
      sd = rest;
    }
    const info = checkOptimizerState(sd!, path);
    let state = sd as PyDict;
    if (options.check !== false && options.model) {
      checkOptimizerAgainstModel(state, options.model, path, options.params ?? loaded.paramNames);
    }
    if (options.keys === "int" && info.keyed === "name") state = toIntKeys(state);
    const className = options.className ?? cls ?? "AdamW";
    const value = pyDict([["state_dict", state], ["class", className]]);
    return {
      value,
      className,
      entries: info.entries,
      keyed: options.keys === "int" ? "int" : info.keyed,
      close: loaded.close,
    };
  } catch (err) {
    await loaded.close();
    throw err;
  }
}

function tensorBytes(v: PyValue): number {
  let n = 0;
  for (const [, t] of tensorsOf(v)) n += t.shape.reduce((a, b) => a * b, 1) * DTYPES[t.dtype].size;
  return n;
}

function requireInputs(options: z.output<typeof writeOptimOptions>): void {
  if (options.optimizer === undefined && options.scheduler === undefined) {
    throw new CkptError(
      "OPTIM_INVALID",
      "Cannot write optimizer state: give `optimizer` and/or `scheduler`",
    );
  }
}

/** Loads a scheduler input and checks it is a dict (`SCHEDULER_INVALID`). */
async function loadScheduler(path: string, tensors: string | undefined): Promise<LoadedValue> {
  const sched = await loadValue(path, tensors);
  if (!(sched.value instanceof PyDict)) {
    await sched.close();
    throw new CkptError(
      "SCHEDULER_INVALID",
      `Cannot use the scheduler state of "${path}": expected a dict, found ${
        pyTypeName(sched.value)
      }`,
      { file: path },
    );
  }
  return sched;
}

/** The writeOptim stage (config name `writeOptim`). */
export const writeOptimStage: Stage = {
  name: "writeOptim",
  summary: "write optimizer.pt ({'state_dict', 'class'}) and scheduler.pt as HALOs does",
  options: writeOptimOptions,
  /**
   * Loads the inputs' structure before any stage runs (torch archives' pickles, JSON descriptions
   * with their safetensors headers, DCP metadata; no tensor data) and validates it, so a missing,
   * non-torch or malformed optimizer or scheduler fails first (`INPUT_MISSING`, `TORCH_*`,
   * `OPTIM_INVALID`, `OPTIM_MISMATCH`, `SCHEDULER_INVALID`). The check against the model's
   * parameters waits for the run.
   */
  async preflight(ctx: StageContext, options: z.output<typeof writeOptimOptions>): Promise<void> {
    requireInputs(options);
    if (options.optimizer !== undefined) {
      const optim = await prepareOptimizer(ctx.resolve(options.optimizer), {
        ...(options.optimizerTensors === undefined
          ? {}
          : { tensors: ctx.resolve(options.optimizerTensors) }),
        check: false,
      });
      await optim.close();
    }
    if (options.scheduler !== undefined) {
      const sched = await loadScheduler(
        ctx.resolve(options.scheduler),
        options.schedulerTensors === undefined ? undefined : ctx.resolve(options.schedulerTensors),
      );
      await sched.close();
    }
  },
  async run(ctx: StageContext, options: z.output<typeof writeOptimOptions>): Promise<void> {
    requireInputs(options);
    const closers: (() => Promise<void>)[] = [];
    try {
      let optim: PreparedOptimizer | undefined;
      let sched: LoadedValue | undefined;
      if (options.optimizer !== undefined) {
        const path = ctx.resolve(options.optimizer);
        ctx.addInput(path, "optimizer");
        optim = await prepareOptimizer(path, {
          ...(options.optimizerTensors === undefined
            ? {}
            : { tensors: ctx.resolve(options.optimizerTensors) }),
          ...(options.optimizerClass === undefined ? {} : { className: options.optimizerClass }),
          keys: options.keys,
          model: ctx.stateDict,
          ...(options.params === undefined ? {} : { params: options.params }),
          check: options.check,
        });
        closers.push(optim.close);
      }
      if (options.scheduler !== undefined) {
        const path = ctx.resolve(options.scheduler);
        ctx.addInput(path, "scheduler");
        sched = await loadScheduler(
          path,
          options.schedulerTensors === undefined
            ? undefined
            : ctx.resolve(options.schedulerTensors),
        );
        closers.push(sched.close);
      }
      const files: { path: string; bytes: number }[] = [];
      if (ctx.dryRun) {
        if (optim) files.push({ path: "optimizer.pt", bytes: tensorBytes(optim.value) });
        if (sched) files.push({ path: "scheduler.pt", bytes: tensorBytes(sched.value) });
        ctx.report("writeOptim", { files, estimated: true, class: optim?.className });
        return;
      }
      let done = 0;
      const total = (optim ? 1 : 0) + (sched ? 1 : 0);
      if (optim) {
        const r = await saveTorch(join(ctx.outDir, "optimizer.pt"), optim.value, {
          signal: ctx.signal,
        });
        files.push({ path: "optimizer.pt", bytes: r.bytes });
        ctx.emit({ type: "progress", stage: "writeOptim", done: ++done, total, unit: "files" });
      }
      if (sched) {
        const r = await saveTorch(join(ctx.outDir, "scheduler.pt"), sched.value, {
          signal: ctx.signal,
        });
        files.push({ path: "scheduler.pt", bytes: r.bytes });
        ctx.emit({ type: "progress", stage: "writeOptim", done: ++done, total, unit: "files" });
      }
      ctx.report("writeOptim", {
        files,
        ...(optim ? { class: optim.className, entries: optim.entries, keys: optim.keyed } : {}),
      });
    } finally {
      for (const c of closers) await c();
    }
  },
};

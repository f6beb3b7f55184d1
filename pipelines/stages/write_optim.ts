/**
 * The writeOptim stage: `optimizer.pt` and `scheduler.pt` as HALOs' `BasicTrainer.save` writes
 * them, so a run resumes from the finished checkpoint:
 *
 * - `optimizer.pt` = `torch.save({'state_dict': optimizer.state_dict(), 'class': 'AdamW'})`
 * - `scheduler.pt` = `torch.save(scheduler.state_dict())`
 *
 * Inputs: a torch file of the run (`.pt`/`.bin`: the HALOs layout above, or a bare optimizer state
 * dict `{'state': ..., 'param_groups': ...}`), a JSON description with tensors in safetensors, a
 * torch.distributed.checkpoint optimizer folder, or anything an optimizer source passed to
 * {@linkcode createWriteOptimStage} (`optimizerSources: [...]`, `readers/optimizer.ts`) reads.
 * Python types survive (dict vs OrderedDict, tuples, int vs float, int or name keys).
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
import { join } from "node:path";
import { CkptError } from "../../errors.ts";
import { DTYPES } from "../../formats/dtype.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { saveTorch } from "../../formats/torch/save.ts";
import { PyDict, pyDict, pyTypeName, type PyValue, tensorsOf } from "../../formats/torch/values.ts";
import type { LoadedValue, OptimizerSource } from "../../readers/optimizer.ts";
import { defineStage, type Stage, type StageContext } from "../stage.ts";
import { checkOptimizerAgainstModel, checkOptimizerState, toIntKeys } from "./_optim_check.ts";
import { inputSource, loadInput, type LoadValueOptions } from "./_optim_load.ts";
import {
  closeInputs,
  keepInputs,
  type KeptLoads,
  type LoadedOptimizer,
  type OptimInputs,
  takeInputs,
} from "./_optim_kept.ts";
import { FileWitness } from "./_file_witness.ts";

export {
  checkOptimizerAgainstModel,
  checkOptimizerState,
  type OptimizerStateInfo,
  toIntKeys,
} from "./_optim_check.ts";
export { loadValue } from "./_optim_load.ts";

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

/** What {@linkcode prepareOptimizer} takes besides the path. */
export interface PrepareOptimizerOptions {
  /** safetensors file with a JSON description's tensors. */
  tensors?: string;
  /** Class name written as `'class'` (default: the input's, else `"AdamW"`). */
  className?: string;
  /** Keep the state's keys (`"keep"`, default) or renumber name keys to ints (`"int"`). */
  keys?: "keep" | "int";
  /** The model to check the per-parameter tensors against. */
  model?: StateDict | undefined;
  /** Parameter order of an int-keyed state for the model check. */
  params?: "model" | readonly string[];
  /** Check against `model` (default true). */
  check?: boolean;
  /** Extra optimizer sources, asked before the built-in ones. */
  optimizerSources?: readonly OptimizerSource[];
}

/** Loads and validates an optimizer input into the HALOs `optimizer.pt` value. */
export async function prepareOptimizer(
  path: string,
  options: PrepareOptimizerOptions = {},
): Promise<PreparedOptimizer> {
  const loaded = await loadOptimizer(path, options.tensors, options.optimizerSources ?? []);
  try {
    return finishOptimizer(loaded, path, options);
  } catch (err) {
    await loaded.loaded.close();
    throw err;
  }
}

/**
 * Loads an optimizer input and checks its structure (`OPTIM_INVALID`, `OPTIM_MISMATCH` for a
 * state entry in no param group); open until `loaded.close()`.
 */
async function loadOptimizer(
  path: string,
  tensors: string | undefined,
  optimizerSources: readonly OptimizerSource[],
  load: LoadValueOptions = {},
): Promise<LoadedOptimizer> {
  const loaded = await loadInput(path, tensors, "int", optimizerSources, load);
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
    return {
      loaded,
      state: sd as PyDict,
      className: cls,
      keyed: info.keyed,
      entries: info.entries,
    };
  } catch (err) {
    await loaded.close();
    throw err;
  }
}

/** The checks against the model and the renumbering, on a loaded optimizer (closes nothing). */
function finishOptimizer(
  opt: LoadedOptimizer,
  path: string,
  options: PrepareOptimizerOptions,
): PreparedOptimizer {
  let state = opt.state;
  if (options.check !== false && options.model) {
    checkOptimizerAgainstModel(state, options.model, path, options.params ?? opt.loaded.paramNames);
  }
  if (options.keys === "int" && opt.keyed === "name") state = toIntKeys(state);
  const className = options.className ?? opt.className ?? "AdamW";
  const value = pyDict([["state_dict", state], ["class", className]]);
  return {
    value,
    className,
    entries: opt.entries,
    keyed: options.keys === "int" ? "int" : opt.keyed,
    close: opt.loaded.close,
  };
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
async function loadScheduler(
  path: string,
  tensors: string | undefined,
  optimizerSources: readonly OptimizerSource[],
  load: LoadValueOptions = {},
): Promise<LoadedValue> {
  const sched = await loadInput(path, tensors, "int", optimizerSources, load);
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

/** The resolved input paths of a writeOptim stage's options. */
interface InputPaths {
  optimizer?: string;
  optimizerTensors?: string;
  scheduler?: string;
  schedulerTensors?: string;
}

function inputPaths(ctx: StageContext, options: z.output<typeof writeOptimOptions>): InputPaths {
  const paths: InputPaths = {};
  if (options.optimizer !== undefined) paths.optimizer = ctx.resolve(options.optimizer);
  if (options.optimizerTensors !== undefined) {
    paths.optimizerTensors = ctx.resolve(options.optimizerTensors);
  }
  if (options.scheduler !== undefined) paths.scheduler = ctx.resolve(options.scheduler);
  if (options.schedulerTensors !== undefined) {
    paths.schedulerTensors = ctx.resolve(options.schedulerTensors);
  }
  return paths;
}

/** The key a preflight's load is kept under: every path it depends on. */
function keyOf(paths: InputPaths): string {
  return JSON.stringify([
    paths.optimizer,
    paths.optimizerTensors,
    paths.scheduler,
    paths.schedulerTensors,
  ]);
}

/**
 * Loads the optimizer (structure checked) then the scheduler (a dict); on a failure, closes what
 * it opened and rejects with the coded error.
 */
async function loadInputs(
  paths: InputPaths,
  optimizerSources: readonly OptimizerSource[],
  load: {
    seen?: FileWitness;
    optim?: LoadValueOptions["source"];
    sched?: LoadValueOptions["source"];
  } = {},
): Promise<OptimInputs> {
  const inputs: OptimInputs = {};
  /** How to load an input whose source the preflight looked up (if it did). */
  const how = (source: LoadValueOptions["source"]): LoadValueOptions => ({
    ...(load.seen === undefined ? {} : { seen: load.seen }),
    ...(source === undefined ? {} : { source }),
  });
  try {
    if (paths.optimizer !== undefined) {
      const { optimizer: path, optimizerTensors: tensors } = paths;
      inputs.optim = await loadOptimizer(path, tensors, optimizerSources, how(load.optim));
    }
    if (paths.scheduler !== undefined) {
      const { scheduler: path, schedulerTensors: tensors } = paths;
      inputs.sched = await loadScheduler(path, tensors, optimizerSources, how(load.sched));
    }
    return inputs;
  } catch (err) {
    await closeInputs(inputs);
    throw err;
  }
}

/** What {@linkcode createWriteOptimStage} takes. */
export interface WriteOptimStageOptions {
  /** Extra optimizer sources, asked before the built-in ones (one with a built-in's name replaces it). */
  optimizerSources?: readonly OptimizerSource[];
}

/**
 * A writeOptim stage that also reads optimizer (and scheduler) state from the given extra sources;
 * use it in place of the built-in one (`stages: { ...await builtinStages(), writeOptim:
 * createWriteOptimStage({ optimizerSources }) }`).
 */
export function createWriteOptimStage(
  stageOptions: WriteOptimStageOptions = {},
): Stage {
  const optimizerSources = stageOptions.optimizerSources ?? [];
  /** What this stage's preflights loaded, per run context, for their runs. */
  const kept: KeptLoads = new WeakMap();
  return defineStage({
    name: "writeOptim",
    summary: "write optimizer.pt ({'state_dict', 'class'}) and scheduler.pt as HALOs does",
    options: writeOptimOptions,
    split: "one-part",
    /**
     * Looks the inputs up at once (one `stat` each, before any stage runs), so a missing optimizer
     * or scheduler fails first (`INPUT_MISSING`, or the coded OS error). Then it starts loading
     * their structure (torch archives' pickles, JSON descriptions with their safetensors headers,
     * DCP metadata; no tensor data) and validating it, and hands that to the runner
     * (`ctx.defer`): the stages run meanwhile, a failure (`TORCH_*`, `OPTIM_INVALID`,
     * `OPTIM_MISMATCH`, `SCHEDULER_INVALID`, ...) ends the run at once with its code, and the
     * output is finished only after it passed (outside the runner it awaits it). What it loaded
     * stays open for the run (the runner closes it however the run ends, `ctx.closeAtEnd`). The
     * check against the model's parameters waits for the run.
     */
    async preflight(ctx: StageContext, options): Promise<void> {
      requireInputs(options);
      const paths = inputPaths(ctx, options);
      const optim = paths.optimizer === undefined
        ? undefined
        : await inputSource(paths.optimizer, optimizerSources);
      const sched = paths.scheduler === undefined
        ? undefined
        : await inputSource(paths.scheduler, optimizerSources);
      const seen = new FileWitness();
      const loaded = loadInputs(paths, optimizerSources, {
        seen,
        optim: optim ?? null,
        sched: sched ?? null,
      });
      const closeAtEnd = ctx.closeAtEnd;
      let checked: Promise<void>;
      if (closeAtEnd === undefined) checked = loaded.then(closeInputs);
      else {
        const reusable = optim === undefined && sched === undefined;
        keepInputs(kept, ctx, closeAtEnd, keyOf(paths), { loaded, seen, reusable });
        checked = loaded.then(() => {});
      }
      if (ctx.defer) ctx.defer(checked);
      else await checked;
    },
    /**
     * Uses what its preflight loaded in this run when the input paths are the same and no file it
     * read changed (by `stat`: device, inode, size, modification and change times; an optimizer
     * source's input is always loaded again); otherwise loads again, checks included. Then checks
     * the state against the model's parameters and writes the files.
     */
    async run(ctx: StageContext, options): Promise<void> {
      requireInputs(options);
      const paths = inputPaths(ctx, options);
      if (paths.optimizer !== undefined) ctx.addInput(paths.optimizer, "optimizer");
      if (paths.scheduler !== undefined) ctx.addInput(paths.scheduler, "scheduler");
      const pre = takeInputs(kept, ctx, keyOf(paths));
      let inputs: OptimInputs | undefined;
      try {
        if (pre) {
          const was = await pre.loaded;
          if (pre.reusable && await pre.seen.unchanged()) inputs = was;
          else await pre.close();
        }
        inputs ??= await loadInputs(paths, optimizerSources);
        const optim = inputs.optim && finishOptimizer(inputs.optim, paths.optimizer!, {
          ...(options.optimizerClass === undefined ? {} : { className: options.optimizerClass }),
          keys: options.keys,
          model: ctx.stateDict,
          ...(options.params === undefined ? {} : { params: options.params }),
          check: options.check,
        });
        const sched = inputs.sched;
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
        await pre?.close();
        await closeInputs(inputs);
      }
    },
  });
}

/** The writeOptim stage (config name `writeOptim`). */
export const writeOptimStage: Stage = createWriteOptimStage();

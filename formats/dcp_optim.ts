/**
 * Optimizer state from a torch.distributed.checkpoint folder (FSDP2 `get_optimizer_state_dict`,
 * FSDP `optim_state_dict`, accelerate's `optimizer_0/`), rebuilt into a torch optimizer state dict
 * (`{'state': {...}, 'param_groups': [...]}`) as a value tree `saveTorch` writes directly: either
 * name-keyed (what the checkpoint holds and `dcp_to_torch_save` gives) or int-keyed in the
 * optimizer's parameter order (what `torch.optim.Optimizer.state_dict()` gives, and what HALOs'
 * `optimizer.pt` holds under `'state_dict'`).
 *
 * Tensors stay lazy: each full state tensor is assembled from its chunks when written.
 *
 * @example The AdamW state of a 2-rank FSDP2 run, int-keyed
 * ```ts
 * import { readDcpOptimizer } from "./dcp_optim.ts";
 * import { PyDict } from "./torch/values.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/f32_w2/optim", import.meta.url).pathname;
 * const optim = await readDcpOptimizer(dir, { keyed: "int" });
 * try {
 *   assert.deepEqual(optim.paramNames, ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]);
 *   const state = optim.value.get("state") as PyDict;
 *   assert.deepEqual([...state.keys()], [0, 1, 2, 3, 4]);
 *   assert.deepEqual([...(state.get(0) as PyDict).keys()], ["step", "exp_avg", "exp_avg_sq"]);
 * } finally {
 *   await optim.close();
 * }
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import {
  DCP_WRAPPER_SEGMENTS,
  DcpCheckpoint,
  type DcpEntry,
  type DcpOpenOptions,
  type DcpPathItem,
  stripWrapperSegments,
} from "./dcp.ts";
import { PyDict, type PyKey, type PyValue, torchTensor } from "./torch/values.ts";

/** Options of {@linkcode readDcpOptimizer}. */
export interface DcpOptimizerOptions extends DcpOpenOptions {
  /**
   * `"int"` (default): state keyed 0..N-1 and `params` lists of ints, numbered consecutively over the
   * param groups in their order (torch's `Optimizer.state_dict()` layout). `"name"`: keyed by
   * parameter name (the checkpoint's own layout).
   */
  keyed?: "int" | "name";
  /**
   * Path items before `state`/`param_groups` (`"optimizer"` for accelerate's `{"optimizer": ...}`).
   * Default: found from the checkpoint; an error when entries disagree.
   */
  root?: readonly DcpPathItem[];
  /** Wrapper segments removed from parameter names. Default {@linkcode DCP_WRAPPER_SEGMENTS}. */
  stripSegments?: readonly string[];
  /** Remove a leading `module.` from parameter names. Default true. */
  stripModulePrefix?: boolean;
  /**
   * Names of the model's parameters: every optimizer parameter must be one of them
   * (`DCP_OPTIM_PARAM` otherwise). Default: not checked.
   */
  modelParams?: Iterable<string>;
}

/** A rebuilt optimizer state dict and the parameter names in its order. */
export interface DcpOptimizerState {
  /** `{'state': {...}, 'param_groups': [...]}` as a plain Python dict value tree. */
  readonly value: PyDict;
  /** Parameter names in optimizer order (index `i` is int key `i`). */
  readonly paramNames: readonly string[];
  /** Releases the checkpoint files (the tensors in {@linkcode DcpOptimizerState.value} read from them). */
  close(): Promise<void>;
}

/** Per-parameter state keys in the order torch's Adam/AdamW write them; others follow. */
const STATE_ORDER = ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"];
/** Param group keys in torch 2.6 AdamW order; unknown keys follow, `params` is last. */
const GROUP_ORDER_26 = [
  "lr",
  "betas",
  "eps",
  "weight_decay",
  "amsgrad",
  "foreach",
  "maximize",
  "capturable",
  "differentiable",
  "fused",
];
/**
 * Param group keys in torch 2.7+ Adam/AdamW order (AdamW became Adam with
 * `decoupled_weight_decay`, pytorch/pytorch#118857; seen in torch 2.13's `state_dict()`).
 */
const GROUP_ORDER_27 = [
  "lr",
  "betas",
  "eps",
  "weight_decay",
  "amsgrad",
  "maximize",
  "foreach",
  "capturable",
  "differentiable",
  "fused",
  "decoupled_weight_decay",
];

/** The key order of a param group: torch 2.7+'s when the group has 2.7's new key, else 2.6's. */
function groupOrder(g: PyDict): readonly string[] {
  return g.has("decoupled_weight_decay") ? GROUP_ORDER_27 : GROUP_ORDER_26;
}

function ordered(d: PyDict, order: readonly string[], last?: string): PyDict {
  const keys = [...d.keys()];
  const rank = (k: PyKey) => {
    if (k === last) return order.length + 2;
    const i = typeof k === "string" ? order.indexOf(k) : -1;
    return i < 0 ? order.length + 1 : i;
  };
  const sorted = keys.map((k, i) => ({ k, i })).sort((a, b) => rank(a.k) - rank(b.k) || a.i - b.i);
  return new PyDict(sorted.map(({ k }) => [k, d.get(k)!]), d.kind);
}

function layoutErr(dir: string, what: string, key?: string): CkptError {
  return new CkptError(
    "DCP_OPTIM_LAYOUT",
    `Cannot rebuild the optimizer state of "${dir}": ${what}`,
    key === undefined ? { file: dir } : { file: dir, tensor: key },
  );
}

function paramErr(dir: string, what: string, key: string): CkptError {
  return new CkptError(
    "DCP_OPTIM_PARAM",
    `Cannot rebuild the optimizer state of "${dir}": ${what}`,
    { file: dir, tensor: key },
  );
}

function splitRoot(e: DcpEntry): number {
  return e.path.findIndex((p) => p === "state" || p === "param_groups");
}

/** Rebuilds the optimizer state dict of an open checkpoint (see {@linkcode readDcpOptimizer}). */
export async function optimizerFromDcp(
  ckpt: DcpCheckpoint,
  options: DcpOptimizerOptions = {},
): Promise<{ value: PyDict; paramNames: string[] }> {
  const dir = ckpt.dir;
  const strip = (n: string) =>
    stripWrapperSegments(
      n,
      options.stripSegments ?? DCP_WRAPPER_SEGMENTS,
      options.stripModulePrefix ?? true,
    );
  // Choose the root (path items before state/param_groups).
  let root = options.root;
  const entries: { e: DcpEntry; rest: DcpPathItem[] }[] = [];
  for (const e of ckpt.metadata.entries) {
    const at = splitRoot(e);
    if (at < 0) continue;
    const prefix = e.path.slice(0, at);
    if (root === undefined) root = prefix;
    if (prefix.length !== root.length || prefix.some((p, i) => p !== root![i])) {
      if (options.root !== undefined) continue;
      throw layoutErr(
        dir,
        `entries sit under different roots (${JSON.stringify(root)} and ${
          JSON.stringify(prefix)
        }); pass the root to use`,
        e.key,
      );
    }
    entries.push({ e, rest: e.path.slice(at) });
  }
  if (entries.length === 0) {
    throw layoutErr(dir, "it has no 'state' or 'param_groups' entries");
  }

  const state = new Map<string, PyDict>(); // param name -> per-param state
  const groups: PyDict[] = [];
  for (const { e, rest } of entries) {
    const value: PyValue = e.kind === "tensor" ? torchTensor(ckpt.tensor(e)) : await ckpt.value(e);
    if (rest[0] === "state") {
      if (rest.length < 3 || typeof rest[1] !== "string") {
        throw layoutErr(dir, `state entry path ${JSON.stringify(e.path)}`, e.key);
      }
      const name = strip(rest[1]);
      let s = state.get(name);
      if (!s) state.set(name, s = new PyDict());
      setPath(s, rest.slice(2), value, dir, e.key);
    } else {
      const g = rest[1];
      if (typeof g !== "number" || !Number.isInteger(g) || g < 0 || rest.length < 3) {
        throw layoutErr(dir, `param_groups entry path ${JSON.stringify(e.path)}`, e.key);
      }
      while (groups.length <= g) groups.push(new PyDict());
      setPath(groups[g]!, rest.slice(2), value, dir, e.key);
    }
  }

  // Parameter names in group order.
  const paramNames: string[] = [];
  groups.forEach((grp, gi) => {
    const params = grp.get("params");
    if (!Array.isArray(params) || params.some((p) => typeof p !== "string")) {
      throw layoutErr(
        dir,
        `param_groups[${gi}]['params'] is not a list of parameter names`,
        `param_groups.${gi}.params`,
      );
    }
    const names = (params as string[]).map(strip);
    for (const n of names) {
      if (paramNames.includes(n)) {
        throw paramErr(dir, `parameter "${n}" is in two param groups`, n);
      }
    }
    paramNames.push(...names);
    grp.set("params", names);
  });
  for (const name of state.keys()) {
    if (!paramNames.includes(name)) {
      throw paramErr(dir, `state for "${name}" belongs to no param group`, name);
    }
  }
  if (options.modelParams !== undefined) {
    const model = new Set(options.modelParams);
    for (const n of paramNames) {
      if (!model.has(n)) {
        throw paramErr(dir, `parameter "${n}" is not in the model`, n);
      }
    }
  }

  const intKeyed = (options.keyed ?? "int") === "int";
  const index = new Map(paramNames.map((n, i) => [n, i]));
  const stateOut = new PyDict();
  for (const name of paramNames) {
    const s = state.get(name);
    if (s) stateOut.set(intKeyed ? index.get(name)! : name, ordered(s, STATE_ORDER));
  }
  const groupsOut = groups.map((g) => {
    const names = g.get("params") as string[];
    const copy = new PyDict(g.entries());
    copy.set("params", intKeyed ? names.map((n) => index.get(n)!) : names);
    return ordered(copy, groupOrder(copy), "params");
  });
  const value = new PyDict([["state", stateOut], ["param_groups", groupsOut]]);
  return { value, paramNames };
}

function setPath(
  d: PyDict,
  path: readonly DcpPathItem[],
  value: PyValue,
  dir: string,
  key: string,
): void {
  let cur: PyDict = d;
  for (let i = 0; i < path.length - 1; i++) {
    const k = path[i]!;
    let next = cur.get(k);
    if (next === undefined) cur.set(k, next = new PyDict());
    if (!(next instanceof PyDict)) {
      throw layoutErr(dir, `"${key}" nests inside a value`, key);
    }
    cur = next;
  }
  const last = path[path.length - 1]!;
  if (cur.has(last)) throw layoutErr(dir, `"${key}" appears twice`, key);
  cur.set(last, value);
}

/**
 * Reads the optimizer checkpoint in `dir` and rebuilds a torch optimizer state dict. Everything is
 * checked (files, chunks, layout) before it returns; the tensors are lazy, so keep the result open
 * until it has been written and then call `close()`.
 */
export async function readDcpOptimizer(
  dir: string,
  options: DcpOptimizerOptions = {},
): Promise<DcpOptimizerState> {
  const ckpt = await DcpCheckpoint.open(dir, options);
  try {
    const { value, paramNames } = await optimizerFromDcp(ckpt, options);
    return { value, paramNames, close: () => ckpt.close() };
  } catch (err) {
    await ckpt.close();
    throw err;
  }
}

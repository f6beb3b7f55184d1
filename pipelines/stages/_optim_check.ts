/**
 * Private: the checks writeOptim makes before writing (the state's structure, its tensors against
 * the model's parameters) and the renumbering of name keys. Public API in `write_optim.ts`.
 * @module
 */
import { CkptError } from "../../errors.ts";
import { DTYPES } from "../../formats/dtype.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import {
  PyDict,
  type PyKey,
  pyTypeName,
  type PyValue,
  tensorsOf,
} from "../../formats/torch/values.ts";
import { stripWrapperNames } from "../../readers/names.ts";

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

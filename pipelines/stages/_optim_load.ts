/**
 * Private: reading writeOptim's inputs (optimizer sources, torch files, JSON descriptions with
 * their safetensors tensors) as Python values. Public API in `write_optim.ts`.
 * @module
 */
import { basename, dirname, extname, join } from "node:path";
import { CkptError } from "../../errors.ts";
import { inputReadError, readTextInput } from "../../formats/read_text.ts";
import type { StateDict } from "../../formats/state_dict.ts";
import { openSafetensors } from "../../formats/safetensors.ts";
import { loadTorch } from "../../formats/torch/load.ts";
import {
  pyDict,
  PyFloat,
  type PyKey,
  PyTuple,
  type PyValue,
  tensorOfBytes,
  type TorchTensor,
  torchTensor,
} from "../../formats/torch/values.ts";
import {
  findOptimizerSource,
  type LoadedValue,
  type OptimizerSource,
} from "../../readers/optimizer.ts";
import type { FileWitness } from "./_file_witness.ts";
import { isObject, JsonFloat, parsePyJson, type PyJson } from "./_pyjson.ts";

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
 * The optimizer source that recognises `path` (`optimizerSources` first, then the built-in ones),
 * or undefined for a torch file or a JSON description. One `stat` (plus the sources' probes);
 * `INPUT_MISSING` (or the coded OS error) when `path` cannot be looked at.
 */
export async function inputSource(
  path: string,
  optimizerSources: readonly OptimizerSource[] = [],
): Promise<OptimizerSource | undefined> {
  try {
    return await findOptimizerSource(path, optimizerSources);
  } catch (cause) {
    throw inputReadError(cause, "INPUT_MISSING", "optimizer input", path);
  }
}

/** Options of {@linkcode loadInput} beyond those of {@linkcode loadValue}. */
export interface LoadValueOptions {
  /** The source {@linkcode inputSource} found for the path (looked up again when absent). */
  source?: OptimizerSource | null;
  /**
   * Records each file read (the torch file; the JSON description, its tensors file, or the absent
   * sibling one), by `stat` before reading it. A source's files are not recorded.
   */
  seen?: FileWitness;
}

/**
 * Loads an optimizer or scheduler input as a Python value: a path one of the optimizer sources
 * recognises (`optimizerSources` first, then the built-in ones: torch.distributed.checkpoint
 * folders), a JSON description (with its safetensors tensors; `tensorsPath` overrides where they
 * come from), or a torch file.
 */
export async function loadValue(
  path: string,
  tensorsPath?: string,
  keys: "int" | "name" = "int",
  optimizerSources: readonly OptimizerSource[] = [],
): Promise<LoadedValue> {
  return await loadInput(path, tensorsPath, keys, optimizerSources, {});
}

/** How many inputs {@linkcode loadInput} loaded in this process: for tests. */
export const inputsLoaded: { count: number } = { count: 0 };

/** {@linkcode loadValue}, with the source already found and the files read recorded. */
export async function loadInput(
  path: string,
  tensorsPath: string | undefined,
  keys: "int" | "name",
  optimizerSources: readonly OptimizerSource[],
  options: LoadValueOptions,
): Promise<LoadedValue> {
  const source = options.source === undefined
    ? await inputSource(path, optimizerSources)
    : options.source ?? undefined;
  const seen = options.seen;
  inputsLoaded.count++;
  if (source) return await source.load(path, { keys });
  await seen?.stat(path);
  if (!isJsonPath(path)) {
    const loaded = await loadTorch(path);
    return { value: loaded.value, close: () => loaded.close() };
  }
  const json = parsePyJson(
    await readTextInput(path, { code: "INPUT_MISSING", what: "optimizer description" }),
    path,
  );
  let tfile = tensorsPath;
  if (tfile === undefined && isObject(json) && typeof json.get("tensors") === "string") {
    tfile = join(dirname(path), json.get("tensors") as string);
  }
  if (tfile === undefined) {
    const sibling = join(dirname(path), basename(path, extname(path)) + ".safetensors");
    await seen?.stat(sibling);
    try {
      await Deno.stat(sibling);
      tfile = sibling;
    } catch {
      // no tensors file: fine when the description holds no tensors
    }
  }
  if (tfile !== undefined) await seen?.stat(tfile);
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

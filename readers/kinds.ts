/**
 * The one table of weights inputs ckpt reads, and the lookups every caller shares (gatherShards,
 * writeValueHead, `ckpt inspect`, `ckpt verify`):
 *
 * - `dcp`: a torch.distributed.checkpoint folder (`.metadata` + `__<rank>_<n>.distcp`, each item a
 *   torch.save zip or, from `SerializationFormat.SAFETENSORS`, a safetensors blob);
 * - `dcp-hf`: a folder of `HuggingFaceStorageWriter` shards written with `save_distributed=True`
 *   and no consolidation (`shard-<rank+1>-model-<i>-of-<n>.safetensors`, no `.metadata`);
 * - `hf-shards`: a folder with `model.safetensors.index.json`, or that index file itself;
 * - `safetensors`: a `.safetensors` file (or any file starting like one), or a folder with
 *   `model.safetensors`;
 * - `torch-shards`: a folder with `pytorch_model.bin.index.json`, or that index file itself;
 * - `torch`: a torch.save file (`.bin`, `.pt`, `.pth`, or any zip), or a folder with
 *   `pytorch_model.bin`.
 *
 * Detection asks the kinds in this order and takes the first that says yes, so a folder holding
 * both safetensors and `.bin` weights opens the safetensors ones, as transformers does. The table is
 * closed: a program that reads another format passes its own kinds explicitly (`kinds: [...]`);
 * they are asked before the built-ins, and one with a built-in's name replaces it.
 *
 * @example An extra kind, passed explicitly
 * ```ts
 * import { detectInputKind, type InputKind } from "./kinds.ts";
 * import { StateDict } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * const empty: InputKind = {
 *   name: "example-empty",
 *   summary: "paths ending in .empty open as an empty state dict",
 *   detect: (probe) => probe.path.endsWith(".empty"),
 *   open: () => Promise.resolve(new StateDict()),
 * };
 * const file = await Deno.makeTempFile({ suffix: ".empty" });
 * assert.equal((await detectInputKind(file, [empty])).name, "example-empty");
 * await assert.rejects(detectInputKind(file)); // not a kind ckpt knows by itself
 * await Deno.remove(file);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import { inputReadError } from "../formats/read_text.ts";
import type { StateDict } from "../formats/state_dict.ts";
import { DCP_HF_INPUT_KIND, DCP_INPUT_KIND } from "./dcp.ts";
import { type InputProbe, probeInput } from "./probe.ts";
import { HF_SHARDS_KIND, SAFETENSORS_KIND } from "./safetensors.ts";
import { TORCH_KIND, TORCH_SHARDS_KIND } from "./torch.ts";
import type { InputKind, InputOpenOptions } from "./types.ts";

export type { InputKind, InputOpenOptions } from "./types.ts";

/** The built-in input kinds, in detection order. */
export const BUILTIN_INPUT_KINDS: readonly InputKind[] = [
  DCP_INPUT_KIND,
  DCP_HF_INPUT_KIND,
  HF_SHARDS_KIND,
  SAFETENSORS_KIND,
  TORCH_SHARDS_KIND,
  TORCH_KIND,
];

/**
 * The kinds in detection order: `extra` first (in the given order), then the built-ins; a built-in
 * whose name an extra kind takes is left out. `INPUT_KIND` for an extra kind with an empty name.
 */
export function inputKinds(extra: readonly InputKind[] = []): readonly InputKind[] {
  for (const k of extra) {
    if (typeof k.name !== "string" || k.name.length === 0) {
      throw new CkptError("INPUT_KIND", "Cannot use an input kind: its name is empty");
    }
  }
  const taken = new Set(extra.map((k) => k.name));
  return [...extra, ...BUILTIN_INPUT_KINDS.filter((k) => !taken.has(k.name))];
}

function names(kinds: readonly InputKind[]): string[] {
  return kinds.map((k) => k.name);
}

/** The kind called `name` (extra kinds included), or an `INPUT_KIND` error listing the known names. */
export function getInputKind(name: string, extra: readonly InputKind[] = []): InputKind {
  const kinds = inputKinds(extra);
  const kind = kinds.find((k) => k.name === name);
  if (!kind) {
    throw new CkptError(
      "INPUT_KIND",
      `Cannot use input kind "${name}": known kinds are ${
        names(kinds).map((n) => `"${n}"`).join(", ")
      }`,
      { details: { kind: name, known: names(kinds) } },
    );
  }
  return kind;
}

/**
 * Probes `path`; `INPUT_MISSING` when it does not exist, `FS_PERMISSION` when it is there but may
 * not be read (the folder listed or the file's first bytes read).
 */
async function probeWeights(path: string): Promise<InputProbe> {
  let probe: InputProbe;
  try {
    probe = await probeInput(path);
  } catch (cause) {
    throw inputReadError(cause, "INPUT_MISSING", "weights from", path);
  }
  if (probe.unreadable !== undefined) {
    throw inputReadError(probe.unreadable, "INPUT_MISSING", "weights from", path);
  }
  return probe;
}

/** The first of `kinds` that recognises the probe; `INPUT_KIND` when none does. */
async function pickKind(probe: InputProbe, kinds: readonly InputKind[]): Promise<InputKind> {
  for (const kind of kinds) {
    if (await kind.detect(probe)) return kind;
  }
  throw new CkptError(
    "INPUT_KIND",
    `Cannot tell what kind of weights "${probe.path}" holds: none of ${
      names(kinds).map((n) => `"${n}"`).join(", ")
    } recognises it`,
    { file: probe.path, details: { known: names(kinds) } },
  );
}

/**
 * The first kind (in {@linkcode inputKinds} order, `extra` first) that recognises `path`.
 * `INPUT_MISSING` when the path does not exist, `INPUT_KIND` when no kind recognises it.
 */
export async function detectInputKind(
  path: string,
  extra: readonly InputKind[] = [],
): Promise<InputKind> {
  return await pickKind(await probeWeights(path), inputKinds(extra));
}

/** Options of {@linkcode resolveInput} and {@linkcode openInput}. */
export interface ResolveInputOptions {
  /** Input kind name; default: detected. */
  kind?: string | undefined;
  /** Extra kinds, asked before the built-ins (see {@linkcode inputKinds}). */
  kinds?: readonly InputKind[] | undefined;
}

/** A probed input and the kind that reads it. */
export interface ResolvedInput {
  /** What detection saw. */
  probe: InputProbe;
  /** The kind named by {@linkcode ResolveInputOptions.kind}, or the one detected. */
  kind: InputKind;
}

/**
 * Probes `path` and finds the kind that reads it, opening nothing: the named kind, else the
 * detected one. `INPUT_KIND` for an unknown name or an unrecognised input, `INPUT_MISSING` when
 * `path` does not exist.
 */
export async function resolveInput(
  path: string,
  options: ResolveInputOptions = {},
): Promise<ResolvedInput> {
  const kinds = inputKinds(options.kinds);
  const named = options.kind === undefined ? undefined : getInputKind(options.kind, options.kinds);
  const probe = await probeWeights(path);
  return { probe, kind: named ?? await pickKind(probe, kinds) };
}

/** Options of {@linkcode openInput}. */
export interface OpenInputOptions extends ResolveInputOptions, InputOpenOptions {}

/** What {@linkcode openInput} returns. */
export interface OpenedInput extends ResolvedInput {
  /** The lazy state dict (close it when done), keys as the file has them. */
  stateDict: StateDict;
}

/**
 * Opens `path` (file or folder) as a lazy state dict with the named or detected kind (see
 * {@linkcode resolveInput} for the errors; the kind's own errors pass through with their codes).
 */
export async function openInput(
  path: string,
  options: OpenInputOptions = {},
): Promise<OpenedInput> {
  const { probe, kind } = await resolveInput(path, options);
  options.signal?.throwIfAborted();
  const stateDict = await kind.open(probe, options.signal ? { signal: options.signal } : {});
  return { probe, kind, stateDict };
}

/**
 * Loading what a LoRA merge applies: the PEFT-wrapped base split into plain tensors and its own
 * adapter, then the given adapters (paths loaded lazily, or adapters already loaded) with their
 * weights, named uniquely for the report. Private to `mergeLora` (`merge/lora.ts`).
 * @module
 */
import { CkptError } from "../errors.ts";
import {
  isWrappedStateDict,
  loadAdapter,
  type LoadedAdapter,
  type SplitWrapped,
  splitWrappedStateDict,
} from "../formats/peft.ts";
import type { StateDict } from "../formats/state_dict.ts";
import type { WeightedAdapter } from "./_lora_job.ts";
import type { AdapterInput, MergeLoraOptions, MergeReport } from "./lora_types.ts";

/**
 * `base` split into plain tensors and its adapter when `options.wrapped` is given, else undefined;
 * `LORA_WRAPPED` for a wrapped base without `wrapped` options.
 */
export function unwrapBase(base: StateDict, options: MergeLoraOptions): SplitWrapped | undefined {
  if (!options.wrapped && isWrappedStateDict(base)) {
    throw new CkptError(
      "LORA_WRAPPED",
      "Cannot merge into a PEFT-wrapped state dict (it has .base_layer. / .lora_A.<name>. keys) without `wrapped: { r, alpha }`",
      {
        tensor: [...base.keys()].find((k) => k.includes(".base_layer.") || k.includes(".lora_")) ??
          "",
      },
    );
  }
  return options.wrapped ? splitWrappedStateDict(base, options.wrapped) : undefined;
}

function normalizeInput(
  input: AdapterInput,
): { path?: string; loaded?: LoadedAdapter; weight: number; name?: string } {
  if (typeof input === "string") return { path: input, weight: 1 };
  if ("tensors" in input) return { loaded: input, weight: input.weight ?? 1 };
  const out: { path: string; weight: number; name?: string } = {
    path: input.path,
    weight: input.weight ?? 1,
  };
  if (input.name !== undefined) out.name = input.name;
  return out;
}

/**
 * The adapters to apply, in order: the wrapped base's own adapter (`split`) first, then `inputs`.
 * Adapters loaded from disk are pushed onto `opened` (the caller closes them on failure). Names are
 * made unique (`a`, `a#2`) and listed in `report.adapters`; `report.otherAdapterKeys` lists the
 * wrapped keys of other adapter names. Errors: `LORA_UNMATCHED` (keys of another adapter name,
 * unless `allowUnmatched`), `LORA_WEIGHT`, and the `PEFT_*` codes of `loadAdapter`.
 */
export async function loadAdapters(
  inputs: readonly AdapterInput[],
  split: SplitWrapped | undefined,
  options: MergeLoraOptions,
  report: MergeReport,
  opened: StateDict[],
): Promise<WeightedAdapter[]> {
  const loaded: WeightedAdapter[] = [];
  if (split) {
    report.otherAdapterKeys = split.otherAdapterKeys;
    if (split.otherAdapterKeys.length > 0 && !options.allowUnmatched) {
      throw new CkptError(
        "LORA_UNMATCHED",
        `Cannot merge wrapped state dict: ${split.otherAdapterKeys.length} keys belong to another adapter name than "${
          options.wrapped?.adapterName ?? "default"
        }" (first: "${split.otherAdapterKeys[0]}")`,
        { tensor: split.otherAdapterKeys[0]! },
      );
    }
    loaded.push({ adapter: split.adapter, weight: 1 });
  }
  for (const input of inputs) {
    const n = normalizeInput(input);
    if (!Number.isFinite(n.weight)) {
      throw new CkptError(
        "LORA_WEIGHT",
        `Cannot merge adapter: weight ${n.weight} is not finite`,
      );
    }
    if (n.loaded) loaded.push({ adapter: n.loaded, weight: n.weight });
    else {
      const a = await loadAdapter(n.path!, n.name);
      opened.push(a.tensors);
      loaded.push({ adapter: a, weight: n.weight });
    }
  }
  nameAdapters(loaded, report);
  return loaded;
}

/** Makes adapter names unique (`a`, `a#2`, ...) and lists the adapters in the report. */
function nameAdapters(loaded: WeightedAdapter[], report: MergeReport): void {
  const names = new Set<string>();
  for (const l of loaded) {
    let name = l.adapter.name;
    for (let i = 2; names.has(name); i++) name = `${l.adapter.name}#${i}`;
    names.add(name);
    l.adapter = { ...l.adapter, name };
    const entry: MergeReport["adapters"][number] = {
      name,
      weight: l.weight,
      tensors: l.adapter.tensors.size,
      useDora: l.adapter.config.use_dora,
    };
    if (l.adapter.path !== undefined) entry.path = l.adapter.path;
    report.adapters.push(entry);
  }
}

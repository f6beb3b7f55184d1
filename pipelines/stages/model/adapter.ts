/**
 * writeModel's adapter mode (`what: "adapter"`): `adapter_model.safetensors` + `adapter_config.json`
 * from an adapter folder or weights file, or from the LoRA part of PEFT-wrapped weights (`r` and
 * `alpha` given; the config is generated as PEFT writes it).
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../../../errors.ts";
import { castRef } from "../../../formats/cast.ts";
import type { DType } from "../../../formats/dtype.ts";
import { classifyAdapterKey, loadAdapter, splitWrappedStateDict } from "../../../formats/peft.ts";
import { planSafetensorsShards, writeSafetensors } from "../../../formats/safetensors.ts";
import { StateDict, type TensorRef } from "../../../formats/state_dict.ts";
import type { StageContext } from "../../stage.ts";
import { dumpPyJson, fromPlain } from "../_pyjson.ts";
import { outputBytesHook } from "./files.ts";

/**
 * Checks that an adapter's tensors fit a base model (every LoRA factor's module exists with
 * matching dims, replacements keep the trailing dims): `ADAPTER_MISMATCH` names the first misfit.
 * Reads no tensor data.
 */
export function checkAdapterFits(adapter: StateDict, base: StateDict): number {
  let checked = 0;
  for (const [key, ref] of adapter) {
    const c = classifyAdapterKey(key);
    const w = base.get(c.target);
    const fail = (why: string): never => {
      throw new CkptError(
        "ADAPTER_MISMATCH",
        `Cannot use adapter tensor "${key}" [${ref.shape.join(", ")}] with this base model: ${why}`,
        { tensor: key, details: { target: c.target, base: w ? [...w.shape] : null } },
      );
    };
    if (c.kind === "replacement") {
      if (
        w &&
        (w.shape.length !== ref.shape.length || w.shape.some((d, i) => i > 0 && d !== ref.shape[i]))
      ) {
        fail(`it replaces "${c.target}" [${w.shape.join(", ")}]`);
      }
      continue;
    }
    if (c.kind === "trainable_tokens") {
      if (!w || w.shape[1] !== ref.shape[1]) {
        fail(`"${c.target}" is missing or not ${ref.shape[1]} wide`);
      }
      continue;
    }
    if (!w) fail(`the base has no "${c.target}"`);
    const [o, i] = [w!.shape[0], w!.shape[1]];
    const s = ref.shape;
    const fits = c.kind === "lora_A"
      ? s[1] === i || s[1] === o
      : c.kind === "lora_B" || c.kind === "lora_B_bias"
      ? s[0] === o || s[0] === i
      : c.kind === "lora_embedding_A"
      ? s[1] === o
      : c.kind === "lora_embedding_B"
      ? s[0] === i
      : s.reduce((a, b) => a * b, 1) === o || s.reduce((a, b) => a * b, 1) === i;
    if (!fits) fail(`"${c.target}" is [${w!.shape.join(", ")}]`);
    checked++;
  }
  return checked;
}

/** The key PEFT's `save_pretrained` gives a tensor of a wrapped model (adapter name dropped). */
function peftSavedKey(key: string): string {
  let k = key.replace(/\.(lora_A|lora_B)\.[^.]+\.(weight|bias)$/, ".$1.$2");
  k = k.replace(/\.(lora_embedding_A|lora_embedding_B)\.[^.]+$/, ".$1");
  k = k.replace(/\.lora_magnitude_vector\.[^.]+\.weight$/, ".lora_magnitude_vector");
  k = k.replace(/\.modules_to_save\.[^.]+\.([^.]+)$/, ".$1");
  return `base_model.model.${k}`;
}

/** The adapter tensors and config to write, and what to release and check afterwards. */
interface AdapterSource {
  tensors: StateDict;
  configBytes: Uint8Array;
  /** The adapter as loaded, to check against the base weights. */
  fitCheck?: StateDict;
  release?: () => Promise<void>;
}

/** From an adapter folder or weights file (its `adapter_config.json` copied byte for byte). */
async function fromAdapterFolder(
  ctx: StageContext,
  path: string,
  cast: (r: TensorRef) => TensorRef,
): Promise<AdapterSource> {
  ctx.addInput(path, "adapter");
  const adapter = await loadAdapter(path);
  const tensors = new StateDict();
  for (const [k, r] of adapter.tensors) tensors.set(k, cast(r));
  const info = await Deno.stat(path);
  const dir = info.isFile ? join(path, "..") : path;
  const configBytes = await Deno.readFile(join(dir, "adapter_config.json"));
  ctx.adapterDir = dir;
  return {
    tensors,
    configBytes,
    fitCheck: adapter.tensors,
    release: () => adapter.tensors.close(),
  };
}

/** From the LoRA part of PEFT-wrapped weights, with a generated `adapter_config.json`. */
function fromWrappedWeights(
  ctx: StageContext,
  options: { r?: number | undefined; alpha?: number | undefined; baseModel?: string | undefined },
  cast: (r: TensorRef) => TensorRef,
): AdapterSource {
  const sd = ctx.stateDict;
  if (!sd || options.r === undefined || options.alpha === undefined) {
    throw new CkptError(
      "ADAPTER_MISSING",
      "Cannot write the adapter: give `adapter`, or PEFT-wrapped weights with `r` and `alpha`",
    );
  }
  const split = splitWrappedStateDict(new StateDict(sd.entries()), {
    r: options.r,
    alpha: options.alpha,
  });
  const tensors = new StateDict();
  const modules = new Set<string>();
  for (const [k, r] of split.adapter.tensors) {
    tensors.set(peftSavedKey(k), cast(r));
    const m = /\.([^.]+)\.lora_(A|B|embedding_A|embedding_B)\b/.exec(k);
    if (m) modules.add(m[1]!);
  }
  if (tensors.size === 0) {
    throw new CkptError(
      "ADAPTER_MISSING",
      "Cannot write the adapter: the weights hold no LoRA tensors",
    );
  }
  const cfg = fromPlain({
    base_model_name_or_path: options.baseModel ??
      (typeof ctx.modelConfig?._name_or_path === "string" ? ctx.modelConfig._name_or_path : null),
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    lora_alpha: options.alpha,
    lora_dropout: 0,
    modules_to_save: null,
    peft_type: "LORA",
    r: options.r,
    target_modules: [...modules].sort(),
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: false,
  });
  return {
    tensors,
    configBytes: new TextEncoder().encode(dumpPyJson(cfg, { indent: 2, sortKeys: true })),
  };
}

/** Writes the adapter alone (writeModel with `what: "adapter"`). */
export async function writeAdapter(
  ctx: StageContext,
  options: {
    adapter?: string | undefined;
    r?: number | undefined;
    alpha?: number | undefined;
    baseModel?: string | undefined;
  },
  dtype: DType | undefined,
): Promise<void> {
  const cast = (r: TensorRef) => (dtype ? castRef(r, dtype) : r);
  const adapterPath = options.adapter !== undefined ? ctx.resolve(options.adapter) : undefined;
  const src = adapterPath !== undefined || (ctx.adapterDir !== undefined && options.r === undefined)
    ? await fromAdapterFolder(ctx, adapterPath ?? ctx.adapterDir!, cast)
    : fromWrappedWeights(ctx, options, cast);
  const { tensors, configBytes } = src;
  try {
    if (src.fitCheck && ctx.stateDict) checkAdapterFits(src.fitCheck, ctx.stateDict);
    const plan = planSafetensorsShards(tensors, Number.MAX_SAFE_INTEGER);
    const bytes = plan.files[0]?.fileBytes ?? 0;
    const files = [
      { path: "adapter_model.safetensors", bytes },
      { path: "adapter_config.json", bytes: configBytes.byteLength },
    ];
    ctx.report("writeModel", {
      what: "adapter",
      files,
      tensors: tensors.size,
      dtype: dtype ?? null,
    });
    if (ctx.dryRun) return;
    await writeSafetensors(join(ctx.outDir, "adapter_model.safetensors"), tensors, {
      signal: ctx.signal,
      ...outputBytesHook(ctx),
      onProgress: (done, total) =>
        ctx.emit({ type: "progress", stage: "writeModel", done, total, unit: "bytes" }),
    });
    await Deno.writeFile(join(ctx.outDir, "adapter_config.json"), configBytes);
  } finally {
    await src.release?.();
  }
}

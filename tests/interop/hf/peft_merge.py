"""
Peer side of tests/interop/hf_merge_test.ts, run with the current Hugging Face stack
(../shared/tools/hf-peer: torch 2.13, transformers 5.17, PEFT 0.21):

  peft_merge.py make DIR          writes DIR/f32/{base,adapter} (a tiny untied Qwen2 in bf16, built
                                  from a config, no download, and a LoRA on every linear layer and
                                  the input embedding, saved by PEFT) and PEFT's own merges:
                                  DIR/f32/peft_f32.safetensors (base loaded in f32,
                                  merge_and_unload()) and DIR/f32/peft_bf16.safetensors
  peft_merge.py check-f32 DIR OUT compares OUT (ckpt merge --dtype float32 of DIR/f32) and PEFT's
                                  f32 merge with the float64 merge of the same files

Prints one JSON line. Seconds on 2 cores.
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

torch.set_num_threads(2)


def tiny_config(tied):
    return Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )


def make_base(path, tied, seed):
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(tied)).to(torch.bfloat16)
    model.save_pretrained(path)


def make_adapter(base, path, target_modules, seed, scale=0.05):
    """A LoRA as training leaves it: every factor non-zero (random, `scale`), saved by PEFT."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=target_modules)
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    peft_model.save_pretrained(path)


def peft_merge(base, adapter, dtype):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().contiguous() for k, v in merged.state_dict().items()}


def exact_merge(base, adapter):
    """The float64 merge of the saved files: W + s·B@A (embeddings: W + s·(B@A)ᵀ)."""
    w = {}
    for f in os.listdir(base):
        if f.endswith(".safetensors"):
            w.update(load_file(os.path.join(base, f)))
    ad = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    s = cfg["lora_alpha"] / cfg["r"]
    out = {}
    for k, a in ad.items():
        m = k[len("base_model.model."):]
        if ".lora_A." in m:
            mod = m.split(".lora_A.")[0]
            b = ad[k.replace(".lora_A.", ".lora_B.")]
            out[mod + ".weight"] = w[mod + ".weight"].double() + s * (b.double() @ a.double())
        elif m.endswith(".lora_embedding_A"):
            mod = m[: -len(".lora_embedding_A")]
            b = ad[k.replace("lora_embedding_A", "lora_embedding_B")]
            out[mod + ".weight"] = w[mod + ".weight"].double() + s * (b.double() @ a.double()).T
    return w, out


def make(root):
    d = os.path.join(root, "f32")
    make_base(os.path.join(d, "base"), tied=False, seed=1)
    make_adapter(
        os.path.join(d, "base"),
        os.path.join(d, "adapter"),
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
        seed=2,
    )
    for name, dtype in (("peft_f32", torch.float32), ("peft_bf16", torch.bfloat16)):
        save_file(peft_merge(os.path.join(d, "base"), os.path.join(d, "adapter"), dtype),
                  os.path.join(d, name + ".safetensors"))
    return {"made": ["f32"]}


def check_f32(root, ours_dir):
    d = os.path.join(root, "f32")
    base, exact = exact_merge(os.path.join(d, "base"), os.path.join(d, "adapter"))
    ours = {}
    for f in os.listdir(ours_dir):
        if f.endswith(".safetensors"):
            ours.update(load_file(os.path.join(ours_dir, f)))
    peft32 = load_file(os.path.join(d, "peft_f32.safetensors"))
    peft16 = load_file(os.path.join(d, "peft_bf16.safetensors"))
    res = {"tensors": len(exact), "dtypes": sorted({str(ours[k].dtype) for k in exact})}
    err = lambda t, k: float((t[k].double() - exact[k]).abs().max())
    for label, t in (("ours", ours), ("peft_f32", peft32), ("peft_bf16", peft16)):
        res[label] = max(err(t, k) for k in exact)
        res[label + "_embedding"] = err(t, "model.embed_tokens.weight")
    res["ours_vs_peft_f32"] = max(float((ours[k] - peft32[k]).abs().max()) for k in exact)
    # every other tensor passes through: the bf16 base values, exactly, as f32
    res["others_exact"] = all(torch.equal(ours[k], base[k].float()) for k in base if k not in exact)
    return res


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        out = make(sys.argv[2])
    elif cmd == "check-f32":
        out = check_f32(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))

"""
Peer side of tests/interop/hf_merge_test.ts, run with the current Hugging Face stack
(the hf peer, `deno task peers hf ...`: torch 2.13, transformers 5.17, PEFT 0.21):

  peft_merge.py make DIR          writes DIR/f32/{base,adapter} (a tiny untied Qwen2 in bf16, built
                                  from a config, no download, and a LoRA on every linear layer and
                                  the input embedding, saved by PEFT) and PEFT's own merges:
                                  DIR/f32/peft_f32.safetensors (base loaded in f32,
                                  merge_and_unload()) and DIR/f32/peft_bf16.safetensors
                                  and DIR/tied/{base,emb,head}: a tiny tied Qwen2 in bf16 with a
                                  LoRA on embed_tokens (emb) or on lm_head (head)
  peft_merge.py check-f32 DIR OUT compares OUT (ckpt merge --dtype float32 of DIR/f32) and PEFT's
                                  f32 merge with the float64 merge of the same files
  peft_merge.py check-tied DIR    loads DIR/ours-{emb,head}-{bf16,f32} (ckpt's exports of the tied
                                  cases) with AutoModelForCausalLM.from_pretrained and compares
                                  their logits and greedy next tokens with the unmerged PeftModel's,
                                  beside the spread of PEFT's own bf16/f32 merges (of the model
                                  untied first, as PEFT's warning advises) and PEFT's merge of the
                                  tied model

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
    t = os.path.join(root, "tied")
    make_base(os.path.join(t, "base"), tied=True, seed=1)
    for name, module in (("emb", "embed_tokens"), ("head", "lm_head")):
        make_adapter(os.path.join(t, "base"), os.path.join(t, name), [module], seed=3, scale=0.1)
    return {"made": ["f32", "tied"]}


IDS = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(7))  # 48 next tokens


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def load_tied_base(base, dtype, untie):
    if not untie:
        return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    # what PEFT's tied-merge warning advises: load untied, lm_head a clone of the embedding
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, tie_word_embeddings=False)
    model.lm_head.weight.data = model.model.embed_tokens.weight.data.clone()
    return model


def check_tied(root):
    t = os.path.join(root, "tied")
    base = os.path.join(t, "base")
    res = {}
    for name in ("emb", "head"):
        adapter = os.path.join(t, name)
        trained = logits(PeftModel.from_pretrained(load_tied_base(base, torch.float32, False), adapter))
        tokens = trained.argmax(-1)
        agree = lambda x: int((x.argmax(-1) == tokens).sum())
        err = lambda x: float((x - trained).abs().max())
        merged = lambda dtype, untie: logits(
            PeftModel.from_pretrained(load_tied_base(base, dtype, untie), adapter).merge_and_unload().float())
        peft32, peft16, peft_tied = merged(torch.float32, True), merged(torch.bfloat16, True), merged(torch.float32, False)
        top2 = trained.topk(2, dim=-1).values
        r = {
            "positions": int(tokens.numel()),
            "trained_max_logit": float(trained.abs().max()),
            "min_margin": float((top2[..., 0] - top2[..., 1]).min()),
            "peft_spread": float((peft16 - peft32).abs().max()),
            "peft_f32": err(peft32),
            "peft_bf16": err(peft16),
            "peft_tied": err(peft_tied),
            "peft_tied_agree": agree(peft_tied),
        }
        for dt in ("bf16", "f32"):
            out = os.path.join(root, f"ours-{name}-{dt}")
            model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
            ours = logits(model)
            r[f"ours_{dt}"] = err(ours)
            r[f"ours_{dt}_agree"] = agree(ours)
            r[f"ours_{dt}_load_clean"] = not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
            r[f"ours_{dt}_untied"] = (not model.config.tie_word_embeddings) and (
                model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr())
        res[name] = r
    return res


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
    elif cmd == "check-tied":
        out = check_tied(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))

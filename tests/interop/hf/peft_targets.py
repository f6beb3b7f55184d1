"""The Python side of tests/interop/hf_targets_test.ts (run in the hf peer: torch 2.13, transformers
5.17, peft 0.21): which modules PEFT adapts, from the adapter's own config.

    make OUT           a small Llama (float32, 3 layers) in OUT/base and, per case, OUT/<case>/adapter
                       (PeftModel.save_pretrained, random LoRA weights) with its adapter_config.json
                       possibly rewritten afterwards, OUT/<case>/peft.safetensors (what
                       PeftModel.from_pretrained(...).merge_and_unload() gives, float32), and
                       OUT/<case>/adapted.json (the modules PEFT put a LoRA layer on).
    check OUT OUTPUTS  per case, the largest |ckpt - peft| and the tensors that differ from the base,
                       for ckpt's output folders (OUTPUTS: {case: folder}).

Cases:
  disagree   tensors for q/v/down_proj of every layer, then a config that adapts only q/v of layer 1
             (layers_to_transform=[1], exclude_modules=["mlp.down_proj"]): PEFT ignores the rest.
  negative   lora_alpha = -16 (legal in PEFT: the update is subtracted).
  regex      target_modules as one regex (full match) over two layers' up/gate_proj.
  excluded   target_modules ["q_proj", "v_proj"], exclude_modules a regex for layer 2's.
"""

import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

SMALL = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=96,
    max_position_embeddings=32,
    tie_word_embeddings=False,
)
CASES = {
    "disagree": (
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
        dict(target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[1], layers_pattern="layers",
             exclude_modules=["mlp.down_proj"]),
    ),
    "negative": (dict(r=4, lora_alpha=-16, target_modules=["q_proj", "v_proj"]), None),
    "regex": (dict(r=2, lora_alpha=4, target_modules=r".*\.layers\.[01]\.mlp\.(up|gate)_proj"), None),
    "excluded": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], exclude_modules=r".*\.layers\.2\..*"), None),
}


def make(out):
    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL), dtype=torch.float32)
    base.save_pretrained(os.path.join(out, "base"))
    for i, (case, (kw, rewrite)) in enumerate(CASES.items()):
        d = os.path.join(out, case)
        os.makedirs(d, exist_ok=True)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "base"), dtype=torch.float32)
        pm = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **kw))
        g = torch.Generator().manual_seed(300 + i)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        pm.save_pretrained(os.path.join(d, "adapter"))
        del pm, base
        if rewrite is not None:
            path = os.path.join(d, "adapter", "adapter_config.json")
            with open(path) as f:
                cfg = json.load(f)
            cfg.update(rewrite)
            with open(path, "w") as f:
                json.dump(cfg, f, indent=2)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "base"), dtype=torch.float32)
        pm = PeftModel.from_pretrained(base, os.path.join(d, "adapter"))
        adapted = sorted(
            n.removeprefix("base_model.model.") for n, m in pm.named_modules()
            if isinstance(m, LoraLayer) and "default" in m.lora_A
        )
        with open(os.path.join(d, "adapted.json"), "w") as f:
            json.dump(adapted, f)
        merged = pm.merge_and_unload().state_dict()
        save_file({k: v.detach().clone().contiguous() for k, v in merged.items()}, os.path.join(d, "peft.safetensors"))
    print(json.dumps(sorted(CASES)))


def check(out, outputs):
    base = load_file(os.path.join(out, "base", "model.safetensors"))
    res = {}
    for case, folder in outputs.items():
        peft = load_file(os.path.join(out, case, "peft.safetensors"))
        got = load_file(os.path.join(folder, "model.safetensors"))
        worst, scale = 0.0, 0.0
        for k, v in peft.items():
            worst = max(worst, float((got[k] - v).abs().max()))
            scale = max(scale, float(v.abs().max()))
        res[case] = {
            "keys_equal": sorted(got) == sorted(peft),
            "max_diff": worst,
            "max_abs": scale,
            "changed_peft": sorted(k for k in peft if not torch.equal(peft[k], base[k])),
            "changed_ckpt": sorted(k for k in got if k in base and not torch.equal(got[k], base[k])),
        }
    print(json.dumps(res))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], json.loads(sys.argv[3]))

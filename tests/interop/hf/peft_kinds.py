"""The Python side of tests/interop/hf_peft_test.ts (run in the hf peer: torch 2.13, transformers 5.17,
peft 0.21), one process for both steps:

    make OUT           small Llama/Mistral/Qwen2 models from configs (no downloads, float32, untied
                       embeddings) and a real PEFT adapter of every kind PEFT saves, each case in
                       OUT/<case>/: base/ (save_pretrained), adapter/ (PeftModel.save_pretrained),
                       peft_f32/ (merge_and_unload() in float32, save_pretrained), ref64.safetensors
                       (merge_and_unload() of the same in float64), bound.safetensors (per element,
                       how far a float32 merge may be from ref64, see `bounds`), logits32.pt
                       (PEFT's f32 merged model on fixed ids) and spread (the largest difference
                       between the logits of PEFT's own bf16 and f32 merges).
    check OUT OUTPUTS  what ckpt wrote (OUTPUTS: {case: {format: folder}}), against all that.

LoRA weights are drawn at random (PEFT initialises B to zero, which would make every merge the
base), DoRA magnitudes and modules_to_save copies are perturbed, so every merged tensor moves.
"""

import contextlib
import io
import json
import logging
import math
import os
import sys
import warnings

warnings.filterwarnings("ignore")
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

transformers.logging.set_verbosity_warning()
SMALL = dict(
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=160,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {
    "llama_all_linear": ("llama", dict(r=8, lora_alpha=16, target_modules="all-linear")),
    "mistral_rslora_patterns": (
        "mistral",
        dict(
            r=8,
            lora_alpha=16,
            use_rslora=True,
            target_modules=ALL,
            rank_pattern={"q_proj": 4, "mlp.down_proj": 2},
            alpha_pattern={"v_proj": 5, "layers.1.self_attn.o_proj": 3},
        ),
    ),
    "qwen2_dora": ("qwen2", dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])),
    "llama_embedding_modules_to_save": (
        "llama",
        dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"], modules_to_save=["lm_head"]),
    ),
    "qwen2_bias_lora_only": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], bias="lora_only")),
    "qwen2_lora_bias": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True)),
}
U = 2.0**-24  # float32 unit roundoff


def ids(vocab):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(7))


def load_peft(case_dir, dtype):
    """The adapter on the base loaded in `dtype`, as a user loads it (PEFT keeps a bf16 base's adapter
    in float32); for the float64 reference everything is float64."""
    base = AutoModelForCausalLM.from_pretrained(os.path.join(case_dir, "base"), dtype=dtype)
    pm = PeftModel.from_pretrained(base, os.path.join(case_dir, "adapter"))
    return pm.double() if dtype == torch.float64 else pm


def merged_name(module_name):
    return module_name.removeprefix("base_model.model.")


def bounds(pm64):
    """Per merged tensor, the largest error of a float32 merge against the float64 one: with
    T = |W| + |s|·|B||A| (elementwise), a LoRA weight within (r + 3)·u·T + u·|y|; a DoRA weight
    y·m/‖y‖ within |m/‖y‖|·e_y + |y·m/‖y‖|·(ε_norm + 4u), ε_norm the relative error of the row norm
    ((cols/256 + 10)·u plus what e_y moves it); a lora_bias bias within 3u·(|b| + |s·b_B|); every
    other tensor exact."""
    out = {}
    for name, mod in pm64.named_modules():
        if not isinstance(mod, LoraLayer) or "default" not in mod.scaling:
            continue
        s = float(mod.scaling["default"])
        base = mod.get_base_layer()
        W = base.weight.detach().double()
        if "default" in getattr(mod, "lora_embedding_A", {}):
            A = mod.lora_embedding_A["default"].detach().double()
            B = mod.lora_embedding_B["default"].detach().double()
            y, T = W + s * (B @ A).T, W.abs() + abs(s) * (B.abs() @ A.abs()).T
        else:
            A = mod.lora_A["default"].weight.detach().double()
            B = mod.lora_B["default"].weight.detach().double()
            y, T = W + s * (B @ A), W.abs() + abs(s) * (B.abs() @ A.abs())
        r = A.shape[0]
        e_y = (r + 3) * U * T + U * y.abs()
        if "default" in getattr(mod, "lora_magnitude_vector", {}):
            m = mod.lora_magnitude_vector["default"].weight.detach().double()
            n = torch.linalg.norm(y, dim=1)
            f = (m / n)[:, None]
            eps_n = (y.shape[1] / 256 + 10) * U + (y.abs() * e_y).sum(1, keepdim=True) / (n * n)[:, None]
            bound = f.abs() * e_y + (f * y).abs() * (eps_n + 4 * U)
        else:
            bound = e_y
        out[merged_name(name) + ".weight"] = bound
        lb = getattr(mod.lora_B["default"], "bias", None) if "default" in mod.lora_B else None
        if lb is not None and base.bias is not None:
            b = base.bias.detach().double()
            out[merged_name(name) + ".bias"] = 3 * U * (b.abs() + abs(s) * lb.detach().double().abs())
    return out


def make(out):
    for i, (case, (arch, kw)) in enumerate(CASES.items()):
        d = os.path.join(out, case)
        os.makedirs(d, exist_ok=True)
        torch.manual_seed(100 + i)
        base = AutoModelForCausalLM.from_config(CONFIGS[arch](**SMALL), dtype=torch.float32)
        base.save_pretrained(os.path.join(d, "base"))
        pm = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **kw))
        g = torch.Generator().manual_seed(200 + i)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                noise = torch.randn(p.shape, generator=g)
                if "lora_magnitude_vector" in n:
                    p.mul_(1 + 0.1 * noise)
                elif "lora_" in n:
                    p.copy_(0.05 * noise)
                elif "modules_to_save" in n or (p.requires_grad and n.endswith(".bias")):
                    p.add_(0.05 * noise)
        pm.save_pretrained(os.path.join(d, "adapter"))
        del pm, base

        pm64 = load_peft(d, torch.float64)
        bound = bounds(pm64)
        ref64 = {k: v.detach().clone().contiguous() for k, v in pm64.merge_and_unload().state_dict().items()}
        save_file(ref64, os.path.join(d, "ref64.safetensors"))
        save_file({k: bound.get(k, torch.zeros_like(v)).contiguous() for k, v in ref64.items()}, os.path.join(d, "bound.safetensors"))
        vocab = SMALL["vocab_size"]
        with torch.no_grad():
            m32 = load_peft(d, torch.float32).merge_and_unload()
            m32.save_pretrained(os.path.join(d, "peft_f32"))
            logits32 = m32(ids(vocab)).logits
            m16 = load_peft(d, torch.bfloat16).merge_and_unload().float()
            spread = float((m16(ids(vocab)).logits - logits32).abs().max())
        torch.save(logits32, os.path.join(d, "logits32.pt"))
        with open(os.path.join(d, "spread.json"), "w") as f:
            json.dump(spread, f)
    print(json.dumps(sorted(CASES)))


def safetensors_of(folder):
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(folder, f)))
    return sd


def ratio(got, ref, bound):
    """Largest |got - ref| / bound (an exact tensor, bound 0, must be equal)."""
    worst = 0.0
    for k, r in ref.items():
        diff = (got[k].double() - r).abs()
        b = bound[k]
        if bool(((b == 0) & (diff > 0)).any()):
            return math.inf
        pos = b > 0
        if bool(pos.any()):
            worst = max(worst, float((diff[pos] / b[pos]).max()))
    return worst


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def load_checked(folder, vocab, logits32):
    """from_pretrained of a folder ckpt wrote: loading info, key warnings, logits vs PEFT's f32."""
    cap = Capture()
    logger = logging.getLogger("transformers")
    logger.addHandler(cap)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    finally:
        logger.removeHandler(cap)
    keyish = [m for m in cap.records + stderr.getvalue().splitlines() if any(w in m for w in ("not used", "newly initialized", "missing", "unexpected", "mismatch"))]
    with torch.no_grad():
        diff = float((model(ids(vocab)).logits - logits32).abs().max())
    return {
        "loading_info": {k: sorted(map(str, v)) for k, v in info.items() if len(v) > 0},
        "key_warnings": keyish,
        "logits_diff": diff,
    }


def check(out, outputs):
    res = {}
    for case, formats in outputs.items():
        d = os.path.join(out, case)
        ref = load_file(os.path.join(d, "ref64.safetensors"))
        bound = load_file(os.path.join(d, "bound.safetensors"))
        peft = safetensors_of(os.path.join(d, "peft_f32"))
        logits32 = torch.load(os.path.join(d, "logits32.pt"), weights_only=True)
        with open(os.path.join(d, "spread.json")) as f:
            spread = json.load(f)
        r = {"spread": spread, "peft_ratio": ratio(peft, ref, bound), "formats": {}}
        for fmt, folder in formats.items():
            entry = {}
            if fmt == "safetensors":
                ours = safetensors_of(folder)
                entry["names_equal"] = sorted(ours) == sorted(peft)
                entry["shapes_equal"] = all(ours[k].shape == v.shape and ours[k].dtype == v.dtype for k, v in peft.items() if k in ours)
                entry["ratio"] = ratio(ours, ref, bound) if entry["names_equal"] else None
            entry.update(load_checked(folder, SMALL["vocab_size"], logits32))
            r["formats"][fmt] = entry
        res[case] = r
    print(json.dumps(res))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], json.loads(sys.argv[3]))

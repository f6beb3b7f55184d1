# The torch side of `deno task bench e2e`, run with the hf peer (torch 2.13, transformers 5.17,
# peft 0.21): what a user would write instead of ckpt, and the check of the outputs.
#
#   python e2e_torch.py script BASE ADAPTER OUT   the 20-line merge: load_file, W + s * (B @ A) in
#                                                 f32, one rounding to bf16, save_file
#   python e2e_torch.py peft BASE ADAPTER OUT     PEFT's own path: from_pretrained (bf16),
#                                                 PeftModel.from_pretrained, merge_and_unload,
#                                                 save_pretrained
#   python e2e_torch.py check BASE ADAPTER CKPT TORCH [PEFT]
#       compares ckpt's merged model.safetensors with the float64 merge (every element within half
#       an ulp of bf16 plus fp32 accumulation slack, the bound tests/merge uses), the torch script's
#       output with ckpt's (within twice that bound: both roundings of the same float64 value, the
#       fp32 sums in another order) and reports PEFT's (which rounds twice: delta to bf16, then the
#       add) in ulps; prints one JSON line, exits 1 when a bound is exceeded or a tensor differs in
#       name, dtype or shape.
import json
import sys


def script(base, adapter, out):
    import torch
    from safetensors.torch import load_file, save_file

    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    s = cfg["lora_alpha"] / cfg["r"]
    w = load_file(f"{base}/model.safetensors")
    lora = load_file(f"{adapter}/adapter_model.safetensors")
    for key in [k for k in lora if ".lora_A." in k]:
        name = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
        a = lora[key].float()
        b = lora[key.replace(".lora_A.", ".lora_B.")].float()
        w[name] = (w[name].float() + (b @ a) * s).to(torch.bfloat16)
    save_file(w, f"{out}/model.safetensors", metadata={"format": "pt"})


def peft(base, adapter, out):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out)


def ordered(t):
    import torch

    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i + 32768), i)


def ulp_bf16(x):
    import torch

    # x = m * 2^e with 0.5 <= |m| < 1: a bf16 ulp there is 2^(e - 8) (normal numbers)
    _, e = torch.frexp(x)
    return torch.ldexp(torch.ones_like(x), e.clamp(min=-125) - 8)


def check(base, adapter, ours_dir, torch_dir, peft_dir=None):
    import torch
    from safetensors import safe_open

    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    s = cfg["lora_alpha"] / cfg["r"]
    res = {"tensors": 0, "elements": 0, "merged": 0, "problems": [], "max_exact_ratio": 0.0,
           "max_torch_ratio": 0.0}
    others = {"torch": torch_dir, **({"peft": peft_dir} if peft_dir else {})}
    for k in others:
        res[k] = {"equal": 0, "max_ulp": 0}
    files = {k: safe_open(f"{d}/model.safetensors", "pt") for k, d in others.items()}
    base_f = safe_open(f"{base}/model.safetensors", "pt")
    lora = safe_open(f"{adapter}/adapter_model.safetensors", "pt")
    lora_keys = set(lora.keys())
    with safe_open(f"{ours_dir}/model.safetensors", "pt") as ours:
        keys = set(ours.keys())
        if keys != set(base_f.keys()):
            res["problems"].append("ckpt's tensor names differ from the base's")
        for k, f in files.items():
            if set(f.keys()) != keys:
                res["problems"].append(f"{k}'s tensor names differ from ckpt's")
        for name in sorted(keys):
            o = ours.get_tensor(name)
            res["tensors"] += 1
            res["elements"] += o.numel()
            lk = "base_model.model." + name.replace(".weight", ".lora_A.weight")
            if lk in lora_keys:
                res["merged"] += o.numel()
                a = lora.get_tensor(lk).double()
                b = lora.get_tensor(lk.replace(".lora_A.", ".lora_B.")).double()
                w = base_f.get_tensor(name).double()
                delta = (b @ a) * s
                exact = w + delta
                slack = 2.0**-24 * (66 * delta.abs().max() + 4 * exact.abs())
                bound = ulp_bf16(exact) / 2 + slack
                ratio = (o.double() - exact).abs() / bound
                res["max_exact_ratio"] = max(res["max_exact_ratio"], float(ratio.max()))
                if "torch" in files:
                    t = files["torch"].get_tensor(name).double()
                    r2 = (t - o.double()).abs() / (2 * bound)
                    res["max_torch_ratio"] = max(res["max_torch_ratio"], float(r2.max()))
            elif not torch.equal(o, base_f.get_tensor(name)):
                res["problems"].append(f"{name}: not merged but changed")
            for k, f in files.items():
                if name not in f.keys():
                    continue
                t = f.get_tensor(name)
                if t.dtype != o.dtype or t.shape != o.shape:
                    res["problems"].append(f"{name}: {k} has {t.dtype} {list(t.shape)}")
                    continue
                d = (ordered(t) - ordered(o)).abs()
                res[k]["equal"] += int((d == 0).sum())
                res[k]["max_ulp"] = max(res[k]["max_ulp"], int(d.max()))
    if res["max_exact_ratio"] > 1:
        res["problems"].append(f"ckpt is {res['max_exact_ratio']:.3f}x the float64 bound")
    if res["max_torch_ratio"] > 1:
        res["problems"].append(f"the torch script is {res['max_torch_ratio']:.3f}x the bound from ckpt")
    print(json.dumps(res))
    sys.exit(1 if res["problems"] else 0)


if __name__ == "__main__":
    {"script": script, "peft": peft, "check": check}[sys.argv[1]](*sys.argv[2:])

/**
 * `ckpt gather <input> --out <folder>`: the one-line replacement for `accelerate merge-weights` and
 * `dcp_to_torch_save`. Gathers any weights input gatherShards reads (a torch.distributed.checkpoint
 * folder, HF safetensors shards, a torch `.bin/.pt` or its shard folder, one safetensors file) and
 * writes a finished model folder with writeModel, through the pipeline runner (staging folder,
 * rename when complete, manifest).
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { builtinStages, type RawConfig, validateConfig } from "../pipelines/config.ts";
import { isDcpProbe } from "../readers/dcp.ts";
import { inputKinds } from "../readers/kinds.ts";
import { probeInput } from "../readers/probe.ts";
import { parseCommand, stringOption, UsageError } from "./_args.ts";
import { RUN_FLAG_OPTIONS, runFlags, runWithCli } from "./run.ts";

const HELP = `ckpt gather: gather sharded weights into one model folder

Usage: ckpt gather <input> --out <folder> [options]

<input> is anything gatherShards reads: a torch.distributed.checkpoint folder (.metadata plus
__<rank>_<n>.distcp, as FSDP SHARDED_STATE_DICT, FSDP2/DTensor and accelerate's
pytorch_model_fsdp_0/ leave it), a Hugging Face safetensors shard folder, a torch .bin/.pt file or
pytorch_model.bin shard folder, or one safetensors file. Tensors stream from the shards to the
output, block by block; nothing is loaded whole. Wrapper prefixes (module., _orig_mod.,
_fsdp_wrapped_module.) are removed. A PEFT-wrapped model (base_layer, lora_A.default, as FSDP
saves a LoRA run) is merged as HALOs does on its final save when --lora-r and --lora-alpha are
given (W + alpha/r * B @ A); without them it is refused (MODEL_WRAPPED).

Options:
  --out <folder>          output folder (required; must not exist unless --overwrite)
  --format <f>            safetensors (default) or bin (pytorch_model.bin, like safe_serialization=False)
  --max-shard-size <s>    largest output shard, e.g. 5GB (default), 500MB, or bytes
  --dtype <d>             cast floating-point tensors (bfloat16, float16, float32); default: kept
  --kind <k>              input kind instead of detecting it (${"${KINDS}"})
  --config <file>         config.json to write beside the weights (default: the input folder's, or
                          for a DCP folder its parent's, when present)
  --lora-r <r>            merge PEFT-wrapped LoRA weights with rank r (with --lora-alpha)
  --lora-alpha <a>        LoRA alpha for that merge
  --backend <b>           merge backend: auto (default), webgpu or cpu
  --overwrite             replace an existing ckpt output (one with ckpt-manifest.json)
  --force                 with --overwrite: replace it even if ckpt did not write it
  --wait                  wait for another run writing the same output (default: OUTPUT_LOCKED)
  --dry-run               print the plan (files, sizes) and write nothing
  --log <style>           auto, tty, json or quiet
  -h, --help              this help

Examples:
  ckpt gather runs/x/checkpoint-500/pytorch_model_fsdp_0 --out exports/x-500
  ckpt gather runs/x/state/model --out exports/x --format bin --max-shard-size 2GB --dtype bf16
  ckpt gather runs/lora/state/model --out exports/lora-merged --lora-r 16 --lora-alpha 32

Exit codes: 0 ok, 1 failed, 2 usage error, 130 interrupted`;

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** The config.json to use: explicit, else the input folder's, else a DCP folder's parent's. */
export async function findModelConfig(
  input: string,
  explicit?: string,
): Promise<string | undefined> {
  if (explicit !== undefined) return resolve(explicit);
  if (await isFile(join(input, "config.json"))) return undefined; // gatherShards finds it itself
  const probe = await probeInput(input).catch(() => undefined);
  if (probe !== undefined && isDcpProbe(probe)) {
    const parent = join(dirname(resolve(input)), "config.json");
    if (await isFile(parent)) return parent;
  }
  return undefined;
}

/** The pipeline `ckpt gather` runs: gatherShards then writeModel. */
export function gatherConfig(
  input: string,
  out: string,
  options: {
    format?: string;
    maxShardSize?: string;
    dtype?: string;
    kind?: string;
    config?: string;
    lora?: { r: number; alpha: number };
  } = {},
): RawConfig {
  return {
    description: `ckpt gather ${input}`,
    output: resolve(out),
    stages: [
      {
        use: "gatherShards",
        from: resolve(input),
        ...(options.kind === undefined ? {} : { kind: options.kind }),
        ...(options.config === undefined ? {} : { config: options.config }),
      },
      ...(options.lora === undefined
        ? []
        : [{ use: "mergeLora", r: options.lora.r, alpha: options.lora.alpha }]),
      {
        use: "writeModel",
        ...(options.format === undefined ? {} : { format: options.format }),
        ...(options.maxShardSize === undefined ? {} : { maxShardSize: options.maxShardSize }),
        ...(options.dtype === undefined ? {} : { dtype: options.dtype }),
      },
    ],
  };
}

/** Entry point of `ckpt gather`. */
export async function run(args: string[]): Promise<number> {
  const stages = await builtinStages();
  const help = HELP.replace("${KINDS}", inputKinds().map((k) => k.name).join(", "));
  const parsed = parseCommand(args, {
    out: { type: "string", short: "o" },
    format: { type: "string" },
    "max-shard-size": { type: "string" },
    dtype: { type: "string" },
    kind: { type: "string" },
    config: { type: "string" },
    "lora-r": { type: "string" },
    "lora-alpha": { type: "string" },
    ...RUN_FLAG_OPTIONS,
  }, help);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`expected one input file or folder, got ${parsed.positionals.length}`);
  }
  const input = parsed.positionals[0]!;
  const out = stringOption(parsed, "out", true);
  const format = stringOption(parsed, "format");
  if (format !== undefined && format !== "safetensors" && format !== "bin") {
    throw new UsageError(`--format must be safetensors or bin (got "${format}")`);
  }
  const config = await findModelConfig(input, stringOption(parsed, "config"));
  const lora = loraOption(stringOption(parsed, "lora-r"), stringOption(parsed, "lora-alpha"));
  const raw = gatherConfig(input, out, {
    ...(format === undefined ? {} : { format }),
    ...optional("maxShardSize", stringOption(parsed, "max-shard-size")),
    ...optional("dtype", stringOption(parsed, "dtype")),
    ...optional("kind", stringOption(parsed, "kind")),
    ...optional("config", config),
    ...(lora === undefined ? {} : { lora }),
  });
  const cfg = validateConfig(raw, { stages, baseDir: Deno.cwd(), source: "ckpt gather" });
  return await runWithCli(cfg, runFlags(parsed));
}

/** `--lora-r` and `--lora-alpha`: both or neither, positive numbers (r an integer). */
export function loraOption(
  r: string | undefined,
  alpha: string | undefined,
): { r: number; alpha: number } | undefined {
  if (r === undefined && alpha === undefined) return undefined;
  if (r === undefined || alpha === undefined) {
    throw new UsageError("--lora-r and --lora-alpha go together");
  }
  const rn = Number(r), an = Number(alpha);
  if (!Number.isInteger(rn) || rn <= 0) {
    throw new UsageError(`--lora-r must be a positive integer (got "${r}")`);
  }
  if (!Number.isFinite(an) || an <= 0) {
    throw new UsageError(`--lora-alpha must be a positive number (got "${alpha}")`);
  }
  return { r: rn, alpha: an };
}

function optional<K extends string>(key: K, value: string | undefined): { [P in K]?: string } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: string };
}

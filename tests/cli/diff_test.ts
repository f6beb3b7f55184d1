import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { decodeF32 } from "../../formats/dtype.ts";
import { openSafetensors, writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, mergeArgs } from "./_cli.ts";

const DCP = join(REPO_ROOT, "tests", "fixtures", "dcp");
const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

interface JsonTensor {
  name: string;
  status: string;
  differing: number;
  relNorm: number | string;
  first?: { at: number[]; a: number; b: number };
  maxAbsAt?: number[];
}

function json(stdout: string): {
  equal: boolean;
  tensors: JsonTensor[];
  onlyA: string[];
  onlyB: string[];
  totals: Record<string, number>;
} {
  return JSON.parse(stdout);
}

Deno.test("ckpt diff of a model folder with itself finds nothing and exits 0", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(dir, { size: "tiny" });
    const r = await ckpt(["diff", run.base, run.base, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const report = json(r.stdout);
    assert.equal(report.equal, true);
    assert.ok(report.tensors.length > 10);
    for (const t of report.tensors) {
      assert.equal(t.status, "equal", t.name);
      assert.equal(t.differing, 0);
      assert.equal(t.relNorm, 0);
    }
    const text = await ckpt(["diff", run.base, run.base]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /A and B are equal/);
  });
});

Deno.test("ckpt diff of base against merged differs exactly on the adapted modules, by the float64 norms the merge reported", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(dir, { size: "tiny" });
    const merged = join(dir, "merged");
    const m = await ckpt(mergeArgs(run, merged, "--log", "quiet"));
    assert.equal(m.code, 0, m.stderr);
    const manifest = JSON.parse(await Deno.readTextFile(join(merged, "ckpt-manifest.json")));
    const mergeStage = manifest.stages.find((s: { name: string }) => s.name === "mergeLora");
    const changes = new Map<string, { module: string; relNorm: number }>(
      mergeStage.report.moduleChanges.map((c: { tensor: string }) => [c.tensor, c]),
    );
    const r = await ckpt(["diff", run.base, merged, "--json"]);
    assert.equal(r.code, 1, r.stderr);
    const report = json(r.stdout);
    assert.equal(report.equal, false);
    assert.deepEqual(report.onlyA, []);
    assert.deepEqual(report.onlyB, []);
    await using base = await openSafetensors(join(run.base, "model.safetensors"));
    await using out = await openSafetensors(join(merged, "model.safetensors"));
    for (const t of report.tensors) {
      const adapted = TARGETS.some((m) => t.name.endsWith(`.${m}.weight`));
      assert.equal(t.status, adapted ? "different" : "equal", t.name);
      if (!adapted) continue;
      assert.ok(t.differing > 0);
      // ‖merged − W‖/‖W‖ by a plain float64 loop over the whole tensors
      const w = decodeF32("BF16", await base.require(t.name).read());
      const v = decodeF32("BF16", await out.require(t.name).read());
      let sw = 0, sd = 0;
      for (let i = 0; i < w.length; i++) {
        sw += w[i]! * w[i]!;
        sd += (v[i]! - w[i]!) ** 2;
      }
      assert.ok(Math.abs((t.relNorm as number) - Math.sqrt(sd) / Math.sqrt(sw)) < 1e-6, t.name);
      // the merge measured the same change while writing (manifest, mergeLora's report)
      const change = changes.get(t.name);
      assert.ok(change !== undefined, t.name);
      assert.ok(Math.abs(change.relNorm - (t.relNorm as number)) < 1e-9, t.name);
      assert.equal(change.module, t.name.replace(/\.weight$/, ""));
    }
    assert.equal(changes.size, 2 * TARGETS.length);
    // the run ends with the modules that moved most, largest first
    const top = [...changes.values()].sort((a, b) => b.relNorm - a.relNorm).slice(0, 5);
    assert.match(m.stdout, /most changed modules, \|\|dW\|\|\/\|\|W\|\| \(5 of 14 merged\):/);
    const printed = m.stdout.split("\n").filter((l) => /^ {2}model\.layers/.test(l));
    assert.deepEqual(printed.map((l) => l.trim().split(/\s+/)[0]), top.map((c) => c.module));
    // the same merge computed on the fly equals the written one
    const fly = await ckpt([
      "diff",
      run.base,
      merged,
      "--adapter-a",
      run.adapter,
      "--backend",
      "cpu",
    ]);
    assert.equal(fly.code, 0, fly.stdout + fly.stderr);
    assert.match(fly.stdout, /\+ adapter .* \(merged on cpu\)/);
  });
});

Deno.test("ckpt diff finds the safetensors and .bin exports of one model equal", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(dir, { size: "tiny" });
    const bin = join(dir, "bin");
    const g = await ckpt([
      "gather",
      run.base,
      "--out",
      bin,
      "--format",
      "bin",
      "--max-shard-size",
      "3MB",
      "--log",
      "quiet",
    ]);
    assert.equal(g.code, 0, g.stderr);
    const r = await ckpt(["diff", run.base, bin]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /\(torch-shards\)/);
    // the .bin stores the tied head (one storage, two keys); the safetensors file stores it once
    assert.match(r.stdout, /lm_head.weight tied to model.embed_tokens.weight/);
    assert.match(r.stdout, /A and B are equal/);
  });
});

Deno.test("ckpt diff finds a DCP folder equal to its gathered safetensors", async () => {
  await withTempDir(async (dir) => {
    const input = join(DCP, "bf16_w4", "model");
    const out = join(dir, "gathered");
    const g = await ckpt(["gather", input, "--out", out, "--log", "quiet"]);
    assert.equal(g.code, 0, g.stderr);
    const r = await ckpt(["diff", input, out, "--json"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const report = json(r.stdout);
    assert.equal(report.totals.compared, 7);
    assert.equal(report.totals.equal, 7);
  });
});

Deno.test("ckpt diff names a flipped element, a shape mismatch and missing tensors, and exits 1", async () => {
  await withTempDir(async (dir) => {
    const f32 = (shape: number[], v: number[]) =>
      tensorFromBytes("F32", shape, new Uint8Array(new Float32Array(v).buffer));
    await writeSafetensors(
      join(dir, "a.safetensors"),
      new StateDict([
        ["w", f32([2, 3], [1, 2, 3, 4, 5, 6])],
        ["r", f32([2, 2], [1, 2, 3, 4])],
        ["gone", f32([1], [1])],
      ]),
    );
    await writeSafetensors(
      join(dir, "b.safetensors"),
      new StateDict([
        ["module.w", f32([2, 3], [1, 2, 3, 4, -5, 6])],
        ["r", f32([4], [1, 2, 3, 4])],
        ["new", f32([1], [1])],
      ]),
    );
    const r = await ckpt([
      "diff",
      join(dir, "a.safetensors"),
      join(dir, "b.safetensors"),
      "--json",
    ]);
    assert.equal(r.code, 1, r.stderr);
    const report = json(r.stdout);
    const w = report.tensors.find((t) => t.name === "w")!;
    assert.deepEqual(w.first, { at: [1, 1], a: 5, b: -5 });
    assert.equal(report.tensors.find((t) => t.name === "r")!.status, "shape");
    assert.deepEqual(report.onlyA, ["gone"]);
    assert.deepEqual(report.onlyB, ["new"]);
    const text = await ckpt(["diff", join(dir, "a.safetensors"), join(dir, "b.safetensors")]);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /w +different .*first at \[1, 1\]: A 5 B -5/);
    assert.match(text.stdout, /r +shape +A F32\[2, 2\] +B F32\[4\]/);
    assert.match(text.stdout, /only in A \(1\):\n {2}gone/);
    assert.match(text.stdout, /only in B \(1\):\n {2}new/);
    assert.match(text.stdout, /A and B differ/);
  });
});

Deno.test("ckpt diff exits 2 on wrong usage and on an input it cannot read", async () => {
  await withTempDir(async (dir) => {
    const one = await ckpt(["diff", dir]);
    assert.equal(one.code, 2);
    assert.match(one.stderr, /expected two inputs/);
    const tol = await ckpt(["diff", dir, dir, "--tolerance", "lots"]);
    assert.equal(tol.code, 2);
    assert.match(tol.stderr, /--tolerance/);
    const missing = await ckpt(["diff", join(dir, "nope"), dir]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /\[INPUT_MISSING\]/);
  });
});

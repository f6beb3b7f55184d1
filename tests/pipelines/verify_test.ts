import assert from "node:assert/strict";
import { join } from "node:path";
import { decodeF32, encodeF32 } from "../../formats/dtype.ts";
import {
  openSafetensors,
  writeSafetensors,
  writeSafetensorsSharded,
} from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { saveTorch } from "../../formats/torch/save.ts";
import { writeTorchSharded } from "../../formats/torch/state_dict.ts";
import { isCkptError } from "../../errors.ts";
import { buildManifest, writeManifest } from "../../pipelines/manifest.ts";
import { sampleRows, verifyCheckpoint } from "../../pipelines/verify.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { withTempDir } from "../_helpers/tmp.ts";

async function sealed(dir: string): Promise<void> {
  await writeManifest(dir, await buildManifest(dir, { output: dir }));
}

Deno.test("`sampleRows()` spreads rows and includes the first and last", () => {
  assert.deepEqual(sampleRows(3, 4), [0, 1, 2]);
  assert.deepEqual(sampleRows(100, 4), [0, 33, 66, 99]);
  // At the edges: as many rows as samples, one more, one sample, no rows.
  assert.deepEqual(sampleRows(4, 4), [0, 1, 2, 3]);
  assert.deepEqual(sampleRows(5, 4), [0, 1, 3, 4]);
  assert.deepEqual(sampleRows(10, 1), [0]);
  assert.deepEqual(sampleRows(0, 4), []);
});

Deno.test("`verifyCheckpoint()` passes a sealed folder and fails on a flipped byte", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "config.json"), '{"a": 1}');
    const sd = new StateDict([["w", tensorFromBytes("F32", [2], new Uint8Array(8))]]);
    await writeSafetensors(join(dir, "model.safetensors"), sd);
    await sealed(dir);
    const good = await verifyCheckpoint(dir);
    assert.equal(good.ok, true, JSON.stringify(good.checks));
    assert.equal(good.filesHashed, 2);
    assert.equal(good.filesLoaded, 2);

    const bytes = await Deno.readFile(join(dir, "model.safetensors"));
    bytes[bytes.length - 1]! ^= 0x01;
    await Deno.writeFile(join(dir, "model.safetensors"), bytes);
    const bad = await verifyCheckpoint(dir);
    assert.equal(bad.ok, false);
    assert.deepEqual(
      bad.checks.filter((c) => !c.ok).map((c) => [c.kind, c.file]),
      [["hash", "model.safetensors"]],
    );
  });
});

Deno.test("`verifyCheckpoint()` loads a .safetensors file and reports its header valid with its tensor count", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([
      ["a", tensorFromBytes("F32", [2], new Uint8Array(8))],
      ["b", tensorFromBytes("F32", [1], new Uint8Array(4))],
      ["c", tensorFromBytes("F32", [3], new Uint8Array(12))],
    ]);
    await writeSafetensors(join(dir, "model.safetensors"), sd);
    await sealed(dir);
    const r = await verifyCheckpoint(dir);
    assert.deepEqual(
      r.checks.filter((c) => c.kind === "load").map((c) => [c.file, c.ok, c.message]),
      [["model.safetensors", true, "safetensors header valid, 3 tensors"]],
    );
  });
});

Deno.test("`verifyCheckpoint()` reports missing, extra and unloadable files", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "a.json"), "{not json");
    await Deno.writeTextFile(join(dir, "b.txt"), "b");
    await sealed(dir);
    await Deno.remove(join(dir, "b.txt"));
    await Deno.writeTextFile(join(dir, "c.txt"), "c");
    const r = await verifyCheckpoint(dir);
    assert.equal(r.ok, false);
    const failed = r.checks.filter((c) => !c.ok).map((c) => `${c.kind}:${c.file}:${c.message}`);
    assert.ok(failed.some((f) => f.startsWith("hash:b.txt:missing")), failed.join("\n"));
    assert.ok(failed.some((f) => f.startsWith("hash:c.txt:not in the manifest")));
    assert.ok(failed.some((f) => f.startsWith("load:a.json:")));
  });
});

Deno.test("`verifyCheckpoint()` fails a folder without a manifest", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "a.json"), "{}");
    const r = await verifyCheckpoint(dir);
    assert.equal(r.ok, false);
    assert.equal(r.checks[0]!.kind, "manifest");
  });
});

/** Writes base + adapter merged in float64 (an independent reference), rounded to BF16. */
async function writeReferenceMerge(
  base: string,
  adapter: string,
  scale: number,
  out: string,
  perturb?: string,
): Promise<void> {
  const w = await openSafetensors(join(base, "model.safetensors"));
  const ad = await openSafetensors(join(adapter, "adapter_model.safetensors"));
  const merged = new StateDict();
  for (const [name, ref] of w) {
    const module = name.replace(/\.weight$/, "");
    const a = ad.get(`base_model.model.${module}.lora_A.weight`);
    const b = ad.get(`base_model.model.${module}.lora_B.weight`);
    if (!a || !b) {
      merged.set(name, tensorFromBytes(ref.dtype, ref.shape, (await ref.read()).slice()));
      continue;
    }
    const [rows, cols] = [ref.shape[0]!, ref.shape[1]!];
    const r = a.shape[0]!;
    const W = decodeF32(ref.dtype, await ref.read());
    const A = decodeF32("F32", await a.read());
    const B = decodeF32("F32", await b.read());
    const outF = new Float32Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += B[i * r + k]! * A[k * cols + j]!;
        outF[i * cols + j] = W[i * cols + j]! + scale * d;
      }
    }
    if (name === perturb) outF[cols + 1] = outF[cols + 1]! + 0.5;
    merged.set(name, tensorFromBytes("BF16", ref.shape, encodeF32("BF16", outF)));
  }
  await Deno.mkdir(out, { recursive: true });
  await writeSafetensors(join(out, "model.safetensors"), merged);
  await Deno.copyFile(join(base, "config.json"), join(out, "config.json"));
  await w.close();
  await ad.close();
  await sealed(out);
}

Deno.test("`verifyCheckpoint()` recomputes sampled merged rows from base and adapter", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const scale = run.alpha / run.shape.rank;
    await writeReferenceMerge(run.base, run.adapter, scale, join(dir, "good"));
    const good = await verifyCheckpoint(join(dir, "good"), {
      base: run.base,
      adapter: run.adapter,
      samples: 3,
    });
    assert.equal(good.ok, true, JSON.stringify(good.checks.filter((c) => !c.ok)));
    assert.equal(good.checks.filter((c) => c.kind === "merge").length, 7 * run.shape.layers);
    for (const c of good.checks.filter((c) => c.kind === "merge")) {
      assert.match(c.message, new RegExp(`^sampled rows match W \\+ ${scale}·B·A \\(worst error`));
    }
    assert.ok(good.rowsChecked >= 7 * run.shape.layers * 3);

    // The unmerged base fails (the adapter is not in it)...
    await Deno.mkdir(join(dir, "unmerged"));
    await Deno.copyFile(
      join(run.base, "model.safetensors"),
      join(dir, "unmerged", "model.safetensors"),
    );
    await Deno.copyFile(join(run.base, "config.json"), join(dir, "unmerged", "config.json"));
    await sealed(join(dir, "unmerged"));
    const unmerged = await verifyCheckpoint(join(dir, "unmerged"), {
      base: run.base,
      adapter: run.adapter,
    });
    assert.equal(unmerged.ok, false);
    // ...and so does one wrong element in a sampled row, even with consistent hashes.
    const target = "model.layers.1.mlp.down_proj.weight";
    await writeReferenceMerge(run.base, run.adapter, scale, join(dir, "bad"), target);
    const bad = await verifyCheckpoint(join(dir, "bad"), {
      base: run.base,
      adapter: run.adapter,
      samples: 32,
    });
    assert.deepEqual(bad.checks.filter((c) => !c.ok).map((c) => c.tensor), [target]);
    assert.match(
      bad.checks.find((c) => !c.ok)!.message,
      new RegExp(`^1 sampled elements differ from W \\+ ${scale}·B·A \\(worst `),
    );
  });
});

Deno.test("`verifyCheckpoint()` checks a shard index against its shards", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([
      ["a", tensorFromBytes("F32", [4], new Uint8Array(16))],
      ["b", tensorFromBytes("F32", [4], new Uint8Array(16))],
    ]);
    await writeSafetensorsSharded(dir, sd, { maxShardSize: 16 });
    await sealed(dir);
    const good = await verifyCheckpoint(dir);
    assert.equal(good.ok, true, JSON.stringify(good.checks));
    // An index naming a tensor its shard does not hold fails to load, even with matching hashes.
    const indexPath = join(dir, "model.safetensors.index.json");
    const index = JSON.parse(await Deno.readTextFile(indexPath));
    const [first, second] = Object.values(index.weight_map) as string[];
    index.weight_map = { a: second, b: first };
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    await sealed(dir);
    const bad = await verifyCheckpoint(dir);
    assert.deepEqual(
      bad.checks.filter((c) => !c.ok).map((c) => [c.kind, c.file]),
      [["load", "model.safetensors.index.json"]],
    );
  });
});

Deno.test("`verifyCheckpoint()` reads JSON as Python writes it: NaN and ±Infinity, nothing looser", async () => {
  await withTempDir(async (dir) => {
    // json.dump({"loss": float("nan"), "max": float("inf"), "min": float("-inf")}) writes this
    await Deno.writeTextFile(
      join(dir, "metrics.json"),
      '{"loss": NaN, "max": Infinity, "min": -Infinity, "counter": 64}',
    );
    await Deno.writeTextFile(join(dir, "log.jsonl"), '{"loss": NaN}\n{"loss": -Infinity}\n');
    await sealed(dir);
    const good = await verifyCheckpoint(dir);
    assert.equal(good.ok, true, JSON.stringify(good.checks));
    assert.equal(good.filesLoaded, 2);
  });
  // what json.loads refuses, verify refuses
  for (const text of ['{"a": nan}', '{"a": -NaN}', '{"a": +Infinity}', '{"a": inf}', '{"a": 1,}']) {
    await withTempDir(async (dir) => {
      await Deno.writeTextFile(join(dir, "metrics.json"), text);
      await sealed(dir);
      const r = await verifyCheckpoint(dir);
      assert.deepEqual(
        r.checks.filter((c) => !c.ok).map((c) => [c.kind, c.file, c.message.slice(0, 12)]),
        [["load", "metrics.json", "[JSON_PARSE]"]],
        text,
      );
    });
  }
});

Deno.test("a run whose eval.json holds NaN and ±Infinity writes metrics.json that its verify passes", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      join(dir, "eval.json"),
      '{"loss": NaN, "rewards/margin": -Infinity, "kl": Infinity, "counter": 8}',
    );
    await runPipeline(
      { output: "out", stages: [{ use: "writeMetrics", from: "eval.json" }] },
      { baseDir: dir, backend: "cpu" },
    );
    assert.equal(
      await Deno.readTextFile(join(dir, "out", "metrics.json")),
      '{"loss": NaN, "rewards/margin": -Infinity, "kl": Infinity, "counter": 8}',
    );
    const r = await verifyCheckpoint(join(dir, "out"));
    assert.equal(r.ok, true, JSON.stringify(r.checks.filter((c) => !c.ok)));
  });
});

Deno.test("a base config.json with NaN (as transformers' json.dumps writes it) is read, kept and verified", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), {
      size: { hidden: 16, intermediate: 32, layers: 1, heads: 2, kvHeads: 1, vocab: 64, rank: 2 },
    });
    const cfgPath = join(run.base, "config.json");
    const text = await Deno.readTextFile(cfgPath);
    await Deno.writeTextFile(cfgPath, text.replace(/^\{/, '{\n  "rope_scaling_factor": NaN,'));
    await runPipeline(
      {
        output: "out",
        stages: [
          { use: "gatherShards", from: run.base },
          { use: "writeModel", dtype: "float32" },
        ],
      },
      { baseDir: dir, backend: "cpu" },
    );
    assert.match(
      await Deno.readTextFile(join(dir, "out", "config.json")),
      /"rope_scaling_factor": NaN/,
    );
    const r = await verifyCheckpoint(join(dir, "out"));
    assert.equal(r.ok, true, JSON.stringify(r.checks.filter((c) => !c.ok)));
  });
});

Deno.test("`verifyCheckpoint()` reports every entry the manifest does not list, of any type", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "out");
    await Deno.mkdir(join(dir, "sub"), { recursive: true });
    await Deno.writeTextFile(join(dir, "config.json"), '{"a": 1}');
    await Deno.writeTextFile(join(dir, "sub", "x.txt"), "x");
    await sealed(dir);
    assert.equal((await verifyCheckpoint(dir)).ok, true);
    // a symlinked adapter_config.json makes transformers load the folder as an adapter
    await Deno.writeTextFile(join(root, "adapter_config.json"), '{"peft_type": "LORA"}');
    await Deno.symlink(join(root, "adapter_config.json"), join(dir, "adapter_config.json"));
    await Deno.symlink("config.json", join(dir, "sub", "dangling.json"));
    await new Deno.Command("mkfifo", { args: [join(dir, "pipe")] }).output();
    await Deno.mkdir(join(dir, "empty"));
    await Deno.mkdir(join(dir, "sub", "deeper", "empty"), { recursive: true });
    using _socket = Deno.listen({ transport: "unix", path: join(dir, "sub", "sock") });
    const r = await verifyCheckpoint(dir);
    assert.equal(r.ok, false);
    assert.deepEqual(
      r.checks.filter((c) => !c.ok).map((c) => `${c.file}: ${c.message}`).sort(),
      [
        "adapter_config.json: not in the manifest (a symlink)",
        "empty: not in the manifest (an empty folder)",
        "pipe: not in the manifest (a FIFO)",
        "sub/dangling.json: not in the manifest (a symlink)",
        "sub/deeper/empty: not in the manifest (an empty folder)",
        "sub/sock: not in the manifest (a socket)",
      ],
    );
  });
});

Deno.test("`verifyCheckpoint()` never opens a listed file that became a symlink or a FIFO", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "out");
    await Deno.mkdir(dir);
    await Deno.writeTextFile(join(dir, "config.json"), '{"a": 1}');
    await Deno.writeTextFile(join(dir, "b.txt"), "b");
    await sealed(dir);
    // same bytes, reached through a link: still not what was written
    await Deno.rename(join(dir, "config.json"), join(root, "config.json"));
    await Deno.symlink(join(root, "config.json"), join(dir, "config.json"));
    await Deno.remove(join(dir, "b.txt"));
    await new Deno.Command("mkfifo", { args: [join(dir, "b.txt")] }).output();
    const r = await verifyCheckpoint(dir); // a FIFO opened for reading would block here
    assert.deepEqual(
      r.checks.filter((c) => !c.ok).map((c) => `${c.kind} ${c.file}: ${c.message}`).sort(),
      [
        "hash b.txt: a FIFO, not a regular file",
        "hash config.json: a symlink, not a regular file",
      ],
    );
    assert.equal(r.filesHashed, 0);
    assert.equal(r.filesLoaded, 0);
  });
});

Deno.test("`verifyCheckpoint()` loads torch files by extension (.pt, .bin, .pth) and a .bin shard index with its shards", async () => {
  await withTempDir(async (dir) => {
    const sd = new StateDict([
      ["a", tensorFromBytes("F32", [4], new Uint8Array(16))],
      ["b", tensorFromBytes("F32", [4], new Uint8Array(16))],
    ]);
    await writeTorchSharded(dir, sd, { maxShardSize: 16 });
    for (const name of ["optimizer.pt", "extra.pth"]) {
      await saveTorch(join(dir, name), [1, 2]);
    }
    await sealed(dir);
    const loads = async (): Promise<Record<string, string>> => {
      const checks = (await verifyCheckpoint(dir)).checks.filter((c) => c.kind === "load");
      return Object.fromEntries(checks.map((c) => [c.file ?? "", `${c.ok} ${c.message}`]));
    };
    assert.deepEqual(await loads(), {
      "pytorch_model.bin.index.json": "true shard index consistent with its shards, 2 tensors",
      "pytorch_model-00001-of-00002.bin": "true torch pickle loads (restricted unpickler)",
      "pytorch_model-00002-of-00002.bin": "true torch pickle loads (restricted unpickler)",
      "optimizer.pt": "true torch pickle loads (restricted unpickler)",
      "extra.pth": "true torch pickle loads (restricted unpickler)",
    });
    // Bytes that are no torch file fail to load under each extension, though their hashes match.
    for (const name of ["optimizer.pt", "pytorch_model-00002-of-00002.bin", "extra.pth"]) {
      await Deno.writeTextFile(join(dir, name), "not a torch file");
    }
    await sealed(dir);
    const after = await loads();
    assert.deepEqual(
      Object.entries(after).filter(([, v]) => v.startsWith("false")).map(([k]) => k).sort(),
      [
        "extra.pth",
        "optimizer.pt",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
      ],
    );
  });
});

Deno.test("`verifyCheckpoint()` fails the merge check for an adapter without factors, with one factor missing, or a target the base lacks", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    await writeReferenceMerge(run.base, run.adapter, run.alpha / run.shape.rank, join(dir, "good"));
    const full = await openSafetensors(join(run.adapter, "adapter_model.safetensors"));
    const names = [...full.keys()];
    /** The run's adapter with only the tensors `keep` names (and `extra` added). */
    const variant = async (label: string, keep: (n: string) => boolean, extra?: StateDict) => {
      const ad = join(dir, label);
      await Deno.mkdir(ad);
      await Deno.copyFile(
        join(run.adapter, "adapter_config.json"),
        join(ad, "adapter_config.json"),
      );
      const sd = new StateDict();
      for (const n of names.filter(keep)) {
        const t = full.require(n);
        sd.set(n, tensorFromBytes(t.dtype, t.shape, (await t.read()).slice()));
      }
      for (const [n, t] of extra ?? []) sd.set(n, t);
      await writeSafetensors(join(ad, "adapter_model.safetensors"), sd);
      return ad;
    };
    const merges = async (adapter: string) =>
      (await verifyCheckpoint(join(dir, "good"), { base: run.base, adapter, samples: 2 })).checks
        .filter((c) => c.kind === "merge" && !c.ok).map((c) => `${c.tensor ?? "-"}: ${c.message}`);
    const q = "model.layers.0.self_attn.q_proj";
    const ghost = "model.layers.0.self_attn.ghost_proj";
    try {
      // Only non-LoRA tensors (here none at all): nothing to check is a failure, not a pass.
      assert.deepEqual(await merges(await variant("none", () => false)), [
        "-: the adapter has no LoRA factors",
      ]);
      // One module keeps lora_A only.
      assert.deepEqual(
        await merges(await variant("half", (n) => !n.startsWith(`base_model.model.${q}.lora_B`))),
        [`${q}.weight: lora_A or lora_B missing`],
      );
      // A module the base does not have.
      const a = full.require(`base_model.model.${q}.lora_A.weight`);
      const b = full.require(`base_model.model.${q}.lora_B.weight`);
      const extra = new StateDict([
        [
          `base_model.model.${ghost}.lora_A.weight`,
          tensorFromBytes(a.dtype, a.shape, await a.read()),
        ],
        [
          `base_model.model.${ghost}.lora_B.weight`,
          tensorFromBytes(b.dtype, b.shape, await b.read()),
        ],
      ]);
      assert.deepEqual(await merges(await variant("ghost", () => true, extra)), [
        `${ghost}.weight: base has no tensor ${ghost}.weight`,
      ]);
      // A full replacement (modules_to_save) beside the factors is no LoRA module to check.
      const lm = new StateDict([[
        "base_model.model.lm_head.modules_to_save.default.weight",
        tensorFromBytes("F32", [2, 2], new Uint8Array(16)),
      ]]);
      assert.deepEqual(await merges(await variant("saved", () => true, lm)), []);
      // An output without a tensor the adapter targets.
      const lacking = join(dir, "lacking");
      await Deno.mkdir(lacking);
      await Deno.copyFile(join(dir, "good", "config.json"), join(lacking, "config.json"));
      const good = await openSafetensors(join(dir, "good", "model.safetensors"));
      const kept = new StateDict();
      for (const [n, t] of good) {
        if (n !== `${q}.weight`) kept.set(n, tensorFromBytes(t.dtype, t.shape, await t.read()));
      }
      await good.close();
      await writeSafetensors(join(lacking, "model.safetensors"), kept);
      await sealed(lacking);
      const r = await verifyCheckpoint(lacking, {
        base: run.base,
        adapter: run.adapter,
        samples: 2,
      });
      assert.deepEqual(
        r.checks.filter((c) => c.kind === "merge" && !c.ok).map((c) => c.message),
        [`output has no tensor ${q}.weight`],
      );
    } finally {
      await full.close();
    }
  });
});

Deno.test("`verifyCheckpoint()` stops with ABORTED on an aborted signal, hashing, merging or with nothing to hash", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    await writeReferenceMerge(run.base, run.adapter, run.alpha / run.shape.rank, join(dir, "good"));
    await Deno.mkdir(join(dir, "empty"));
    await sealed(join(dir, "empty")); // a manifest that lists no files: nothing to hash
    const ac = new AbortController();
    ac.abort(new Error("SIGTERM"));
    const cases: [string, Record<string, string>][] = [
      ["good", {}],
      ["good", { base: run.base, adapter: run.adapter }],
      ["empty", {}],
      ["empty", { base: run.base, adapter: run.adapter }],
    ];
    for (const [folder, options] of cases) {
      await assert.rejects(
        () => verifyCheckpoint(join(dir, folder), { ...options, signal: ac.signal }),
        (e: unknown) =>
          isCkptError(e, "ABORTED") && e.message.includes("Cannot finish verifying") &&
          e.message.endsWith(": aborted"),
        JSON.stringify(options),
      );
    }
  });
});

Deno.test("`verifyCheckpoint()` parses every line of a .jsonl file and fails on one that is not JSON", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "log.jsonl"), '{"step": 1}\n\n{"loss": NaN}\n');
    await sealed(dir);
    const load = async () => (await verifyCheckpoint(dir)).checks.find((c) => c.kind === "load")!;
    assert.deepEqual(
      [(await load()).ok, (await load()).message],
      [true, "2 JSON lines parse"],
    );
    await Deno.writeTextFile(join(dir, "log.jsonl"), '{"step": 1}\n{"loss": nan}\n');
    await sealed(dir);
    assert.equal((await load()).ok, false);
  });
});

Deno.test("`verifyCheckpoint()` reports a missing file once: the folder it leaves empty is not an extra entry", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "sub"));
    await Deno.writeTextFile(join(dir, "sub", "x.txt"), "x");
    await Deno.writeTextFile(join(dir, "a.txt"), "a");
    await sealed(dir);
    await Deno.remove(join(dir, "sub", "x.txt"));
    const r = await verifyCheckpoint(dir);
    assert.deepEqual(
      r.checks.filter((c) => !c.ok).map((c) => `${c.kind} ${c.file}: ${c.message}`),
      ["hash sub/x.txt: missing"],
    );
  });
});

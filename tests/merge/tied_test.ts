/**
 * Tied embeddings under an adapter (`merge/_lora_tied.ts`): the merge exports what the trained,
 * unmerged PeftModel computes. A LoRA or `modules_to_save` copy on one side of a tied pair unties
 * it (the other side keeps the original weight), `ensure_weight_tying` and trainable tokens keep it
 * tied, and `tiedEmbeddings: "refuse"` fails instead of untying.
 */
import assert from "node:assert/strict";
import { isCkptError } from "../../errors.ts";
import { StateDict, type TensorRef } from "../../formats/state_dict.ts";
import { TorchTensor, torchTensor } from "../../formats/torch/tensor.ts";
import { mergeLora } from "../../merge/lora.ts";
import type { MergeLoraOptions } from "../../merge/lora_types.ts";
import { referenceBackend } from "./_lora_fixtures.ts";
import { adapter, P, seq, t, values } from "./_lora_helpers.ts";

const V = 5, D = 3, R = 2;
const EMB = "model.embed_tokens.weight";
const E = seq(V * D, 1, 1);

/** A tied checkpoint as transformers saves it: the embedding once, no `lm_head.weight`. */
const tiedBase = () =>
  new StateDict([[EMB, t("F32", [V, D], E)], ["model.norm.weight", t("F32", [D], [1, 1, 1])]]);

/** PEFT's saved LoRA on the embedding (with its `base_layer.weight`, as PEFT saves it). */
const embLora = () =>
  [
    [`${P}model.embed_tokens.base_layer.weight`, t("F32", [V, D], E)],
    [`${P}model.embed_tokens.lora_embedding_A`, t("F32", [R, V], seq(R * V, 2, 1))],
    [`${P}model.embed_tokens.lora_embedding_B`, t("F32", [D, R], seq(D * R, 3, 1))],
  ] as [string, TensorRef][];

/** PEFT's saved LoRA on a tied lm_head (its `base_layer.weight` is the shared weight). */
const headLora = () =>
  [
    [`${P}lm_head.base_layer.weight`, t("F32", [V, D], E)],
    [`${P}lm_head.lora_A.weight`, t("F32", [R, D], seq(R * D, 4, 1))],
    [`${P}lm_head.lora_B.weight`, t("F32", [V, R], seq(V * R, 5, 1))],
  ] as [string, TensorRef][];

const cfg = { r: R, lora_alpha: R };
const opts: MergeLoraOptions = { backend: referenceBackend(), tieWordEmbeddings: true };

/** `E + (B@A)ᵀ` (embedding factors) or `E + B@A` (linear factors), s = 1. */
function merged(a: number[], b: number[], embedding: boolean): number[] {
  const out = [...Float32Array.from(E)];
  for (let v = 0; v < V; v++) {
    for (let d = 0; d < D; d++) {
      let acc = 0;
      for (let k = 0; k < R; k++) {
        acc += embedding ? b[d * R + k]! * a[k * V + v]! : b[v * R + k]! * a[k * D + d]!;
      }
      out[v * D + d] = Math.fround(out[v * D + d]! + acc);
    }
  }
  return out;
}

const f32 = (v: number[]) => [...Float32Array.from(v)];

Deno.test("a LoRA on a tied embedding unties it: embed_tokens merged, lm_head the original", async () => {
  const { stateDict, report } = await mergeLora(tiedBase(), [adapter(embLora(), cfg)], opts);
  try {
    assert.deepEqual([...stateDict.keys()], [EMB, "model.norm.weight", "lm_head.weight"]);
    const want = merged(f32(seq(R * V, 2, 1)), f32(seq(D * R, 3, 1)), true);
    const got = await values(stateDict.require(EMB));
    got.forEach((x, i) => assert.ok(Math.abs(x - want[i]!) < 1e-6, `${i}: ${x} vs ${want[i]}`));
    assert.deepEqual(await values(stateDict.require("lm_head.weight")), f32(E));
    assert.equal(report.tiedEmbeddings?.inputChange, "lora");
    assert.equal(report.tiedEmbeddings?.outputChange, "none");
    assert.match(report.tiedEmbeddings!.message, /tie_word_embeddings false/);
  } finally {
    await stateDict.close();
  }
});

Deno.test("a LoRA on a tied lm_head unties it the other way: lm_head merged, embed_tokens the original", async () => {
  const { stateDict, report } = await mergeLora(tiedBase(), [adapter(headLora(), cfg)], opts);
  try {
    assert.deepEqual([...stateDict.keys()], [EMB, "model.norm.weight", "lm_head.weight"]);
    assert.deepEqual(await values(stateDict.require(EMB)), f32(E));
    const want = merged(f32(seq(R * D, 4, 1)), f32(seq(V * R, 5, 1)), false);
    const got = await values(stateDict.require("lm_head.weight"));
    got.forEach((x, i) => assert.ok(Math.abs(x - want[i]!) < 1e-6, `${i}: ${x} vs ${want[i]}`));
    assert.deepEqual(
      [report.tiedEmbeddings?.inputChange, report.tiedEmbeddings?.outputChange],
      ["none", "lora"],
    );
    assert.equal(report.modules[0]?.tensor, "lm_head.weight");
  } finally {
    await stateDict.close();
  }
  // without the tie, an lm_head LoRA has no weight to go to
  await assert.rejects(
    mergeLora(tiedBase(), [adapter(headLora(), cfg)], { backend: referenceBackend() }),
    (e) => isCkptError(e, "LORA_UNMATCHED"),
  );
});

Deno.test('`tiedEmbeddings: "refuse"` fails with LORA_TIED_EMBEDDINGS instead of untying', async () => {
  for (const lora of [embLora, headLora]) {
    await assert.rejects(
      mergeLora(tiedBase(), [adapter(lora(), cfg)], { ...opts, tiedEmbeddings: "refuse" }),
      (e) => isCkptError(e, "LORA_TIED_EMBEDDINGS") && /Cannot merge into the tied/.test(e.message),
    );
  }
});

Deno.test("a modules_to_save copy of one tied side unties the pair; copies of both keep it", async () => {
  const copy = seq(V * D, 9, 1);
  const embCopy = adapter([[`${P}model.embed_tokens.weight`, t("F32", [V, D], copy)]], {
    ...cfg,
    modules_to_save: ["embed_tokens"],
  });
  const a = await mergeLora(tiedBase(), [embCopy], opts);
  assert.deepEqual(await values(a.stateDict.require(EMB)), f32(copy));
  assert.deepEqual(await values(a.stateDict.require("lm_head.weight")), f32(E));
  assert.equal(a.report.tiedEmbeddings?.inputChange, "copy");
  await a.stateDict.close();
  const headCopy = adapter([[`${P}lm_head.weight`, t("F32", [V, D], copy)]], {
    ...cfg,
    modules_to_save: ["lm_head"],
  });
  const b = await mergeLora(tiedBase(), [headCopy], opts);
  assert.deepEqual(await values(b.stateDict.require(EMB)), f32(E));
  assert.deepEqual(await values(b.stateDict.require("lm_head.weight")), f32(copy));
  assert.equal(b.report.tiedEmbeddings?.outputChange, "copy");
  await b.stateDict.close();
  // ensure_weight_tying saves one tied copy under both names: still one tensor, still tied
  const both = adapter([
    [`${P}model.embed_tokens.weight`, t("F32", [V, D], copy)],
    [`${P}lm_head.weight`, t("F32", [V, D], copy)],
  ], { ...cfg, modules_to_save: ["embed_tokens", "lm_head"], ensure_weight_tying: true });
  const c = await mergeLora(tiedBase(), [both], opts);
  assert.equal(c.report.tiedEmbeddings, undefined);
  assert.deepEqual(
    await values(c.stateDict.require("lm_head.weight")),
    await values(c.stateDict.require(EMB)),
  );
  await c.stateDict.close();
});

Deno.test("ensure_weight_tying's tied LoRA pair stays tied: both sides merge to the same bits", async () => {
  // PEFT ties lm_head's factors to the embedding's: lora_A = emb_Bᵀ, lora_B = emb_Aᵀ
  const ea = f32(seq(R * V, 2, 1)), eb = f32(seq(D * R, 3, 1));
  const tr = (m: number[], rows: number, cols: number) =>
    Array.from({ length: rows * cols }, (_, i) => m[(i % rows) * cols + Math.floor(i / rows)]!);
  const ad = adapter([
    ...embLora(),
    [`${P}lm_head.base_layer.weight`, t("F32", [V, D], E)],
    [`${P}lm_head.lora_A.weight`, t("F32", [R, D], tr(eb, D, R))],
    [`${P}lm_head.lora_B.weight`, t("F32", [V, R], tr(ea, R, V))],
  ], { ...cfg, ensure_weight_tying: true });
  const { stateDict, report } = await mergeLora(tiedBase(), [ad], {
    ...opts,
    tiedEmbeddings: "refuse",
  });
  try {
    assert.equal(report.tiedEmbeddings, undefined);
    assert.deepEqual(
      await stateDict.require("lm_head.weight").read(),
      await stateDict.require(EMB).read(),
    );
  } finally {
    await stateDict.close();
  }
  // without ensure_weight_tying, two LoRAs on one tied weight are two different trained sides
  const free = adapter([...embLora(), ...headLora()], cfg);
  const r2 = await mergeLora(tiedBase(), [free], opts);
  assert.deepEqual(
    [r2.report.tiedEmbeddings?.inputChange, r2.report.tiedEmbeddings?.outputChange],
    ["lora", "lora"],
  );
  await r2.stateDict.close();
});

Deno.test("trainable tokens on a tied embedding stay tied, and follow it to an untied lm_head", async () => {
  const tok = (extra: [string, TensorRef][] = []) =>
    adapter([
      [`${P}model.embed_tokens.token_adapter.trainable_tokens_delta`, t("F32", [1, D], [7, 8, 9])],
      ...extra,
    ], { ...cfg, trainable_token_indices: [2] });
  const only = await mergeLora(tiedBase(), [tok()], opts);
  assert.deepEqual([...only.stateDict.keys()], [EMB, "model.norm.weight"]);
  assert.equal(only.report.tiedEmbeddings, undefined);
  assert.deepEqual((await values(only.stateDict.require(EMB))).slice(6, 9), [7, 8, 9]);
  await only.stateDict.close();
  // tokens and a LoRA on lm_head: the embedding keeps its token rows, lm_head gets them too
  const mixed = await mergeLora(tiedBase(), [tok(headLora())], opts);
  assert.deepEqual((await values(mixed.stateDict.require(EMB))).slice(6, 9), [7, 8, 9]);
  assert.deepEqual((await values(mixed.stateDict.require("lm_head.weight"))).slice(6, 9), [
    7,
    8,
    9,
  ]);
  assert.deepEqual(
    mixed.report.trainableTokens.map((x) => x.tensor),
    [EMB, "lm_head.weight"],
  );
  await mixed.stateDict.close();
});

Deno.test("an lm_head that is the same torch tensor as the embedding counts as tied", async () => {
  const shared = torchTensor(t("F32", [V, D], E));
  const view = new TorchTensor(shared.storage, [V, D]);
  const base = new StateDict([[EMB, shared], ["lm_head.weight", view]]);
  const { stateDict, report } = await mergeLora(base, [adapter(embLora(), cfg)], {
    backend: referenceBackend(),
  });
  assert.equal(report.tiedEmbeddings?.inputChange, "lora");
  assert.deepEqual(await values(stateDict.require("lm_head.weight")), f32(E));
  await stateDict.close();
  // two separate tensors without tie_word_embeddings: nothing is tied
  const untied = new StateDict([[EMB, t("F32", [V, D], E)], [
    "lm_head.weight",
    t("F32", [V, D], E),
  ]]);
  const u = await mergeLora(untied, [adapter(embLora(), cfg)], { backend: referenceBackend() });
  assert.equal(u.report.tiedEmbeddings, undefined);
  await u.stateDict.close();
});

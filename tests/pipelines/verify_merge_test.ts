/**
 * `verifyCheckpoint()`'s merge check on hand-built one-module models, at its exact edges: the
 * tolerance of each stored dtype one step inside and one step outside, the layouts it skips (each
 * of the five shape conditions alone), and an abort at any point of the check.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type DType, encodeF32 } from "../../formats/dtype.ts";
import { writeSafetensors } from "../../formats/safetensors.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { isCkptError } from "../../errors.ts";
import { buildManifest, writeManifest } from "../../pipelines/manifest.ts";
import { type VerifyCheck, verifyCheckpoint } from "../../pipelines/verify.ts";
import { withTempDir } from "../_helpers/tmp.ts";

interface Tensor {
  dtype?: DType;
  shape: number[];
  values: number[];
}

function tensor(t: Tensor) {
  return tensorFromBytes(
    t.dtype ?? "F32",
    t.shape,
    encodeF32(t.dtype ?? "F32", new Float32Array(t.values)),
  );
}

interface Model {
  w: Tensor;
  a: Tensor;
  b: Tensor;
  out: Tensor;
}

/**
 * Writes a base (`base.safetensors` holding `<module>.weight` = `w` of each module), an adapter for
 * the modules (r = 1, alpha = 1: scale 1) and an output folder holding `<module>.weight` = `out`,
 * sealed; resolves to the merge checks of `verifyCheckpoint()` on it.
 */
async function mergeChecksOf(
  dir: string,
  modules: [string, Model][],
  signal?: AbortSignal,
  options: { baseNames?: Record<string, string>; targets?: string[] } = {},
): Promise<VerifyCheck[]> {
  const baseName = (m: string) => options.baseNames?.[m] ?? `${m}.weight`;
  const base = new StateDict(modules.map(([m, t]) => [baseName(m), tensor(t.w)]));
  await writeSafetensors(join(dir, "base.safetensors"), base);
  const adapter = join(dir, "adapter");
  await Deno.mkdir(adapter);
  const targets = options.targets ?? [...new Set(modules.map(([m]) => m.split(".").pop()!))];
  await Deno.writeTextFile(
    join(adapter, "adapter_config.json"),
    JSON.stringify({ peft_type: "LORA", r: 1, lora_alpha: 1, target_modules: targets }),
  );
  await writeSafetensors(
    join(adapter, "adapter_model.safetensors"),
    new StateDict(modules.flatMap(([m, t]) => [
      [`base_model.model.${m}.lora_A.weight`, tensor(t.a)],
      [`base_model.model.${m}.lora_B.weight`, tensor(t.b)],
    ])),
  );
  const out = join(dir, "out");
  await Deno.mkdir(out);
  const merged = new StateDict(modules.map(([m, t]) => [`${m}.weight`, tensor(t.out)]));
  await writeSafetensors(join(out, "model.safetensors"), merged);
  await writeManifest(out, await buildManifest(out, { output: out }));
  try {
    const r = await verifyCheckpoint(out, {
      base: join(dir, "base.safetensors"),
      adapter,
      ...(signal ? { signal } : {}),
    });
    return r.checks.filter((c) => c.kind === "merge");
  } finally {
    await Deno.remove(adapter, { recursive: true });
    await Deno.remove(out, { recursive: true });
  }
}

/** {@linkcode mergeChecksOf} for one module, `proj`. */
function mergeChecks(dir: string, model: Model, signal?: AbortSignal): Promise<VerifyCheck[]> {
  return mergeChecksOf(dir, [["proj", model]], signal);
}

const zero = { shape: [1, 1], values: [0] };

Deno.test("`verifyCheckpoint()` accepts a stored value one step inside its dtype's tolerance and refuses one step outside", async (t) => {
  // W = 1 + e, B·A = 0, the output stores exactly 1: the error is e. The tolerance is the dtype's
  // relative step (2^-11 for F16, 2^-8 for BF16, 2^-20 otherwise) of the expected value plus
  // 2^-20 of |W|, so e = rel + 2^-20 is inside and the next value chosen is just outside.
  const cases: [DType, number, number][] = [
    ["F16", 2 ** -11 + 2 ** -20, 2 ** -11 + 2 ** -19],
    ["BF16", 2 ** -8 + 2 ** -20, 2 ** -8 + 2 ** -15],
    ["F32", 2 ** -19, 2 ** -19 + 2 ** -23],
  ];
  await withTempDir(async (dir) => {
    for (const [dtype, inside, outside] of cases) {
      await t.step(`${dtype}: an error of 1 + ${inside} passes, 1 + ${outside} fails`, async () => {
        const check = async (e: number) => {
          const [c] = await mergeChecks(dir, {
            w: { shape: [1, 1], values: [1 + e] },
            a: zero,
            b: zero,
            out: { dtype, shape: [1, 1], values: [1] },
          });
          // the worst error as a share of its tolerance, as the message gives it
          const worst = Number(/\(worst (?:error )?([0-9.e+-]+)/.exec(c!.message)?.[1]);
          return [c!.ok, c!.message.split(" (")[0], worst];
        };
        const [okIn, textIn, worstIn] = await check(inside);
        assert.deepEqual([okIn, textIn], [true, "sampled rows match W + 1·B·A"]);
        assert.ok(Number(worstIn) > 0.99 && Number(worstIn) <= 1, `inside: ${worstIn}`);
        const [okOut, textOut, worstOut] = await check(outside);
        assert.deepEqual([okOut, textOut], [false, "1 sampled elements differ from W + 1·B·A"]);
        assert.ok(Number(worstOut) >= 1 && Number(worstOut) < 1.1, `outside: ${worstOut}`);
      });
    }
  });
});

Deno.test("`verifyCheckpoint()` skips, as passed, a module whose shapes are not a plain Linear's, for each shape alone", async (t) => {
  // The output stores the base weight unmerged while B·A is not zero: recomputing would fail.
  const w = { shape: [2, 2], values: [1, 2, 3, 4] };
  const a = { shape: [1, 2], values: [1, 1] };
  const b = { shape: [2, 1], values: [1, 1] };
  const cases: [string, Model, string][] = [
    [
      "W is not 2-D",
      {
        w: { shape: [2, 2, 1], values: w.values },
        a,
        b,
        out: { shape: [2, 2, 1], values: w.values },
      },
      "W[2,2,1] A[1,2] B[2,1]",
    ],
    [
      "A's inputs are not W's",
      { w, a: { shape: [1, 3], values: [1, 1, 1] }, b, out: w },
      "W[2,2] A[1,3] B[2,1]",
    ],
    [
      "B's outputs are not W's",
      { w, a, b: { shape: [3, 1], values: [1, 1, 1] }, out: w },
      "W[2,2] A[1,2] B[3,1]",
    ],
    [
      "B's rank is not A's",
      { w, a, b: { shape: [2, 2], values: [1, 1, 1, 1] }, out: w },
      "W[2,2] A[1,2] B[2,2]",
    ],
    [
      "the output's shape is not W's",
      { w, a, b, out: { shape: [2, 3], values: [1, 2, 0, 3, 4, 0] } },
      "W[2,2] A[1,2] B[2,1]",
    ],
  ];
  await withTempDir(async (dir) => {
    for (const [what, model, layout] of cases) {
      await t.step(what, async () => {
        assert.deepEqual(
          (await mergeChecks(dir, model)).map((c) => [c.tensor, c.ok, c.message]),
          [["proj.weight", true, `skipped: layout ${layout} is not a plain Linear`]],
        );
      });
    }
    await t.step(
      "the same model in a plain layout is recomputed, and its unmerged output fails",
      async () => {
        assert.deepEqual(
          (await mergeChecks(dir, { w, a, b, out: w })).map((
            c,
          ) => [c.ok, c.message.split(" (")[0]]),
          [[false, "4 sampled elements differ from W + 1·B·A"]],
        );
      },
    );
  });
});

/** A signal that aborts itself on the `n`-th time a check point asks it (`throwIfAborted`). */
function abortingAt(n: number): { signal: AbortSignal; asked: () => number } {
  const ac = new AbortController();
  const ask = ac.signal.throwIfAborted.bind(ac.signal);
  let calls = 0;
  ac.signal.throwIfAborted = () => {
    if (++calls === n) ac.abort(new Error("SIGTERM"));
    ask();
  };
  return { signal: ac.signal, asked: () => calls };
}

Deno.test("`verifyCheckpoint()` rejects with ABORTED when the signal aborts at any of its check points, the merge check's included", async () => {
  await withTempDir(async (dir) => {
    const model = {
      w: { shape: [1, 2], values: [1, 2] },
      a: { shape: [1, 2], values: [1, 1] },
      b: { shape: [1, 1], values: [1] },
      out: { shape: [1, 2], values: [2, 3] },
    };
    const never = abortingAt(0);
    assert.deepEqual((await mergeChecks(dir, model, never.signal)).map((c) => c.ok), [true]);
    // at least the start, the one file hashed, the one file loaded and the one module merged
    assert.ok(never.asked() >= 4, `${never.asked()} check points`);
    for (let n = 1; n <= never.asked(); n++) {
      await assert.rejects(
        () => mergeChecks(dir, model, abortingAt(n).signal),
        (e: unknown) => isCkptError(e, "ABORTED"),
        `aborted at check point ${n}`,
      );
    }
  });
});

Deno.test("`verifyCheckpoint()` checks a merged value that cancels to zero against the products' size, not against zero", async () => {
  // W = 0 and B·A = 1·1 + 1·(-1) = 0 over rank 2: the expected value is 0, and the tolerance is
  // 2^-20 of the products' magnitudes (2): an error of 2^-19 passes, one of 2^-18 fails
  const model = (stored: number): Model => ({
    w: { shape: [1, 1], values: [0] },
    a: { shape: [2, 1], values: [1, -1] },
    b: { shape: [1, 2], values: [1, 1] },
    out: { shape: [1, 1], values: [stored] },
  });
  await withTempDir(async (dir) => {
    const ok = async (stored: number) =>
      (await mergeChecksOf(dir, [["proj", model(stored)]]))[0]?.ok;
    assert.deepEqual([await ok(0), await ok(2 ** -19), await ok(2 ** -18)], [true, true, false]);
  });
});

Deno.test("`verifyCheckpoint()` checks modules in the order of their names, whatever the adapter's order", async () => {
  // the adapter's keys sort a.b, a.c, a ("a.b.lora_A" < "a.lora_A"); the checks come a, a.b, a.c
  const plain: Model = {
    w: { shape: [1, 1], values: [1] },
    a: zero,
    b: zero,
    out: { shape: [1, 1], values: [1] },
  };
  await withTempDir(async (dir) => {
    const checks = await mergeChecksOf(dir, [["a.b", plain], ["a.c", plain], ["a", plain]]);
    assert.deepEqual(checks.map((c) => [c.tensor, c.ok]), [
      ["a.weight", true],
      ["a.b.weight", true],
      ["a.c.weight", true],
    ]);
  });
});

Deno.test("`verifyCheckpoint()` takes a tied base's input embedding as lm_head's original", async () => {
  // the base stores lm_head once, as model.embed_tokens.weight; the output holds the merged head
  const head: Model = {
    w: { shape: [1, 2], values: [1, 2] },
    a: { shape: [1, 2], values: [1, 1] },
    b: { shape: [1, 1], values: [1] },
    out: { shape: [1, 2], values: [2, 3] },
  };
  await withTempDir(async (dir) => {
    const checks = await mergeChecksOf(dir, [["lm_head", head]], undefined, {
      baseNames: { lm_head: "model.embed_tokens.weight" },
    });
    assert.deepEqual(checks.map((c) => [c.tensor, c.ok, c.message.split(" (")[0]]), [
      ["lm_head.weight", true, "sampled rows match W + 1·B·A"],
    ]);
  });
});

Deno.test("`verifyCheckpoint()` expects the base weight where the adapter's config does not target a module", async () => {
  // factors for proj, but target_modules names another module: PEFT leaves proj as it is
  const model = (stored: number[]): Model => ({
    w: { shape: [1, 2], values: [1, 2] },
    a: { shape: [1, 2], values: [1, 1] },
    b: { shape: [1, 1], values: [1] },
    out: { shape: [1, 2], values: stored },
  });
  await withTempDir(async (dir) => {
    const check = async (stored: number[]) =>
      (await mergeChecksOf(dir, [["proj", model(stored)]], undefined, { targets: ["other"] }))
        .map((c) => [c.ok, c.message.split(" (")[0]]);
    assert.deepEqual(await check([1, 2]), [[true, "sampled rows equal the base"]]);
    assert.deepEqual(await check([2, 3]), [[false, "2 sampled elements differ from W + 0·B·A"]]);
  });
});

Deno.test("`verifyCheckpoint()` lets an error that is not an abort surface as itself, never as ABORTED", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "a.txt"), "a");
    await writeManifest(dir, await buildManifest(dir, { output: dir }));
    // a caller's signal that breaks when asked (a programming error, not an abort)
    const broken = {
      aborted: false,
      throwIfAborted() {
        throw new TypeError("broken signal");
      },
    } as unknown as AbortSignal;
    await assert.rejects(
      () => verifyCheckpoint(dir, { signal: broken }),
      (e: unknown) => e instanceof TypeError && e.message === "broken signal",
    );
  });
});

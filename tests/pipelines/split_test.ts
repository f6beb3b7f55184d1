import assert from "node:assert/strict";
import { CkptError } from "../../errors.ts";
import { builtinStages, validateConfig } from "../../pipelines/config.ts";
import {
  assignParts,
  checkSplittable,
  leadPart,
  MAX_PARTS,
  parsePartCount,
  parsePartSpec,
  partFromEnv,
  partName,
  splitId,
} from "../../pipelines/split.ts";
import { defineStage } from "../../pipelines/stage.ts";
import { z } from "zod";

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof CkptError) return e.code;
    throw e;
  }
  return "none";
}

Deno.test("`parsePartSpec()` reads I/N with I from 0 to N-1 and refuses anything else", () => {
  assert.deepEqual(parsePartSpec("0/1"), { index: 0, count: 1, source: "cli" });
  assert.deepEqual(parsePartSpec(" 7 / 8 "), { index: 7, count: 8, source: "cli" });
  for (const bad of ["8/8", "1/0", "-1/4", "a/4", "3", "2/8/9", "1.5/4", "0/99999"]) {
    assert.equal(code(() => parsePartSpec(bad)), "PART_SPEC", bad);
  }
});

Deno.test("`parsePartCount()` takes 1 to MAX_PARTS parts, not 0 and not one more", () => {
  assert.equal(parsePartCount("1", "--parts-count"), 1);
  assert.equal(parsePartCount(String(MAX_PARTS), "--parts-count"), MAX_PARTS);
  // digits only: no exponent, hex or sign, which Number() would read
  for (const bad of ["0", String(MAX_PARTS + 1), "", "-1", "1e1", "0x8", "+2", "1.0"]) {
    assert.equal(code(() => parsePartCount(bad, "--parts-count")), "PART_SPEC", bad);
  }
});

Deno.test("`parsePartSpec()` names the parts that exist when I is out of range", () => {
  assert.throws(
    () => parsePartSpec("8/8"),
    (e: unknown) =>
      e instanceof CkptError &&
      e.message === 'Cannot use --part "8/8": part 8 does not exist, the parts are 0 to 7',
  );
});

Deno.test("`partFromEnv()` takes a Slurm array's task id and count, counted from the array's first id", () => {
  const slurm = { SLURM_ARRAY_TASK_ID: "5", SLURM_ARRAY_TASK_COUNT: "8" };
  assert.deepEqual(partFromEnv(slurm), { index: 5, count: 8, source: "slurm" });
  const fromOne = { ...slurm, SLURM_ARRAY_TASK_MIN: "1", SLURM_ARRAY_TASK_MAX: "8" };
  assert.deepEqual(partFromEnv(fromOne), { index: 4, count: 8, source: "slurm" });
  // --array=0-14:2 has 8 tasks whose ids are not 0..7
  const stepped = { ...slurm, SLURM_ARRAY_TASK_MIN: "0", SLURM_ARRAY_TASK_MAX: "14" };
  assert.throws(
    () => partFromEnv(stepped),
    /ids 0 to 14 but has 8 tasks .*cannot number the parts 0 to 7; use --array=0-7/,
  );
  assert.equal(
    code(() => partFromEnv({ SLURM_ARRAY_TASK_ID: "9", SLURM_ARRAY_TASK_COUNT: "8" })),
    "PART_SPEC",
  );
  assert.throws(() => partFromEnv({ SLURM_ARRAY_TASK_ID: "1" }), /SLURM_ARRAY_TASK_COUNT/);
});

Deno.test("`partFromEnv()` takes a Slurm array's first and last ids as parts 0 and N-1, and refuses one id past either end", () => {
  const env = (id: number) => ({
    SLURM_ARRAY_TASK_ID: String(id),
    SLURM_ARRAY_TASK_COUNT: "4",
    SLURM_ARRAY_TASK_MIN: "10",
    SLURM_ARRAY_TASK_MAX: "13",
  });
  assert.deepEqual(partFromEnv(env(10)), { index: 0, count: 4, source: "slurm" });
  assert.deepEqual(partFromEnv(env(13)), { index: 3, count: 4, source: "slurm" });
  assert.throws(
    () => partFromEnv(env(9)),
    /SLURM_ARRAY_TASK_ID 9 is not one of the 4 parts \(ids 10 to 13\)/,
  );
  assert.throws(() => partFromEnv(env(14)), /SLURM_ARRAY_TASK_ID 14 is not one of the 4 parts/);
});

Deno.test("`partFromEnv()` takes a Kubernetes completion index with the count from --parts-count or CKPT_PARTS", () => {
  assert.deepEqual(partFromEnv({ JOB_COMPLETION_INDEX: "2" }, 4), {
    index: 2,
    count: 4,
    source: "kubernetes",
  });
  assert.deepEqual(partFromEnv({ JOB_COMPLETION_INDEX: "0", CKPT_PARTS: "3" }), {
    index: 0,
    count: 3,
    source: "kubernetes",
  });
  assert.throws(
    () => partFromEnv({ JOB_COMPLETION_INDEX: "0" }),
    /--parts-count N or set CKPT_PARTS/,
  );
  assert.equal(
    code(() => partFromEnv({ JOB_COMPLETION_INDEX: "3", CKPT_PARTS: "3" })),
    "PART_SPEC",
  );
  assert.throws(() => partFromEnv({}), /neither SLURM_ARRAY_TASK_ID .* nor JOB_COMPLETION_INDEX/);
});

Deno.test("`partFromEnv()` names the parts that exist when a Kubernetes completion index is out of range", () => {
  assert.throws(
    () => partFromEnv({ JOB_COMPLETION_INDEX: "4", CKPT_PARTS: "4" }),
    (e: unknown) =>
      e instanceof CkptError &&
      e.message ===
        "Cannot use --part auto: JOB_COMPLETION_INDEX 4 is not one of the 4 parts (0 to 3)",
  );
});

Deno.test("`assignParts()` balances bytes: largest first to the lightest part, the same in every call", () => {
  const files = [7, 1, 9, 3, 8, 2, 6, 4, 5, 10].map((b, i) => ({ path: `f${i}`, bytes: b * 100 }));
  const owner = assignParts(files, 3);
  assert.deepEqual(assignParts(files, 3), owner);
  const loads = [0, 0, 0];
  owner.forEach((p, i) => loads[p]! += files[i]!.bytes);
  // 5500 bytes over 3 parts: greedy by size leaves them within the smallest file of each other
  assert.deepEqual(loads, [1900, 1800, 1800]);
  assert.deepEqual(owner, [2, 2, 1, 1, 2, 2, 1, 0, 0, 0]);
});

Deno.test("`assignParts()` leaves the lead part without weights when there are fewer files than parts", () => {
  const files = [{ path: "a", bytes: 5 }, { path: "b", bytes: 5 }, { path: "c", bytes: 9 }];
  assert.deepEqual(assignParts(files, 4), [1, 2, 0]);
  assert.equal(leadPart(4), 3);
  assert.deepEqual(assignParts(files, 1), [0, 0, 0]);
  assert.equal(partName(3, 8), "part-00003-of-00008");
});

Deno.test("`splitId()` is the same for the same config and count, and differs when either changes", async () => {
  const raw = (shard: string) => ({
    output: "/x/out",
    stages: [
      { use: "gatherShards", from: "/x/in" },
      { use: "writeModel", maxShardSize: shard },
    ],
  });
  const stages = await builtinStages();
  const a = await validateConfig(raw("5GB"), { stages });
  const b = await validateConfig(raw("5GB"), { stages });
  const c = await validateConfig(raw("2GB"), { stages });
  assert.match(splitId(a, 8), /^[0-9a-f]{16}$/);
  assert.equal(splitId(a, 8), splitId(b, 8));
  assert.notEqual(splitId(a, 8), splitId(a, 4));
  assert.notEqual(splitId(a, 8), splitId(c, 8));
});

Deno.test("`checkSplittable()` names a stage that does not say how it runs in parts", async () => {
  const mine = defineStage({
    name: "mine",
    summary: "a custom stage",
    options: z.strictObject({}),
    async run() {},
  });
  const cfg = await validateConfig({ output: "/x/out", stages: [{ use: "mine" }] }, {
    stages: { mine },
  });
  assert.throws(() => checkSplittable(cfg), /stage mine \(stages\[0\]\) does not say/);
  assert.equal(code(() => checkSplittable(cfg)), "SPLIT_STAGE");
});

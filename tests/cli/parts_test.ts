/**
 * The proof of split exports: `ckpt run --part I/N` for N = 1, 3 and 8, every part its own process,
 * started in shuffled order and running side by side, then `ckpt run --finish N`, on a sharded
 * model with a LoRA adapter (safetensors out, with tokenizer, optimizer, metrics and value head)
 * and on a real-torch FSDP/DCP LoRA checkpoint (`.bin` shards and optimizer out). The finished
 * folder must equal the one-machine folder byte for byte (the manifest aside from its times and
 * its `split` record), `ckpt verify` must pass, and nothing may be left beside it. For N = 3 one
 * part is SIGKILLed in the middle of its first weight file: the finish names it, its rerun
 * completes the export, a part with a receipt and a part or finish after the end do nothing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { withTempDir } from "../_helpers/tmp.ts";
import {
  ckptEnv,
  comparableManifest,
  dcpRun,
  namesIn,
  type Ran,
  shardedLoraRun,
  shuffled,
  treeDigest,
} from "../_helpers/split_run.ts";

/** Runs parts `indexes` of `count` at once, started in that order; every one must succeed. */
async function runParts(cfg: string, indexes: number[], count: number): Promise<Ran[]> {
  const runs = indexes.map((i) =>
    ckptEnv(["run", cfg, "--part", `${i}/${count}`, "--log", "plain"])
  );
  const done = await Promise.all(runs);
  done.forEach((r, k) => assert.equal(r.code, 0, `part ${indexes[k]}/${count}: ${r.stderr}`));
  return done;
}

/** The one-machine folder of `cfg` (written at `out`, then moved to `aside`) and its manifest. */
async function oneMachine(cfg: string, out: string, aside: string) {
  const r = await ckptEnv(["run", cfg, "--log", "quiet"]);
  assert.equal(r.code, 0, r.stderr);
  const manifest = await comparableManifest(out);
  await Deno.rename(out, aside);
  const tree = await treeDigest(aside);
  delete tree["ckpt-manifest.json"];
  return { tree, manifest, printed: afterSha(r.stdout) };
}

/** What `ckpt run` prints after the output and manifest lines (the most changed modules). */
function afterSha(stdout: string): string {
  return stdout.split("\n").slice(2).join("\n");
}

/** The finished split folder equals the one-machine one, verifies, and left nothing beside it. */
async function assertSameAsOneMachine(
  out: string,
  want: { tree: Record<string, string>; manifest: string },
  count: number,
) {
  const tree = await treeDigest(out);
  delete tree["ckpt-manifest.json"];
  assert.deepEqual(tree, want.tree, `${count} parts: files differ from the one-machine run`);
  assert.equal(await comparableManifest(out), want.manifest, `${count} parts: manifest differs`);
  const split = JSON.parse(await Deno.readTextFile(join(out, "ckpt-manifest.json"))).split;
  assert.equal(split.count, count);
  assert.deepEqual(split.parts.map((p: { part: number }) => p.part), [...Array(count).keys()]);
  const verify = await ckptEnv(["verify", out]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  const beside = (await namesIn(join(out, ".."))).filter((n) => n.startsWith(".ckpt-"));
  assert.deepEqual(beside, [], `${count} parts left ${beside.join(", ")}`);
}

/** Index of the first weight bytes written in a fault log (`<n> <op> <path>` lines). */
async function firstWrite(log: string): Promise<number> {
  const line = (await Deno.readTextFile(log)).split("\n").find((l) =>
    / write .*\.safetensors$/.test(l)
  );
  assert.ok(line, "the calibration run wrote no weights");
  return Number(line.split(" ")[0]);
}

Deno.test("`ckpt run --part I/N` then `--finish N` equals the one-machine export of a sharded LoRA model for 1, 3 and 8 parts", async () => {
  await withTempDir(async (dir) => {
    const cfg = await shardedLoraRun(dir);
    const out = join(dir, "run", "OUT");
    const want = await oneMachine(cfg, out, join(dir, "run", "ONE"));
    assert.ok(Object.keys(want.tree).filter((p) => p.endsWith(".safetensors")).length >= 8);

    for (const count of [1, 8]) {
      const parts = await runParts(cfg, shuffled([...Array(count).keys()], count), count);
      assert.ok(parts.every((r) => / of \d+ of .*: \d+ files/.test(r.stdout)));
      const fin = await ckptEnv(["run", cfg, "--finish", String(count), "--log", "quiet"]);
      assert.equal(fin.code, 0, fin.stderr);
      assert.match(
        afterSha(fin.stdout),
        /^most changed modules, \|\|dW\|\|\/\|\|W\|\| \(5 of 14 merged\)/,
      );
      assert.equal(afterSha(fin.stdout), want.printed);
      await assertSameAsOneMachine(out, want, count);
      await Deno.remove(out, { recursive: true });
    }

    // 3 parts, the lead part (2, which also runs the tokenizer, optimizer, metrics and value
    // head) killed right after the first block of its first weight file. Where that is comes from
    // a run of the same part on a scratch output, which makes the same file-system calls.
    const log = join(dir, "fs.log");
    const calib = await ckptEnv(["run", cfg, "--part", "2/3", "--var", "out=scratch/OUT"], {
      CKPT_TEST_FS_LOG: log,
    });
    assert.equal(calib.code, 0, calib.stderr);
    const killed = await ckptEnv(["run", cfg, "--part", "2/3", "--log", "quiet"], {
      CKPT_TEST_KILL_AT: String(await firstWrite(log) + 1),
    });
    assert.equal(killed.code, 137, `the part was not killed: ${killed.stderr}`);
    await runParts(cfg, [1, 0], 3);
    const early = await ckptEnv(["run", cfg, "--finish", "3", "--log", "plain"]);
    assert.equal(early.code, 1);
    assert.match(early.stderr, /PARTS_MISSING/);
    assert.match(early.stderr, /part 2 has no receipt/);
    const again = await ckptEnv(["run", cfg, "--part", "0/3"]);
    assert.match(again.stdout, /part 0 of 3 .*already done/);
    await runParts(cfg, [2], 3);
    const fin = await ckptEnv(["run", cfg, "--finish", "3", "--log", "quiet"]);
    assert.equal(fin.code, 0, fin.stderr);
    await assertSameAsOneMachine(out, want, 3);
    const late = await ckptEnv(["run", cfg, "--part", "1/3"]);
    assert.equal(late.code, 0, late.stderr);
    assert.match(late.stdout, /already finished: nothing to do/);
    const lateFinish = await ckptEnv(["run", cfg, "--finish", "3"]);
    assert.equal(lateFinish.code, 0, lateFinish.stderr);
    assert.match(lateFinish.stdout, /already finished/);
  });
});

Deno.test("`ckpt run --part I/N` then `--finish N` equals the one-machine export of an FSDP/DCP LoRA checkpoint for 1, 3 and 8 parts", async () => {
  await withTempDir(async (dir) => {
    const cfg = await dcpRun(dir);
    const out = join(dir, "dcp", "OUT");
    const plan = await ckptEnv(["run", cfg, "--part", "0/3", "--dry-run", "--log", "quiet"]);
    assert.equal(plan.code, 0, plan.stderr);
    const planned = [...plan.stdout.matchAll(/^ {2}(pytorch_model-\S+\.bin) /gm)].map((m) => m[1]);
    assert.match(plan.stdout, /^plan for part 0 of 3 of \S+OUT \(nothing written\):/);
    assert.ok(planned.length >= 1, plan.stdout);
    assert.deepEqual(await namesIn(join(dir, "dcp")), [], "a dry run writes nothing");
    const want = await oneMachine(cfg, out, join(dir, "dcp", "ONE"));
    assert.ok(Object.keys(want.tree).filter((p) => p.endsWith(".bin")).length >= 5);
    for (const count of [1, 3, 8]) {
      const parts = await runParts(cfg, shuffled([...Array(count).keys()], 7 * count), count);
      if (count === 3) {
        const part0 = parts[shuffled([0, 1, 2], 21).indexOf(0)]!;
        assert.match(part0.stdout, new RegExp(`part 0 of 3 of \\S+: ${planned.length} files`));
      }
      const fin = await ckptEnv(["run", cfg, "--finish", String(count), "--log", "quiet"]);
      assert.equal(fin.code, 0, fin.stderr);
      await assertSameAsOneMachine(out, want, count);
      await Deno.remove(out, { recursive: true });
    }
  });
});

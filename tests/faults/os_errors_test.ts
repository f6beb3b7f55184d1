/**
 * Operating-system errors, one class at a time, through every entry point: each is a coded error
 * (`errors/os.ts`) naming the operation and the path, exit 1, no stack trace, `--log json` stays
 * JSON, nothing is left behind, and any output that exists verifies.
 *
 * | errno        | how                                                    | entry points         |
 * | ------------ | ------------------------------------------------------ | -------------------- |
 * | EROFS        | tmpfs remounted read-only; a read-only bind mount      | run, merge, watch    |
 * | EPERM        | `chattr +i` on the output's folder / on the old output | merge (--overwrite)  |
 * | EACCES       | a folder of another user, without CAP_DAC_OVERRIDE     | gather, verify, inspect |
 * | EACCES       | an unreadable base, adapter, adapter config, tokenizer | merge (in preflight)  |
 * | ENAMETOOLONG | a 256-byte output name                                 | merge                |
 * | ENOTEMPTY    | a folder created at the output before the final rename | merge (and unit)     |
 * | EEXIST       | (unit: the mapping of a real EEXIST)                   |                      |
 * | (ENOSPC)     | `enospc_test.ts`                                        | merge                |
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { osError } from "../../errors/os.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import {
  assertCoded,
  assertNoStack,
  assertVerifies,
  type ChildResult,
  ckptChild,
  leftovers,
  makeSmallRun,
  mergeArgs,
  mountTmpfs,
  nextRun,
  sh,
  spawnChild,
  unmount,
} from "./_harness.ts";

/** Runs without CAP_DAC_OVERRIDE: root then gets EACCES like any user. */
const NO_DAC = [
  "setpriv",
  "--inh-caps=-dac_override,-dac_read_search",
  "--bounding-set=-dac_override,-dac_read_search",
  "--",
];

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

Deno.test("faults: each errno class maps to its code, naming the operation and path", async () => {
  await withTempDir(async (dir) => {
    const real = async (fn: () => Promise<unknown>): Promise<unknown> => {
      try {
        await fn();
      } catch (err) {
        return err;
      }
      throw new Error("expected an OS error");
    };
    await Deno.mkdir(join(dir, "a", "x"), { recursive: true });
    await Deno.mkdir(join(dir, "b", "y"), { recursive: true });
    const cases: Array<[string, unknown]> = [
      ["FS_NOT_EMPTY", await real(() => Deno.rename(join(dir, "a"), join(dir, "b")))],
      ["FS_EXISTS", await real(() => Deno.mkdir(join(dir, "a")))],
      ["FS_NAME_TOO_LONG", await real(() => Deno.mkdir(join(dir, "n".repeat(256))))],
      [
        "FS_ERROR",
        await real(() => Deno.readDir(join(dir, "a", "missing"))[Symbol.asyncIterator]().next()),
      ],
    ];
    await mountTmpfs(join(dir, "ro"), 4096);
    try {
      await sh("mount", "-o", "remount,ro", join(dir, "ro"));
      cases.push(["FS_READ_ONLY", await real(() => Deno.mkdir(join(dir, "ro", "x")))]);
    } finally {
      await unmount(join(dir, "ro"));
    }
    await Deno.mkdir(join(dir, "imm"));
    await sh("chattr", "+i", join(dir, "imm"));
    try {
      cases.push(["FS_PERMISSION", await real(() => Deno.mkdir(join(dir, "imm", "x")))]);
    } finally {
      await sh("chattr", "-i", join(dir, "imm"));
    }
    await mountTmpfs(join(dir, "full"), 4096);
    try {
      cases.push([
        "FS_NO_SPACE",
        await real(() => Deno.writeFile(join(dir, "full", "x"), new Uint8Array(8192))),
      ]);
    } finally {
      await unmount(join(dir, "full"));
    }
    for (const [code, err] of cases) {
      const coded = osError(err, "do the thing to", "/some/path");
      assert.equal(coded.code, code, String(err));
      assert.match(coded.message, /^Cannot do the thing to "\/some\/path": .+ \(E[A-Z]+\)$/);
      assert.equal(coded.file, "/some/path");
      assert.equal(coded.cause, err);
    }
    // EACCES needs a process without CAP_DAC_OVERRIDE (root bypasses permissions otherwise).
    await Deno.mkdir(join(dir, "other"));
    await sh("chown", "65534:65534", join(dir, "other"));
    const probe = await new Deno.Command(NO_DAC[0]!, {
      args: [
        ...NO_DAC.slice(1),
        Deno.execPath(),
        "eval",
        `import { osError } from "${new URL("../../errors/os.ts", import.meta.url)}";
         try { Deno.mkdirSync(${JSON.stringify(join(dir, "other", "x"))}); }
         catch (e) { console.log(osError(e, "create", "p").code); }`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(probe.stdout).trim(), "FS_PERMISSION");
  });
});

Deno.test("faults: read-only output folders (tmpfs remounted ro, ro bind mount) through run and merge", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const ro = join(dir, "ro");
    await mountTmpfs(ro, 1 << 20);
    try {
      await sh("mount", "-o", "remount,ro", ro);
      const cfg = join(dir, "merge.jsonc");
      await Deno.writeTextFile(
        cfg,
        JSON.stringify({
          output: join(ro, "out"),
          stages: [
            { use: "gatherShards", from: run.base },
            { use: "mergeLora", adapter: run.adapter },
            { use: "writeModel" },
          ],
        }),
      );
      for (const log of ["json", "plain"]) {
        const r = await ckptChild(["run", cfg, "--backend", "cpu", "--log", log]);
        assertCoded(r, ["FS_READ_ONLY"], `ckpt run --log ${log} on a read-only tmpfs`);
        assert.match(r.stderr, /read-only/);
      }
      assert.deepEqual(await entries(ro), []);
    } finally {
      await unmount(ro);
    }
    // A read-only bind mount of an ordinary folder, under a folder the run must create.
    const bind = join(dir, "bind");
    await Deno.mkdir(bind);
    await sh("mount", "--bind", bind, bind);
    try {
      await sh("mount", "-o", "remount,bind,ro", bind);
      const r = await ckptChild(mergeArgs(run, join(bind, "sub", "out")));
      assertCoded(r, ["FS_READ_ONLY"], "ckpt merge into a read-only bind mount");
      assert.deepEqual(await entries(bind), []);
    } finally {
      await unmount(bind);
    }
  });
});

Deno.test("faults: an immutable output folder (chattr +i), and an immutable old output under --overwrite", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const parent = join(dir, "exports");
    await Deno.mkdir(parent);
    await sh("chattr", "+i", parent);
    try {
      const r = await ckptChild(mergeArgs(run, join(parent, "out"), "--log", "json"));
      assertCoded(r, ["FS_PERMISSION"], "ckpt merge into an immutable folder");
      assert.deepEqual(await entries(parent), []);
    } finally {
      await sh("chattr", "-i", parent);
    }
    // The old output cannot be renamed aside: the overwrite fails, the old output stays intact.
    const out = join(parent, "out");
    assert.equal(await nextRun(run, out), "ok");
    await sh("chattr", "+i", out);
    try {
      const r = await ckptChild(mergeArgs(run, out, "--overwrite"));
      assertCoded(r, ["FS_PERMISSION"], "ckpt merge --overwrite of an immutable output");
      assert.ok(await assertVerifies(run, out, "the immutable old output"));
      assert.deepEqual(await leftovers(parent), []);
    } finally {
      await sh("chattr", "-i", out);
    }
    assert.equal(await nextRun(run, out, { overwrite: true }), "ok");
    assert.deepEqual(await leftovers(parent), []);
    assert.ok(await assertVerifies(run, out, "after the next run"));
  });
});

Deno.test("faults: no permission (EACCES) through gather, verify and inspect", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const other = join(dir, "other");
    await Deno.mkdir(other);
    await sh("chown", "65534:65534", other);
    const gather = await ckptChild(["gather", run.base, "--out", join(other, "out")], {
      wrap: NO_DAC,
    });
    assertCoded(gather, ["FS_PERMISSION"], "ckpt gather into a folder of another user");
    assert.match(gather.stderr, /permission denied \(EACCES\)/);
    assert.deepEqual(await entries(other), []);

    const out = join(dir, "out");
    assert.equal(await nextRun(run, out), "ok");
    await sh("chown", "-R", "65534:65534", out);
    await sh("chmod", "700", out);
    const verify = await ckptChild(["verify", out], { wrap: NO_DAC });
    assertNoStack(verify, "ckpt verify of an unreadable folder");
    assert.equal(verify.code, 1);
    assert.match(verify.stdout, /FAIL\s+manifest.*\[[A-Z_]+\].*permission denied/);
    for (const target of [out, join(out, "model.safetensors")]) {
      const inspect = await ckptChild(["inspect", target], { wrap: NO_DAC });
      assertCoded(inspect, ["FILE_OPEN", "FS_PERMISSION"], `ckpt inspect ${target}`);
    }
  });
});

Deno.test("faults: output names of 255 bytes work, 256 is FS_NAME_TOO_LONG before anything is written", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const parent = join(dir, "exports");
    const long = join(parent, "x".repeat(255));
    const ok = await ckptChild(mergeArgs(run, long));
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(await assertVerifies(run, long, "a 255-byte output name"));
    const bad = await ckptChild(mergeArgs(run, join(parent, "y".repeat(256)), "--log", "json"));
    assertCoded(bad, ["FS_NAME_TOO_LONG"], "a 256-byte output name");
    assert.deepEqual(await entries(parent), ["x".repeat(255)]);
  });
});

Deno.test("faults: a folder that appears at the output before the final rename (ENOTEMPTY)", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const out = join(dir, "out");
    const pause = join(dir, "paused");
    // Hold the run just before its rename into place, then let another program take the name.
    const log = join(dir, "calls.log");
    const counted = await ckptChild(mergeArgs(run, join(dir, "counted")), {
      env: { CKPT_TEST_FS_LOG: log },
    });
    assert.equal(counted.code, 0, counted.stderr);
    await Deno.remove(join(dir, "counted"), { recursive: true });
    const calls = (await Deno.readTextFile(log)).trim().split("\n");
    const renameAt = calls.findIndex((l) => l.split(" ")[1] === "rename") + 1;
    assert.ok(renameAt > 0);
    for (const overwrite of [false, true]) {
      const child = spawnChild(mergeArgs(run, out, ...(overwrite ? ["--overwrite"] : [])), {
        env: { CKPT_TEST_PAUSE_AT: String(renameAt), CKPT_TEST_PAUSE_FILE: pause },
      });
      while (!(await exists(pause))) await new Promise((r) => setTimeout(r, 20));
      await Deno.mkdir(join(out, "user-data"), { recursive: true });
      await Deno.writeTextFile(join(out, "user-data", "notes.txt"), "mine");
      await Deno.remove(pause);
      const r = await collect(child);
      // Without --overwrite the rename meets a non-empty folder (ENOTEMPTY): OUTPUT_EXISTS; with
      // it, the folder is not a ckpt output and is kept: OUTPUT_NOT_CKPT.
      assertCoded(r, [overwrite ? "OUTPUT_NOT_CKPT" : "OUTPUT_EXISTS"], `overwrite=${overwrite}`);
      assert.equal(await Deno.readTextFile(join(out, "user-data", "notes.txt")), "mine");
      assert.deepEqual(await leftovers(dir), []);
      await Deno.remove(out, { recursive: true });
    }
  });
});

Deno.test("faults: an output inside its input through a bind mount is refused (device/inode)", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    // The same folder at a second path: no symlink to resolve, only device/inode say it is the base.
    const alias = join(dir, "alias");
    await Deno.mkdir(alias);
    await sh("mount", "--bind", run.base, alias);
    try {
      for (
        const [out, extra] of [[join(alias, "merged"), []], [alias, ["--overwrite", "--force"]]]
      ) {
        const r = await ckptChild(mergeArgs(run, out as string, ...(extra as string[])));
        assertCoded(r, ["OUTPUT_INSIDE_INPUT"], `--out ${out}`);
      }
      assert.deepEqual(await entries(run.base), [
        "config.json",
        "generation_config.json",
        "model.safetensors",
      ]);
    } finally {
      await unmount(alias);
    }
  });
});

Deno.test("faults: a ${var} expansion that grows exponentially is CONFIG_VAR_TOO_LARGE", async () => {
  await withTempDir(async (dir) => {
    const vars: Record<string, string> = { v0: "xxxxxxxxxxxxxxxx" };
    for (let i = 1; i <= 40; i++) vars[`v${i}`] = `\${v${i - 1}}\${v${i - 1}}`;
    const cfg = join(dir, "bomb.jsonc");
    await Deno.writeTextFile(
      cfg,
      JSON.stringify({ vars, output: "out-${v40}", stages: [{ use: "writeMetrics", from: "x" }] }),
    );
    for (const log of ["json", "plain"]) {
      const r = await ckptChild(["run", cfg, "--log", log]);
      assertCoded(r, ["CONFIG_VAR_TOO_LARGE"], `--log ${log}`);
    }
    assert.deepEqual(await entries(dir), ["bomb.jsonc"]);
  });
});

Deno.test("faults: ckpt watch on a read-only runs folder and into a read-only exports folder", async () => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    const runs = join(dir, "runs");
    await Deno.mkdir(join(runs, "step-1"), { recursive: true });
    for (const f of ["model.safetensors", "config.json"]) {
      await Deno.copyFile(join(run.base, f), join(runs, "step-1", f));
    }
    const exportsDir = join(dir, "exports");
    await Deno.mkdir(exportsDir);
    const cfg = join(dir, "watch.jsonc");
    await Deno.writeTextFile(
      cfg,
      JSON.stringify({
        output: `${exportsDir}/\${name}`,
        stages: [{ use: "gatherShards", from: "${checkpoint}" }, { use: "writeModel" }],
      }),
    );
    const watch = ["watch", runs, "--config", cfg, "--quiet-seconds", "0", "--log", "json"];
    await sh("mount", "--bind", exportsDir, exportsDir);
    try {
      await sh("mount", "-o", "remount,bind,ro", exportsDir);
      const r = await ckptChild(watch);
      assertNoStack(r, "ckpt watch into a read-only exports folder");
      assert.equal(r.code, 1, r.stdout + r.stderr);
      const failed = r.stdout.split("\n").filter((l) => l.includes('"failed"')).map((l) =>
        JSON.parse(l)
      );
      assert.equal(failed[0]?.code, "FS_READ_ONLY", r.stdout);
    } finally {
      await unmount(exportsDir);
    }
    await sh("mount", "--bind", runs, runs);
    try {
      await sh("mount", "-o", "remount,bind,ro", runs);
      const r = await ckptChild(watch);
      assertCoded(r, ["FS_READ_ONLY"], "ckpt watch on a read-only runs folder");
    } finally {
      await unmount(runs);
    }
  });
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function collect(child: Deno.ChildProcess): Promise<ChildResult> {
  const out = await child.output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

Deno.test("faults: an input that is there but may not be read is FS_PERMISSION, not missing, before any stage", async (t) => {
  await withTempDir(async (dir) => {
    const run = await makeSmallRun(join(dir, "run"));
    // a copy of the run whose part `lock` makes unreadable to anyone but its owner (nobody)
    const cases: Array<[string, (base: string, adapter: string) => Promise<string>]> = [
      ["the base folder", async (base) => {
        await sh("chown", "65534:65534", base);
        await sh("chmod", "700", base);
        return base;
      }],
      ["the adapter folder", async (_base, adapter) => {
        await sh("chown", "65534:65534", adapter);
        await sh("chmod", "700", adapter);
        return adapter;
      }],
      ["the adapter config", async (_base, adapter) => {
        const f = join(adapter, "adapter_config.json");
        await sh("chown", "65534:65534", f);
        await sh("chmod", "600", f);
        return f;
      }],
      ["the base's tokenizer.json", async (base) => {
        const f = join(base, "tokenizer.json");
        await Deno.writeTextFile(f, "{}");
        await sh("chown", "65534:65534", f);
        await sh("chmod", "600", f);
        return f;
      }],
    ];
    for (const [what, lock] of cases) {
      await t.step(what, async () => {
        const copy = join(dir, what.replaceAll(/[^a-z]/g, "-"));
        await Deno.mkdir(copy);
        await sh("cp", "-a", run.base, join(copy, "base"));
        await sh("cp", "-a", run.adapter, join(copy, "adapter"));
        const base = join(copy, "base");
        const adapter = join(copy, "adapter");
        const locked = await lock(base, adapter);
        const out = join(copy, "out");
        const r = await ckptChild(
          mergeArgs({ base, adapter }, out, "--log", "json"),
          { wrap: NO_DAC },
        );
        assertCoded(r, ["FS_PERMISSION"], `ckpt merge with ${what} unreadable`);
        assert.ok(r.stderr.includes(locked), `the message names ${locked}\n${r.stderr}`);
        assert.match(r.stderr, /permission denied \(EACCES\)/);
        assert.doesNotMatch(r.stderr + r.stdout, /does not exist/);
        assert.doesNotMatch(r.stdout + r.stderr, /"stage-start"/, "it failed in preflight");
        assert.deepEqual(await entries(copy), ["adapter", "base"]);
      });
    }
  });
});

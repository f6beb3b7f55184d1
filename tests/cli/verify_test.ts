import assert from "node:assert/strict";
import { join } from "node:path";
import { buildManifest, writeManifest } from "../../pipelines/manifest.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt } from "./_cli.ts";

Deno.test("`ckpt verify` exits 0 on a sealed folder and 1 after a flipped byte", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "metrics.json"), '{"counter": 64}');
    await writeManifest(dir, await buildManifest(dir, { output: dir }));
    const ok = await ckpt(["verify", dir]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /^verified: 1 files hashed, 1 loaded/m);

    const bytes = await Deno.readFile(join(dir, "metrics.json"));
    bytes[3]! ^= 0x20;
    await Deno.writeFile(join(dir, "metrics.json"), bytes);
    const bad = await ckpt(["verify", dir, "--json"]);
    assert.equal(bad.code, 1);
    const result = JSON.parse(bad.stdout);
    assert.equal(result.ok, false);
    assert.equal(result.checks[0].file, "metrics.json");
  });
});

Deno.test("`ckpt verify` exits 2 on wrong usage", async () => {
  assert.equal((await ckpt(["verify"])).code, 2);
  assert.equal((await ckpt(["verify", "/tmp", "--base", "x"])).code, 2);
  assert.equal((await ckpt(["verify", "/tmp", "--samples", "0"])).code, 2);
});

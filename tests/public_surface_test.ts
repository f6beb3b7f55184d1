/**
 * The package's public surface changes only on purpose: `mod.ts` exports exactly the names in
 * tests/mod_exports.txt, deno.json names exactly the entry points below, and their documentation
 * passes `deno doc --lint` (the root alone, and every entry point with it).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import denoJson from "../deno.json" with { type: "json" };
import { REPO_ROOT } from "./_helpers/peer.ts";
import { committedNames, exportedNames, SURFACE_FILE } from "./_helpers/surface.ts";

/** The entry points of @ckpt/pipelines: the root and its sub-paths. */
const ENTRY_POINTS: Record<string, string> = {
  ".": "./mod.ts",
  "./cli": "./cli.ts",
  "./formats": "./formats/mod.ts",
  "./gpu": "./gpu/mod.ts",
  "./kernels": "./kernels/mod.ts",
  "./merge": "./merge/mod.ts",
  "./pipelines": "./pipelines/mod.ts",
  "./readers": "./readers/mod.ts",
  "./watch": "./pipelines/watch/mod.ts",
};

async function docLint(entries: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--lint", ...entries],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  return out.success ? "" : text;
}

Deno.test("mod.ts exports exactly the names of the committed list", async () => {
  const exported = await exportedNames("mod.ts");
  const committed = await committedNames();
  const added = exported.filter((n) => !committed.includes(n));
  const removed = committed.filter((n) => !exported.includes(n));
  assert.deepEqual(
    { added, removed },
    { added: [], removed: [] },
    `mod.ts's surface changed; if that is deliberate, update ${SURFACE_FILE} ` +
      "(deno run -A tests/_helpers/surface.ts > tests/mod_exports.txt)",
  );
  assert.ok(committed.length > 50, `${SURFACE_FILE} lists only ${committed.length} names`);
  for (const name of ["function runPipeline", "class CkptError", "class StateDict"]) {
    assert.ok(exported.includes(name), `mod.ts exports ${name}`);
  }
});

Deno.test("exportedNames() lists values and types with their kind", async () => {
  const names = await exportedNames("errors.ts");
  assert.deepEqual(names, [
    "class CkptError",
    "variable ERROR_CODES",
    "typeAlias ErrorCode",
    "interface ErrorContext",
    "function isCkptError",
  ]);
});

Deno.test("deno.json names the root and each sub-path entry point, and each file exists", async () => {
  assert.deepEqual(denoJson.exports, ENTRY_POINTS);
  for (const file of Object.values(ENTRY_POINTS)) {
    assert.ok((await Deno.stat(join(REPO_ROOT, file))).isFile, file);
  }
});

Deno.test("mod.ts alone and every entry point with it pass deno doc --lint", async () => {
  assert.equal(await docLint(["mod.ts"]), "");
  assert.equal(await docLint(Object.values(ENTRY_POINTS)), "");
});

/**
 * Every input file of a demo run, damaged in several ways (cut short, emptied, bits flipped near
 * the start or anywhere, zeroed, replaced by other JSON or by text that is not JSON), one at a
 * time, through the real `ppo-final` preset: the run either succeeds (the damage is in tensor
 * bytes no format can tell, or in a field nothing reads), and then every JSON file it wrote
 * parses, or fails with a coded error (never `INTERNAL`, never an uncoded exception), and a
 * failed run leaves nothing behind.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { CkptError } from "../../errors.ts";
import { loadPreset } from "../../pipelines/presets.ts";
import { runPipeline } from "../../pipelines/run.ts";
import { withCacheDir } from "../_helpers/cache_dir.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { listFiles } from "./_context.ts";

/** The damages, each from the file's bytes and a seeded random source. */
const DAMAGES: readonly [string, (b: Uint8Array, rnd: (n: number) => number) => Uint8Array][] = [
  ["cut in half", (b) => b.slice(0, Math.floor(b.length / 2))],
  ["cut to 8 bytes", (b) => b.slice(0, Math.min(8, b.length))],
  ["emptied", () => new Uint8Array()],
  ["3 bits flipped in the first 200 bytes", (b, rnd) => flip(b, 3, Math.min(b.length, 200), rnd)],
  ["5 bits flipped anywhere", (b, rnd) => flip(b, 5, b.length, rnd)],
  ["first 64 bytes zeroed", (b) => b.slice().fill(0, 0, 64)],
  ["other JSON", () => new TextEncoder().encode('{"a": [1, 2, {"b": null}], "c": "\\u0000"}')],
  ["not JSON", () => new TextEncoder().encode("\u00ff\u00fe not json")],
];

function flip(b: Uint8Array, n: number, within: number, rnd: (n: number) => number): Uint8Array {
  const c = b.slice();
  for (let k = 0; k < n; k++) {
    const i = rnd(within);
    c[i] = c[i]! ^ (1 << rnd(8));
  }
  return c;
}

Deno.test("a demo run with any one input damaged either exports or fails with a coded error, leaving nothing", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const clean = await makeDemoRun(join(dir, "clean"), { size: "tiny" });
      const files = await listFiles(clean.dir);
      let x = 7;
      const rnd = (n: number) => (x = (x * 1103515245 + 12345) % 2 ** 31) % Math.max(n, 1);
      const failures = new Map<string, number>();
      let exported = 0;
      for (const file of files) {
        const bytes = await Deno.readFile(join(clean.dir, file));
        for (const [damage, apply] of DAMAGES) {
          const run = join(dir, "run"), out = join(dir, "out");
          await Deno.remove(run, { recursive: true }).catch(() => {});
          await new Deno.Command("cp", { args: ["-r", clean.dir, run] }).output();
          await Deno.writeFile(join(run, file), apply(bytes, rnd));
          const what = `${file}, ${damage}`;
          let ok = false;
          try {
            const config = await loadPreset("ppo-final", { vars: { run, out }, env: {} });
            await runPipeline(config, { backend: "cpu" });
            ok = true;
          } catch (e) {
            assert.ok(e instanceof CkptError, `${what}: not a coded error: ${e}`);
            assert.notEqual(e.code, "INTERNAL", `${what}: ${e.message}`);
            failures.set(e.code, (failures.get(e.code) ?? 0) + 1);
            assert.deepEqual(
              (await Array.fromAsync(Deno.readDir(dir))).map((d) => d.name).sort(),
              ["clean", "run"],
              `${what}: the failed run left something behind`,
            );
          }
          if (ok) {
            exported++;
            // what transformers reads must read: every JSON file of the export parses
            for (const f of (await listFiles(out)).filter((p) => p.endsWith(".json"))) {
              const text = Deno.readTextFileSync(join(out, f));
              assert.doesNotThrow(() => JSON.parse(text), `${what}: ${f}`);
            }
            await Deno.remove(out, { recursive: true });
          }
        }
      }
      assert.ok(failures.size >= 8, `many kinds of damage found: ${[...failures.keys()]}`);
      assert.ok(exported > 0, "some damage is in bytes no format can tell");
    })
  );
});

/** The mutation tool's parts (`tools/_mutate_ops.ts`, `tools/_mutate_run.ts`): which edits it makes, and which it sets aside. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { applyMutant, findMutants } from "../../tools/_mutate_ops.ts";
import { compileErrors, exactFilter, reaches } from "../../tools/_mutate_run.ts";
import { withTempDir } from "../_helpers/tmp.ts";

const SOURCE = `import { CkptError } from "./errors.ts";
type Small = 0 | 1;
const TABLE = [7, 8];
export function f(a: number, b: number, ok: boolean): number {
  if (a > 10) throw new CkptError("X", \`Cannot f: \${a + 1} is over 10\`, { offset: a - 1 });
  while (b < a && !ok) b++;
  return ok ? a * b : a & 0xff;
}
if (import.meta.main) console.log(f(1 === 1 ? 1 : 2, 2, true));
`;

Deno.test("findMutants() makes each operator's edits and skips types, tables, messages and main blocks", () => {
  const ms = findMutants("x.ts", SOURCE);
  const got = ms.map((m) => `${m.line}:${m.operator}:${m.original}->${m.replacement}`);
  assert.deepEqual(got, [
    '5:guard:if (a > 10) throw new CkptError("X", `Cannot f: ${a + 1} is over 10`, { offset: a - 1 });->{}',
    "5:condition:a > 10->true",
    "5:condition:a > 10->false",
    "5:boundary:>->>=",
    "5:constant:10->11",
    "5:constant:10->9",
    '5:guard:throw new CkptError("X", `Cannot f: ${a + 1} is over 10`, { offset: a - 1 });->{}',
    "5:arithmetic:-->+",
    "5:constant:1->2",
    "5:constant:1->0",
    "6:condition:b < a && !ok->false",
    "6:boundary:<-><=",
    "6:logical:&&->||",
    "6:negation:!->",
    "6:update:++->--",
    "7:condition:ok->true",
    "7:condition:ok->false",
    "7:arithmetic:*->/",
    "7:bitwise:&->|",
    "7:constant:0xff->0x100",
    "7:constant:0xff->0xfe",
  ]);
  // Keys stay the same when unrelated lines move, and are unique.
  const moved = findMutants("x.ts", "// a new first line\n" + SOURCE);
  assert.deepEqual(moved.map((m) => m.key), ms.map((m) => m.key));
  assert.equal(new Set(ms.map((m) => m.key)).size, ms.length);
  const guard = ms.find((m) => m.operator === "guard")!;
  assert.ok(applyMutant(SOURCE, guard).includes("  {}\n  while"));
});

Deno.test("compileErrors() sets aside exactly the mutants that do not type-check", async () => {
  await withTempDir(async (dir) => {
    const text = `export function g(s: string, n: number): string {\n  return s + (n - 1);\n}\n`;
    await Deno.writeTextFile(join(dir, "g.ts"), text);
    const ms = findMutants("g.ts", text);
    // "s + ..." -> "s - ..." is a string minus a number: a type error; "n - 1" -> "n + 1" is fine.
    const labels = ms.map((m) => `${m.original}->${m.replacement}@${m.col}`);
    const bad = await compileErrors(dir, "g.ts", text, ms);
    assert.deepEqual([...bad].map((i) => labels[i]).sort(), ["+->-@12"]);
    assert.deepEqual(labels, ["+->-@12", "-->+@17", "1->2@19", "1->0@19"]);
  });
});

Deno.test("exactFilter() matches exactly the named tests, and reaches() reads lcov lines", () => {
  const re = exactFilter(["`f()` (a) [b]", "c: d"]);
  const r = new RegExp(re.slice(1, -1));
  assert.ok(r.test("`f()` (a) [b]") && r.test("c: d"));
  assert.ok(!r.test("`f()` (a) [b] more") && !r.test("c: d e"));
  const cov = new Map([["x.ts", new Map([[3, 1], [4, 0]])]]);
  assert.deepEqual([3, 4, 5].map((l) => reaches(cov, "x.ts", l)), [true, false, true]);
  assert.equal(reaches(cov, "y.ts", 3), false);
});

/** The mutation tool's parts (`tools/_mutate_ops.ts`, `_mutate_run.ts`, `_mutate_sample.ts`, `_mutate_report.ts`): which edits it makes, which it sets aside, how it samples and scores. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { applyMutant, findMutants } from "../../tools/_mutate_ops.ts";
import { renderReport } from "../../tools/_mutate_report.ts";
import { compileErrors, exactFilter, parseLcov, reaches } from "../../tools/_mutate_run.ts";
import { sampleByKey, stratified, wilson } from "../../tools/_mutate_sample.ts";
import { TARGETS } from "../../tools/mutate_targets.ts";
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

Deno.test("exactFilter() matches exactly the named tests", () => {
  const re = exactFilter(["`f()` (a) [b]", "c: d"]);
  const r = new RegExp(re.slice(1, -1));
  assert.ok(r.test("`f()` (a) [b]") && r.test("c: d"));
  assert.ok(!r.test("`f()` (a) [b] more") && !r.test("c: d e"));
});

Deno.test("reaches() takes a one-line guard that did not fire as reached when its function ran", () => {
  // deno's lcov for: 1 function f(x) {  2 if (x) throw new Error();  3 return 1;  4 }
  // 5 function g() {  6 return 2;  7 }, after f(0): line 2 reads 0 (the throw was skipped).
  const lcov = [
    "SF:/repo/x.ts",
    "FN:1,f",
    "FN:5,g",
    "FNDA:1,f",
    "FNDA:0,g",
    "DA:1,1",
    "DA:2,0",
    "DA:3,1",
    "DA:5,1",
    "DA:6,0",
    "end_of_record",
    "SF:/repo/other.ts",
    "DA:1,1",
    "end_of_record",
  ].join("\n");
  const cov = parseLcov(lcov, (p) => p === "/repo/x.ts" ? "x.ts" : undefined);
  assert.deepEqual([...cov.keys()], ["x.ts"]);
  assert.deepEqual([...cov.get("x.ts")!.functions], [[1, 1], [5, 0]]);
  assert.equal(reaches(cov, "x.ts", 2, 1), true, "the guard in f, which ran");
  assert.equal(reaches(cov, "x.ts", 6, 5), false, "the body of g, never called");
  assert.equal(reaches(cov, "x.ts", 3, 1), true);
  assert.equal(reaches(cov, "x.ts", 4, 1), true, "a line lcov does not list");
  assert.equal(reaches(cov, "x.ts", 2, undefined), true, "top-level code runs on load");
  assert.equal(reaches(cov, "other.ts", 1), false, "a file not measured");
});

Deno.test("findMutants() names the first line of the innermost function around each edit", () => {
  const text =
    "const top = 1 + 2;\nfunction f(a: number) {\n  const g = (b: number) =>\n    b - 1;\n  return a * 2;\n}\n";
  const got = findMutants("y.ts", text).map((m) => `${m.line}:${m.original}:${m.fnLine}`);
  assert.deepEqual(got, [
    "1:1:undefined",
    "1:1:undefined",
    "1:+:undefined",
    "1:2:undefined",
    "1:2:undefined",
    "4:-:3",
    "4:1:3",
    "4:1:3",
    "5:*:2",
    "5:2:2",
    "5:2:2",
  ]);
});

Deno.test("sampleByKey() draws the same mutants for a seed, another set for another seed, and barely moves when a mutant goes", () => {
  const items = Array.from(
    { length: 200 },
    (_, i) => ({ key: `f.ts boundary < -> <= @ line ${i}` }),
  );
  const a = sampleByKey(items, 30, 1);
  assert.equal(a.length, 30);
  assert.deepEqual(sampleByKey(items, 30, 1), a);
  assert.deepEqual(a, items.filter((t) => a.includes(t))); // source order kept
  const b = sampleByKey(items, 30, 2);
  assert.ok(b.filter((t) => a.includes(t)).length < 20, "seed 2 draws mostly other mutants");
  // Removing one drawn mutant brings in exactly one other; the remaining 29 stay.
  const gone = a[7]!;
  const c = sampleByKey(items.filter((t) => t !== gone), 30, 1);
  assert.equal(c.filter((t) => a.includes(t)).length, 29);
  assert.deepEqual(sampleByKey(items.slice(0, 5), 30, 1), items.slice(0, 5));
});

Deno.test("wilson() and stratified() give textbook intervals, none when the sample is the population", () => {
  // 45 of 50, large population: Wilson 95 % interval 0.7864 to 0.9565.
  const w = wilson(45, 50, Infinity);
  assert.deepEqual([w.p, w.low.toFixed(4), w.high.toFixed(4)], [0.9, "0.7864", "0.9565"]);
  assert.deepEqual(wilson(45, 50, 50), { p: 0.9, low: 0.9, high: 0.9 });
  const narrower = wilson(45, 50, 100);
  assert.ok(narrower.low > w.low && narrower.high < w.high);
  assert.deepEqual(wilson(0, 0, 10), { p: 0, low: 0, high: 1 });
  // Weighted by what each stratum stands for: 0.25 * 1 + 0.75 * 0.8 = 0.85.
  const s = stratified([{ k: 10, n: 10, weight: 100 }, { k: 40, n: 50, weight: 300 }]);
  assert.ok(Math.abs(s.p - 0.85) < 1e-12);
  // One stratum is exactly its Wilson interval; one sampled whole adds no uncertainty.
  assert.deepEqual(stratified([{ k: 40, n: 50, weight: 300 }]), wilson(40, 50, 300));
  assert.ok(s.high - s.low < wilson(40, 50, 300).high - wilson(40, 50, 300).low);
  // Every sampled mutant killed still leaves an interval below 100 %.
  const all = stratified([{ k: 50, n: 50, weight: 300 }, { k: 40, n: 40, weight: 400 }]);
  assert.ok(all.p === 1 && all.high > 1 - 1e-12 && all.low > 0.95 && all.low < 0.97);
  const whole = stratified([{ k: 9, n: 10, weight: 10 }, { k: 5, n: 5, weight: 5 }]);
  assert.deepEqual([whole.low, whole.high], [whole.p, whole.p]);
});

Deno.test("renderReport() scores a sampled target with its interval and lists survivors and equivalents", () => {
  const base = {
    target: "t",
    file: "f.ts",
    line: 3,
    col: 1,
    operator: "boundary",
    original: "<",
    replacement: "<=",
    tests: [],
    ms: 0,
    fileHash: "",
    population: 100,
    drawn: 10,
  };
  const statuses = ["killed", "killed", "killed", "killed", "killed", "killed", "timeout"] as const;
  const rs = [
    ...statuses.map((status, i) => ({ ...base, key: `k${i}`, status })),
    { ...base, key: "c", status: "compile-error" as const },
    { ...base, key: "s", status: "survived" as const, line: 9 },
    { ...base, key: "e", status: "survived" as const },
  ];
  const md = renderReport(rs, {
    targets: ["t"],
    equivalent: { e: "same result", "f.ts gone": "no longer found", "other.ts x": "another file" },
    found: new Set([...rs.map((r) => r.key), "unsampled"]),
    files: ["f.ts"],
    minutes: 2,
    jobs: 1,
    seed: 3,
  });
  // 7 detected of 10 - 1 compile error - 1 equivalent = 8: 87.5 %.
  const row = md.split("\n").find((l) => l.startsWith("| t |"))!;
  assert.match(
    row,
    /^\| t \| 10 of 100 \| 1 \| 6 \| 1 \| 1 \| 0 \| 1 \| 87\.5 % \| (\S+) % – (\S+) % \|$/,
  );
  const e = wilson(7, 8, 80);
  assert.ok(row.includes(`${(100 * e.low).toFixed(1)} % – ${(100 * e.high).toFixed(1)} %`));
  assert.match(md, /Sampled run \(seed 3\)/);
  assert.match(md, /## Survivors \(1\)\n\n- f\.ts:9:1 boundary `<` -> `<=`\n/);
  assert.match(
    md,
    /## Equivalent \(1, from tools\/mutate_equivalent\.json\)\n\n- f\.ts:3 .*: same result\n/,
  );
  assert.match(md, /## Stale equivalents \(no such mutant now\)\n\n- f\.ts gone\n$/);
});

Deno.test("TARGETS name each source and test file once, and every one exists", async () => {
  const sources = TARGETS.flatMap((t) => t.files);
  const tests = TARGETS.flatMap((t) => t.tests.map((f) => `${t.name} ${f}`));
  assert.deepEqual(sources.filter((f, i) => sources.indexOf(f) !== i), []);
  assert.deepEqual(tests.filter((f, i) => tests.indexOf(f) !== i), []);
  for (const f of [...sources, ...TARGETS.flatMap((t) => t.tests)]) {
    assert.ok((await Deno.stat(new URL(`../../${f}`, import.meta.url))).isFile, f);
  }
});

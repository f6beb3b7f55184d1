/**
 * `deno task mutate [target...] [--jobs=2] [--sample=N [--seed=1]] [--survivors] [--max=N]`:
 * mutation testing of the
 * safety-critical modules ({@linkcode TARGETS} in `tools/mutate_targets.ts`). Each mutant is one
 * small edit (`tools/_mutate_ops.ts`: comparison boundaries, arithmetic and bitwise operators,
 * boolean negation, conditions forced true or false, removed guard clauses and throws, constants
 * off by one). A mutant that does not type-check is set aside ("compile error", not counted);
 * the others run the test files whose coverage reaches their line, in sandbox copies of the
 * repository (the working tree is never touched). A test failure or a timeout kills a mutant.
 *
 * Score = killed / (mutants that compile − equivalent). Equivalent mutants (no test can tell them
 * apart) are listed with the reason in `tools/mutate_equivalent.json`, shown in the report, never
 * hidden; mutants no test reaches count as survivors.
 *
 * Writes `.mutate/results.json` (every mutant and its outcome) and `.mutate/report.md`.
 * `--survivors` re-runs only what survived (or was not run) in the last results whose file is
 * unchanged, keeping the other outcomes: for iterating on tests; the reported score comes from a
 * full run. `--sample=N` runs N mutants per target, chosen by a hash of each mutant's key and
 * `--seed` (deterministic: the same seed and source give the same sample), and reports each score
 * with its sample size and 95 % interval (`tools/_mutate_sample.ts`). Not part of `deno task test`
 * (a full run takes hours on a 2-core machine).
 * @module
 */
import { join } from "node:path";
import { findMutants, type Mutant } from "./_mutate_ops.ts";
import {
  baseline,
  compileErrors,
  deno,
  type LineCoverage,
  listTests,
  makeSandbox,
  type MutantStatus,
  reaches,
  removeSandbox,
  runMutant,
} from "./_mutate_run.ts";
import { type MutantResult, renderReport } from "./_mutate_report.ts";
import { sampleByKey } from "./_mutate_sample.ts";
import { type MutationTarget, TARGETS } from "./mutate_targets.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const OUT = join(ROOT, ".mutate");
const EQUIVALENT_FILE = join(ROOT, "tools", "mutate_equivalent.json");

/** One top-level test of a target's test files: the lines it reaches and how long it takes. */
interface Unit {
  file: string;
  name: string;
  ms: number;
  coverage: LineCoverage;
}

type Result = MutantResult;

const args = Deno.args;
const opt = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
const jobs = Math.max(1, Number(opt("jobs") ?? 2));
const survivorsOnly = args.includes("--survivors");
const maxMutants = Number(opt("max") ?? Infinity);
const sample = opt("sample") === undefined ? undefined : Number(opt("sample"));
const seed = Number(opt("seed") ?? 1);
if (sample !== undefined && !(Number.isInteger(sample) && sample > 0)) {
  console.error(`mutate: --sample needs a positive whole number, got ${opt("sample")}`);
  Deno.exit(2);
}
if (!Number.isInteger(seed)) {
  console.error(`mutate: --seed needs a whole number, got ${opt("seed")}`);
  Deno.exit(2);
}
const names = args.filter((a) => !a.startsWith("--"));
const unknown = names.filter((n) => !TARGETS.some((t) => t.name === n));
if (unknown.length > 0) {
  console.error(`mutate: unknown target ${unknown} (known: ${TARGETS.map((t) => t.name)})`);
  Deno.exit(2);
}
const targets = names.length > 0 ? TARGETS.filter((t) => names.includes(t.name)) : TARGETS;

async function sha(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

const equivalent: Record<string, string> = JSON.parse(
  await Deno.readTextFile(EQUIVALENT_FILE).catch(() => "{}"),
);
// The last results: targets not run now keep theirs (a run target by target adds up to one
// report), and --survivors reuses the outcomes of mutants that did not survive.
const previous = new Map<string, Result>();
const old = JSON.parse(
  await Deno.readTextFile(join(OUT, "results.json")).catch(() => "[]"),
) as Result[];
for (const r of old) if (r.population !== undefined) previous.set(r.key, r);

const listed = await deno(["eval", "-p", "1"], ROOT); // warms deno up; fails loudly if broken
if (listed.code !== 0) throw new Error(listed.out);
const git = await new Deno.Command("git", {
  args: ["ls-files", "-co", "--exclude-standard", "-z"],
  cwd: ROOT,
  stdout: "piped",
}).output();
const repoFiles = new TextDecoder().decode(git.stdout).split("\0").filter((f) =>
  f !== "" && !f.startsWith(".mutate/")
);
const sandboxes = await Promise.all(
  Array.from({ length: jobs }, () => makeSandbox(ROOT, repoFiles)),
);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    console.error(`mutate: ${signal}, removing the sandboxes`);
    await Promise.all(sandboxes.map(removeSandbox));
    Deno.exit(130);
  });
}
const results: Result[] = [];
const found = new Set<string>(); // every mutant's key in the targets run, drawn or not
const t0 = performance.now();
try {
  for (const target of targets) await runTarget(target);
} finally {
  await Promise.all(sandboxes.map(removeSandbox));
}
const minutes = (performance.now() - t0) / 60000;

await saveResults();
// Keep (and report) the outcomes of the targets not run now.
const ran = new Set(targets.map((t) => t.name));
for (const r of previous.values()) if (!ran.has(r.target)) results.push(r);
const report = renderReport(results, {
  targets: TARGETS.map((t) => t.name),
  equivalent,
  found,
  files: targets.flatMap((t) => t.files),
  minutes,
  jobs,
  seed: sample === undefined ? undefined : seed,
});
await Deno.writeTextFile(join(OUT, "report.md"), report);
console.log("\n" + report);

async function runTarget(target: MutationTarget): Promise<void> {
  console.log(`\n== ${target.name}: ${target.files.join(", ")}`);
  const base = sandboxes[0]!;
  // Every top-level test of the target's test files, with the lines it reaches and its time.
  const units: Unit[] = [];
  for (const file of target.tests) {
    for (const name of await listTests(base, file)) {
      units.push({ file, name, ms: 0, coverage: new Map() });
    }
  }
  const pending = [...units];
  await Promise.all(sandboxes.map(async (repo) => {
    for (let u = pending.shift(); u !== undefined; u = pending.shift()) {
      const b = await baseline(repo, u.file, u.name, target.files);
      u.ms = b.ms;
      u.coverage = b.coverage;
    }
  }));
  const total = units.reduce((s, u) => s + u.ms, 0);
  const startup = Math.min(...units.map((u) => u.ms));
  console.log(
    `   baseline: ${units.length} tests in ${target.tests.length} files, ${
      (total / 1000).toFixed(0)
    } s`,
  );
  const queue: { mutant: Mutant; text: string; tests: Unit[]; hash: string }[] = [];
  const sources: { file: string; text: string; hash: string; mutants: Mutant[] }[] = [];
  for (const file of target.files) {
    const text = await Deno.readTextFile(join(base, file)); // the copy taken at the start
    const mutants = findMutants(file, text).slice(0, maxMutants);
    sources.push({ file, text, hash: await sha(text), mutants });
  }
  const population = sources.reduce((s, f) => s + f.mutants.length, 0);
  const all = sources.flatMap((f) => f.mutants);
  for (const m of all) found.add(m.key);
  const drawn = new Set(sample === undefined ? all : sampleByKey(all, sample, seed));
  if (drawn.size < population) {
    console.log(`   sample: ${drawn.size} of ${population} mutants (seed ${seed})`);
  }
  for (const { file, text, hash, mutants: every } of sources) {
    const mutants = every.filter((m) => drawn.has(m));
    const reuse = (m: Mutant): Result | undefined => {
      const p = survivorsOnly ? previous.get(m.key) : undefined;
      return p && p.fileHash === hash && p.status !== "survived" && p.status !== "no-coverage"
        ? p
        : undefined;
    };
    const toCheck = mutants.filter((m) => !reuse(m));
    const bad = await compileErrors(base, file, text, toCheck);
    let reused = 0;
    for (const m of mutants) {
      const old = reuse(m);
      if (old) {
        results.push({ ...old, line: m.line, col: m.col, population, drawn: drawn.size });
        reused++;
        continue;
      }
      const result = (status: MutantStatus, tests: string[] = []): Result => ({
        target: target.name,
        key: m.key,
        file,
        line: m.line,
        col: m.col,
        operator: m.operator,
        original: m.original,
        replacement: m.replacement,
        status,
        tests,
        ms: 0,
        fileHash: hash,
        population,
        drawn: drawn.size,
      });
      if (bad.has(toCheck.indexOf(m))) {
        results.push(result("compile-error"));
        continue;
      }
      const tests = units.filter((u) => reaches(u.coverage, file, m.line, m.fnLine));
      if (tests.length === 0) results.push(result("no-coverage"));
      else queue.push({ mutant: m, text, tests, hash });
    }
    console.log(
      `   ${file}: ${mutants.length} of ${every.length} mutants, ${bad.size} do not compile, ` +
        `${reused} kept from the last run`,
    );
  }
  let done = 0;
  const worker = async (repo: string): Promise<void> => {
    for (let job = queue.shift(); job !== undefined; job = queue.shift()) {
      // Each test alone took `ms`, deno's start-up included (about `startup`, the quickest
      // test's time): a mutant gets twice the start-up and three times the tests' own time.
      const own = job.tests.reduce((s, t) => s + Math.max(0, t.ms - startup), 0);
      const timeoutS = (2 * startup + 3 * own) / 1000 + 5;
      const r = await runMutant(repo, job.text, job.mutant, job.tests, timeoutS);
      const m = job.mutant;
      results.push({
        target: target.name,
        key: m.key,
        file: m.file,
        line: m.line,
        col: m.col,
        operator: m.operator,
        original: m.original,
        replacement: m.replacement,
        status: r.status,
        tests: job.tests.map((t) => `${t.file}: ${t.name}`),
        ms: Math.round(r.ms),
        failed: r.failed,
        fileHash: job.hash,
        population,
        drawn: drawn.size,
      });
      if (++done % 25 === 0 || r.status === "survived") {
        console.log(
          `   [${done}] ${r.status.padEnd(8)} ${m.file}:${m.line}:${m.col} ${m.operator} ` +
            `${JSON.stringify(m.original)} -> ${JSON.stringify(m.replacement)}`,
        );
      }
    }
  };
  await Promise.all(sandboxes.map(worker));
  await saveResults(); // after each target, so that a long run keeps what it measured
}

async function saveResults(): Promise<void> {
  await Deno.mkdir(OUT, { recursive: true });
  const kept = [...previous.values()].filter((r) => !results.some((n) => n.target === r.target));
  await Deno.writeTextFile(
    join(OUT, "results.json"),
    JSON.stringify([...results, ...kept], null, 1) + "\n",
  );
}

Deno.exit(0); // signal listeners may keep the process alive

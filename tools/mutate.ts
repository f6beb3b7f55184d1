/**
 * `deno task mutate [target...] [--jobs=2] [--survivors] [--max=N]`: mutation testing of the
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
 * full run. Not part of `deno task test` (a full run takes tens of minutes).
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

/** One mutant's outcome, as written to `.mutate/results.json`. */
interface Result {
  target: string;
  key: string;
  file: string;
  line: number;
  col: number;
  operator: string;
  original: string;
  replacement: string;
  status: MutantStatus;
  tests: string[];
  ms: number;
  failed?: string | undefined;
  fileHash: string;
}

const args = Deno.args;
const opt = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
const jobs = Math.max(1, Number(opt("jobs") ?? 2));
const survivorsOnly = args.includes("--survivors");
const maxMutants = Number(opt("max") ?? Infinity);
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
const previous = new Map<string, Result>();
if (survivorsOnly) {
  const old = JSON.parse(
    await Deno.readTextFile(join(OUT, "results.json")).catch(() => "[]"),
  ) as Result[];
  for (const r of old) previous.set(r.key, r);
}

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
const t0 = performance.now();
try {
  for (const target of targets) await runTarget(target);
} finally {
  await Promise.all(sandboxes.map(removeSandbox));
}
const minutes = (performance.now() - t0) / 60000;

await saveResults();
if (survivorsOnly) {
  // Keep (and report) the outcomes of the targets not run now.
  const ran = new Set(targets.map((t) => t.name));
  for (const r of previous.values()) if (!ran.has(r.target)) results.push(r);
}
const report = renderReport(results, minutes);
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
  for (const file of target.files) {
    const text = await Deno.readTextFile(join(base, file)); // the copy taken at the start
    const hash = await sha(text);
    const mutants = findMutants(file, text).slice(0, maxMutants);
    const reuse = (m: Mutant): Result | undefined => {
      const p = previous.get(m.key);
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
        results.push({ ...old, line: m.line, col: m.col });
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
      });
      if (bad.has(toCheck.indexOf(m))) {
        results.push(result("compile-error"));
        continue;
      }
      const tests = units.filter((u) => reaches(u.coverage, file, m.line));
      if (tests.length === 0) results.push(result("no-coverage"));
      else queue.push({ mutant: m, text, tests, hash });
    }
    console.log(
      `   ${file}: ${mutants.length} mutants, ${bad.size} do not compile, ${reused} kept from the last run`,
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
  const kept = survivorsOnly
    ? [...previous.values()].filter((r) => !results.some((n) => n.target === r.target))
    : [];
  await Deno.writeTextFile(
    join(OUT, "results.json"),
    JSON.stringify([...results, ...kept], null, 1) + "\n",
  );
}

function renderReport(all: Result[], minutes: number): string {
  const lines: string[] = [];
  const pct = (a: number, b: number) => b === 0 ? "-" : `${(100 * a / b).toFixed(1)} %`;
  lines.push(
    "| target | mutants | compile errors | killed | timeouts | survived | no coverage | equivalent | score |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  const totals = [0, 0, 0, 0, 0, 0, 0];
  for (const t of TARGETS) {
    const rs = all.filter((r) => r.target === t.name);
    if (rs.length === 0) continue;
    const count = (s: MutantStatus) => rs.filter((r) => r.status === s).length;
    const eq = rs.filter((r) => r.status === "survived" && r.key in equivalent).length;
    const row = [
      rs.length,
      count("compile-error"),
      count("killed"),
      count("timeout"),
      count("survived") - eq,
      count("no-coverage"),
      eq,
    ];
    row.forEach((v, i) => totals[i]! += v);
    const detected = row[2]! + row[3]!;
    const valid = row[0]! - row[1]! - eq;
    lines.push(`| ${t.name} | ${row.join(" | ")} | ${pct(detected, valid)} |`);
  }
  const valid = totals[0]! - totals[1]! - totals[6]!;
  lines.push(`| **all** | ${totals.join(" | ")} | **${pct(totals[2]! + totals[3]!, valid)}** |`);
  lines.push("", `Run time: ${minutes.toFixed(1)} min with ${jobs} job(s).`);
  const survivors = all.filter((r) =>
    (r.status === "survived" || r.status === "no-coverage") && !(r.key in equivalent)
  );
  lines.push("", `## Survivors (${survivors.length})`, "");
  for (const r of survivors.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line)) {
    lines.push(
      `- ${r.file}:${r.line}:${r.col} ${r.operator} \`${r.original}\` -> \`${r.replacement}\`` +
        (r.status === "no-coverage" ? " (no test reaches it)" : ""),
    );
  }
  const eqs = all.filter((r) => r.key in equivalent);
  lines.push("", `## Equivalent (${eqs.length}, from tools/mutate_equivalent.json)`, "");
  for (const r of eqs) {
    lines.push(
      `- ${r.file}:${r.line} ${r.operator} \`${r.original}\` -> \`${r.replacement}\`` +
        ` (${r.status}): ${equivalent[r.key]}`,
    );
  }
  const keys = new Set(all.map((r) => r.key));
  const stale = Object.keys(equivalent).filter((k) =>
    !keys.has(k) && targets.some((t) => t.files.some((f) => k.startsWith(f + " ")))
  );
  if (stale.length > 0) {
    lines.push("", `## Stale equivalents (no such mutant now)`, "", ...stale.map((k) => `- ${k}`));
  }
  return lines.join("\n") + "\n";
}
Deno.exit(0); // signal listeners may keep the process alive

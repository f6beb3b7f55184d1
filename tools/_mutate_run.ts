/**
 * The moving parts of `deno task mutate`: sandbox copies of the repository (mutants are written
 * there, never into the working tree), the per-test-file line coverage that picks which tests a
 * mutant runs, the batched type check that sets mutants which do not compile aside, and one
 * mutant's test run.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { applyMutant, type Mutant } from "./_mutate_ops.ts";

/** Runs `deno <args>` in `cwd`; returns the exit code, the output and the wall time. */
export async function deno(
  args: string[],
  cwd: string,
  timeoutS?: number,
): Promise<{ code: number; out: string; ms: number }> {
  const t0 = performance.now();
  // GNU timeout runs the command in its own process group and kills the whole group (deno test
  // and anything it spawned) when the time is up: exit 124, or 137 after the -k grace.
  const [cmd, cmdArgs] = timeoutS === undefined
    ? [Deno.execPath(), args]
    : ["timeout", ["-k", "5", String(Math.ceil(timeoutS)), Deno.execPath(), ...args]];
  const r = await new Deno.Command(cmd, {
    args: cmdArgs,
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return {
    code: r.code,
    out: dec.decode(r.stdout) + dec.decode(r.stderr),
    ms: performance.now() - t0,
  };
}

/**
 * A copy of the repository's tracked and unignored files under a new temporary folder, with
 * `node_modules` and `../shared` linked, so that tests run there as in the working tree.
 */
export async function makeSandbox(root: string, files: string[]): Promise<string> {
  const top = await Deno.makeTempDir({ prefix: "ckpt-mutate-" });
  const repo = join(top, "repo");
  for (const f of files) {
    await Deno.mkdir(dirname(join(repo, f)), { recursive: true });
    await Deno.copyFile(join(root, f), join(repo, f));
  }
  await Deno.symlink(join(root, "node_modules"), join(repo, "node_modules"));
  const shared = join(root, "..", "shared");
  if (await Deno.stat(shared).then(() => true, () => false)) {
    await Deno.symlink(shared, join(top, "shared"));
  }
  return repo;
}

/** Removes a sandbox made by {@linkcode makeSandbox}. */
export async function removeSandbox(repo: string): Promise<void> {
  await Deno.remove(dirname(repo), { recursive: true }).catch(() => {});
}

/**
 * What a test's run executed of each source file, from deno's lcov: the hits of each executable
 * line (`DA`) and of each function by its first line (`FN`/`FNDA`).
 */
export type LineCoverage = Map<
  string,
  { lines: Map<number, number>; functions: Map<number, number> }
>;

/** A regular expression that matches exactly the test names `names` (for `deno test --filter`). */
export function exactFilter(names: string[]): string {
  const esc = (n: string) => n.replace(/[\\.+*?()|[\]{}^$]/g, "\\$&");
  return `/^(?:${names.map(esc).join("|")})$/`;
}

const XML_ENTITIES: Record<string, string> = {
  "&amp;": "&",
  "&lt;": "<",
  "&gt;": ">",
  "&quot;": '"',
  "&apos;": "'",
};

/**
 * The top-level tests of one test file (steps left out), from a JUnit run in `repo`. Throws when
 * the file does not pass unmutated (a mutation run needs a green baseline).
 */
export async function listTests(repo: string, test: string): Promise<string[]> {
  const junit = await Deno.makeTempFile({ prefix: "ckpt-mutate-", suffix: ".xml" });
  try {
    const run = await deno(["test", "-A", "--no-check", `--junit-path=${junit}`, test], repo);
    if (run.code !== 0) {
      throw new Error(`mutate: ${test} fails before any mutation:\n${run.out.slice(-3000)}`);
    }
    const xml = await Deno.readTextFile(junit);
    const names = [...xml.matchAll(/<testcase name="([^"]*)"/g)].map((m) =>
      m[1]!.replace(/&(?:amp|lt|gt|quot|apos);/g, (e) => XML_ENTITIES[e]!)
    );
    return names.filter((n) => !names.some((p) => p !== n && n.startsWith(`${p} > `)));
  } finally {
    await Deno.remove(junit).catch(() => {});
  }
}

/**
 * Runs one test (`name` in the file `test`) with coverage in `repo`; returns its wall time and
 * which lines of `files` it executed.
 */
export async function baseline(
  repo: string,
  test: string,
  name: string,
  files: string[],
): Promise<{ ms: number; coverage: LineCoverage }> {
  const dir = await Deno.makeTempDir({ prefix: "ckpt-mutate-cov-" });
  try {
    const run = await deno(
      ["test", "-A", "--no-check", `--coverage=${dir}`, "--filter", exactFilter([name]), test],
      repo,
    );
    if (run.code !== 0 || !/\b1 passed\b/.test(run.out)) {
      throw new Error(`mutate: "${name}" (${test}) does not pass alone:\n${run.out.slice(-3000)}`);
    }
    const lcov = await deno(["coverage", "--lcov", dir], repo);
    const coverage = parseLcov(lcov.out, (path) => files.find((f) => path === join(repo, f)));
    return { ms: run.ms, coverage };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * The coverage of the files `rel` names (a source path to its repository-relative name, or
 * `undefined` for files not measured) in an lcov text.
 */
export function parseLcov(
  text: string,
  rel: (path: string) => string | undefined,
): LineCoverage {
  const coverage: LineCoverage = new Map();
  let current: { lines: Map<number, number>; functions: Map<number, number> } | undefined;
  let fnLines: number[] = [];
  let fnHits: number[] = [];
  const yes = (hits: number) => hits > 0 ? 1 : 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("SF:")) {
      const name = rel(line.slice(3).replace(/^file:\/\//, ""));
      current = name === undefined ? undefined : { lines: new Map(), functions: new Map() };
      if (name !== undefined) coverage.set(name, current!);
      fnLines = [];
      fnHits = [];
    } else if (!current) {
      continue;
    } else if (line.startsWith("DA:")) {
      const [n, hits] = line.slice(3).split(",").map(Number);
      current.lines.set(n!, Math.max(current.lines.get(n!) ?? 0, yes(hits!)));
    } else if (line.startsWith("FN:")) {
      fnLines.push(Number(line.slice(3).split(",")[0]));
    } else if (line.startsWith("FNDA:")) {
      fnHits.push(Number(line.slice(5).split(",")[0]));
    } else if (line === "end_of_record" && fnLines.length === fnHits.length) {
      // FN and FNDA records come in the same order: pair them by position, not by name
      // (anonymous functions share names).
      fnLines.forEach((n, i) => {
        current!.functions.set(n, Math.max(current!.functions.get(n) ?? 0, yes(fnHits[i]!)));
      });
    }
  }
  return coverage;
}

/**
 * True when a test's run may reach `line` of `file`: the file was loaded, and either lcov counts
 * the line as executed (or not executable), or the function around it (first line `fnLine`) was
 * called. lcov counts a line as unexecuted when any part of it was skipped, so a one-line guard
 * (`if (bad) throw ...`) reads 0 whenever it did not throw; the function's count catches those
 * (a mutant may then run tests that do not reach it: slower, never a false kill).
 */
export function reaches(
  coverage: LineCoverage,
  file: string,
  line: number,
  fnLine?: number,
): boolean {
  const c = coverage.get(file);
  if (c === undefined) return false;
  if (c.lines.get(line) !== 0) return true;
  if (fnLine === undefined) return true; // top-level code runs when the file loads
  return c.functions.get(fnLine) !== 0; // unknown functions count as reached
}

/**
 * The mutants of one file that do not type-check: each is written as a copy beside the file
 * (same imports) and the copies are checked by `deno check` in batches; a mutant whose copy has an
 * error does not compile. Throws when the unmutated copy itself does not check.
 */
export async function compileErrors(
  repo: string,
  file: string,
  text: string,
  mutants: Mutant[],
  batch = 120,
): Promise<Set<number>> {
  const bad = new Set<number>();
  const copy = (i: number | "base") =>
    join(repo, dirname(file), `__mutant_${i}__${basename(file)}`);
  const base = copy("base");
  await Deno.writeTextFile(base, text);
  try {
    const check = await deno(["check", base], repo);
    if (check.code !== 0) {
      throw new Error(`mutate: ${file} does not type-check as a copy:\n${check.out.slice(-2000)}`);
    }
  } finally {
    await Deno.remove(base);
  }
  for (let from = 0; from < mutants.length; from += batch) {
    const ids = mutants.slice(from, from + batch).map((_, k) => from + k);
    const paths = ids.map((i) => copy(i));
    for (const i of ids) await Deno.writeTextFile(paths[i - from]!, applyMutant(text, mutants[i]!));
    try {
      const check = await deno(["check", ...paths], repo);
      if (check.code !== 0) {
        // Only error locations count ("at file:///.../__mutant_N__x.ts:3:5"): deno check also
        // names every file it checks.
        const failing = [...check.out.matchAll(/\bat file:\/\/\S*?__mutant_(\d+)__/g)]
          .map((m) => Number(m[1]));
        if (failing.length === 0) {
          throw new Error(`mutate: deno check failed without naming a mutant:\n${check.out}`);
        }
        for (const i of failing) bad.add(i);
      }
    } finally {
      for (const p of paths) await Deno.remove(p).catch(() => {});
    }
  }
  return bad;
}

/** How a mutant ended. */
export type MutantStatus =
  | "killed"
  | "timeout"
  | "survived"
  | "no-coverage"
  | "compile-error";

/**
 * Runs `tests` in `repo` with `mutant` applied to its file, then restores the file. Killed when a
 * test fails, timeout when the run does not finish in `timeoutS` (counted as killed, as Stryker
 * does), survived when every test passes.
 */
export async function runMutant(
  repo: string,
  text: string,
  mutant: Mutant,
  tests: { file: string; name: string }[],
  timeoutS: number,
): Promise<{ status: MutantStatus; ms: number; failed: string | undefined }> {
  const path = join(repo, mutant.file);
  await Deno.writeTextFile(path, applyMutant(text, mutant));
  const files = [...new Set(tests.map((t) => t.file))];
  const filter = exactFilter([...new Set(tests.map((t) => t.name))]);
  try {
    const r = await deno(
      ["test", "-A", "--no-check", "--fail-fast", "--filter", filter, ...files],
      repo,
      timeoutS,
    );
    if (r.code === 124 || r.code === 137) return { status: "timeout", ms: r.ms, failed: undefined };
    if (r.code === 0) return { status: "survived", ms: r.ms, failed: undefined };
    const failed = r.out.match(/^(.+?) => \.\/(\S+?):\d+:\d+$/m);
    return {
      status: "killed",
      ms: r.ms,
      failed: failed ? `${failed[2]}: ${failed[1]}` : r.out.trim().split("\n").pop(),
    };
  } finally {
    await Deno.writeTextFile(path, text);
  }
}

/**
 * `deno task test`: the one gate. Runs format check, lint, type check, every test (unit, interop
 * and doc examples; the interop tests' Python peers are provided first when missing, see
 * `tools/peers/peers.ts`), `deno doc --lint` (`mod.ts` alone, then every entry point of deno.json's
 * exports together) and `deno publish --dry-run`, then prints
 * "N passed, N failed, N skipped" counted from the JUnit report's test cases (steps included;
 * ignored and filtered-out tests are skipped, never passed). Exits non-zero when anything failed,
 * and when no test ran at all (a filter that matches nothing).
 *
 * Extra arguments are passed to `deno test` (for example a file filter):
 * `deno task test tests/formats/`.
 *
 * One platform flake is handled explicitly: the `deno test` process has been seen (once, in CI) to
 * abort with a glibc heap error during its own teardown, after it had printed a summary with every
 * test passed and written a complete JUnit report. When exactly that happens (SIGABRT, a clean
 * summary, nothing after it but glibc's heap-corruption message; see `tools/_gate.ts`), the crash
 * is printed loudly and the test run is repeated once; a second crash, any other non-zero exit, or
 * any failed test fails the gate.
 * @module
 */
import { countJunit, type Counts, isTeardownHeapAbort, summaryLine } from "./_gate.ts";
import { ensurePeers } from "./peers/peers.ts";
import denoJson from "../deno.json" with { type: "json" };

const args = Deno.args;
const quick = args.includes("--quick");
const testArgs = args.filter((a) => a !== "--quick");

const failures: string[] = [];

async function step(name: string, cmd: string[]): Promise<boolean> {
  console.log(`\n== ${name}: deno ${cmd.join(" ")}`);
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: cmd,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) failures.push(name);
  return code === 0;
}

/** Runs `deno <cmd>` with its output passed through; returns the exit status and the output's tail. */
async function runTeed(
  cmd: string[],
): Promise<{ status: { code: number; signal: string | null }; tail: string }> {
  const child = new Deno.Command(Deno.execPath(), { args: cmd, stdout: "piped", stderr: "piped" })
    .spawn();
  let tail = "";
  const decoder = new TextDecoder();
  const pump = async (
    stream: ReadableStream<Uint8Array>,
    sink: { write(b: Uint8Array): Promise<number> },
  ) => {
    for await (const chunk of stream) {
      await sink.write(chunk);
      tail = (tail + decoder.decode(chunk, { stream: true })).slice(-8192);
    }
  };
  await Promise.all([pump(child.stdout, Deno.stdout), pump(child.stderr, Deno.stderr)]);
  const { code, signal } = await child.status;
  return { status: { code, signal }, tail };
}

async function readJunit(path: string): Promise<Counts | undefined> {
  try {
    return countJunit(await Deno.readTextFile(path));
  } catch {
    return undefined;
  }
}

/** The package's entry points (deno.json exports): the root and its sub-paths. */
const entryPoints = Object.values(denoJson.exports);
if (!quick && testArgs.length === 0) {
  await step("format", ["fmt", "--check"]);
  await step("lint", ["lint"]);
  await step("type check", ["check", "."]);
  await step("doc lint (root)", ["doc", "--lint", "mod.ts"]);
  await step("doc lint (entry points)", ["doc", "--lint", ...entryPoints]);
  await step("publish dry run", ["publish", "--dry-run", "--allow-dirty", "--quiet"]);
}

// The interop tests need the Python peers: provide any that is missing (deno task peers).
if (testArgs.length === 0 || testArgs.some((a) => a.includes("interop"))) {
  console.log("\n== peers: deno task peers");
  const missing = await ensurePeers();
  if (missing.size > 0) failures.push(`peers (${[...missing.keys()].join(", ")})`);
}

const targets = testArgs.length > 0 ? testArgs : [
  "tests/",
  "formats/",
  "readers/",
  "kernels/",
  "gpu/",
  "merge/",
  "pipelines/",
  "mod.ts",
  "errors.ts",
  "errors/",
];

let counts: Counts | undefined;
let testsOk = false;
for (let attempt = 1; attempt <= 2 && !testsOk; attempt++) {
  const junit = await Deno.makeTempFile({ prefix: "ckpt-junit-", suffix: ".xml" });
  const cmd = ["test", "-A", "--doc", `--junit-path=${junit}`, ...targets];
  console.log(`\n== tests${attempt > 1 ? " (repeated once)" : ""}: deno ${cmd.join(" ")}`);
  const { status, tail } = await runTeed(cmd);
  counts = await readJunit(junit);
  await Deno.remove(junit).catch(() => {});
  testsOk = status.code === 0;
  if (!testsOk && attempt === 1 && isTeardownHeapAbort(status, tail, counts)) {
    console.log(
      `\n!! deno test aborted (${
        status.signal ?? `exit ${status.code}`
      }) with a glibc heap error ` +
        `AFTER reporting ${counts?.passed} passed and 0 failed (a crash in the process's teardown; ` +
        `its last output is above). Repeating the test run once.`,
    );
    continue;
  }
  break;
}
if (!testsOk) failures.push("tests");
if (!counts) failures.push("junit report missing or incomplete");
else if (counts.passed + counts.failed === 0) failures.push("no test ran");

// Gate steps that failed count as failures too, so the summary never reads green when a step broke;
// a test run that broke before reporting a failure counts as one.
const stepFailures = failures.filter((f) => f !== "tests").length +
  (failures.includes("tests") && (counts?.failed ?? 0) === 0 ? 1 : 0);
if (failures.length > 0) console.log(`\nfailed steps: ${failures.join(", ")}`);
console.log(summaryLine(counts, stepFailures));
Deno.exit(failures.length > 0 ? 1 : 0);

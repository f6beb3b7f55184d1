/**
 * `deno task test`: the one gate. Runs format check, lint, type check, every test (unit, interop
 * and doc examples), `deno doc --lint` and `deno publish --dry-run`, then prints
 * "N passed, N failed" from the JUnit report. Exits non-zero when anything failed.
 *
 * Extra arguments are passed to `deno test` (for example a file filter):
 * `deno task test tests/formats/`.
 * @module
 */
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
  })
    .output();
  if (code !== 0) failures.push(name);
  return code === 0;
}

const sources = ["mod.ts", "cli.ts"];
if (!quick && testArgs.length === 0) {
  await step("format", ["fmt", "--check"]);
  await step("lint", ["lint"]);
  await step("type check", ["check", "."]);
  await step("doc lint", ["doc", "--lint", ...sources]);
  await step("publish dry run", ["publish", "--dry-run", "--allow-dirty", "--quiet"]);
}

const junit = await Deno.makeTempFile({ prefix: "ckpt-junit-", suffix: ".xml" });
const targets = testArgs.length > 0
  ? testArgs
  : ["tests/", "formats/", "gpu/", "merge/", "pipelines/", "mod.ts", "errors.ts"];
await step("tests", ["test", "-A", "--doc", `--junit-path=${junit}`, ...targets]);

let passed = 0;
let failed = 0;
try {
  const xml = await Deno.readTextFile(junit);
  const root = xml.match(/<testsuites[^>]*>/)?.[0] ?? "";
  const total = Number(root.match(/\btests="(\d+)"/)?.[1] ?? 0);
  const fail = Number(root.match(/\bfailures="(\d+)"/)?.[1] ?? 0);
  const err = Number(root.match(/\berrors="(\d+)"/)?.[1] ?? 0);
  failed = fail + err;
  passed = total - failed;
} catch {
  failures.push("junit report missing");
}
await Deno.remove(junit).catch(() => {});
// Gate steps that failed count as failures too, so the summary never reads green when a step broke.
const gateFailures = failures.filter((f) => f !== "tests").length +
  (failures.includes("tests") && failed === 0 ? 1 : 0); // the test run broke before reporting a failure
if (failures.length > 0) console.log(`\nfailed steps: ${failures.join(", ")}`);
console.log(`${passed} passed, ${failed + gateFailures} failed`);
Deno.exit(failures.length > 0 ? 1 : 0);

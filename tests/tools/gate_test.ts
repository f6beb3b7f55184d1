/** The gate's counting and its one repeated flake (`tools/_gate.ts`), and `tools/test.ts` end to end. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { countJunit, isTeardownHeapAbort, summaryLine } from "../../tools/_gate.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";

/** A report as `deno test --junit-path` writes it (steps are test cases too). */
const REPORT = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="deno test" tests="7" failures="1" errors="0" time="0.031">
    <testsuite name="./a_test.ts" tests="7" disabled="3" errors="0" failures="1">
        <testcase name="a" classname="./a_test.ts" time="0.001" line="1" col="6">
        </testcase>
        <testcase name="b" classname="./a_test.ts" time="0.000" line="2" col="11">
            <skipped/>
        </testcase>
        <testcase name="c" classname="./a_test.ts" time="0.000" line="3" col="6">
            <skipped/>
        </testcase>
        <testcase name="d" classname="./a_test.ts" time="0.001" line="4" col="6">
        </testcase>
        <testcase name="e" classname="./a_test.ts" time="0.001" line="5" col="6">
            <failure message="Uncaught Error: x">Error: x &lt;skipped/&gt;
    at file:///tmp/a_test.ts:5:30</failure>
        </testcase>
        <testcase name="d &gt; s1" classname="./a_test.ts" time="0.000" line="4" col="39">
        </testcase>
        <testcase name="d &gt; s2" classname="./a_test.ts" time="0.000" line="4" col="69">
            <skipped/>
        </testcase>
    </testsuite>
</testsuites>
`;

Deno.test("countJunit() counts passed, failed and skipped cases, and refuses reports that do not add up", () => {
  assert.deepEqual(countJunit(REPORT), { passed: 3, failed: 1, skipped: 3 });
  // A filter that matches nothing: every case skipped, none passed.
  const filtered = `<testsuites name="deno test" tests="2" failures="0" errors="0">
    <testsuite name="./a_test.ts" tests="2" disabled="2" errors="0" failures="0">
        <testcase name="a" classname="./a_test.ts" line="1" col="6"><skipped/></testcase>
        <testcase name="b" classname="./a_test.ts" line="2" col="6"><skipped/></testcase>
    </testsuite>
</testsuites>`;
  assert.deepEqual(countJunit(filtered), { passed: 0, failed: 0, skipped: 2 });
  assert.deepEqual(
    countJunit(`<testsuites tests="1" failures="0" errors="1">
    <testcase name="x"><error message="boom"/></testcase></testsuites>`),
    {
      passed: 0,
      failed: 1,
      skipped: 0,
    },
  );
  // Cut short, or cases that do not match the root's totals: not a report to count from.
  assert.equal(countJunit(REPORT.slice(0, REPORT.indexOf("</testsuite>"))), undefined);
  assert.equal(countJunit(REPORT.replace('tests="7" failures', 'tests="8" failures')), undefined);
  assert.equal(countJunit(REPORT.replace('failures="1" errors', 'failures="0" errors')), undefined);
  assert.equal(countJunit(""), undefined);
});

const CLEAN =
  "a ... \x1b[32mok\x1b[0m (1ms)\n\n\x1b[32mok\x1b[0m | 696 passed (40 steps) | 0 failed (3m2s)\n\n";
const COUNTS = { passed: 736, failed: 0, skipped: 0 };
const ABRT = { code: 134, signal: "SIGABRT" };

Deno.test("isTeardownHeapAbort() matches only SIGABRT with glibc's heap message after a clean summary", () => {
  for (
    const msg of [
      "free(): invalid pointer",
      "double free or corruption (out)",
      "malloc(): corrupted top size",
      "corrupted size vs. prev_size",
      "munmap_chunk(): invalid pointer",
    ]
  ) {
    assert.ok(isTeardownHeapAbort(ABRT, CLEAN + msg + "\n", COUNTS), msg);
    assert.ok(isTeardownHeapAbort({ code: 134, signal: null }, CLEAN + msg, COUNTS), msg);
  }
  const heap = CLEAN + "free(): invalid pointer\n";
  const not: [string, boolean][] = [
    ["another signal", isTeardownHeapAbort({ code: 139, signal: "SIGSEGV" }, heap, COUNTS)],
    ["a plain non-zero exit", isTeardownHeapAbort({ code: 1, signal: null }, heap, COUNTS)],
    ["no heap message", isTeardownHeapAbort(ABRT, CLEAN, COUNTS)],
    [
      "a panic",
      isTeardownHeapAbort(ABRT, CLEAN + "thread 'main' panicked at x.rs:1\n", COUNTS),
    ],
    [
      "output beside the heap message",
      isTeardownHeapAbort(ABRT, heap + "error: Test failed\n", COUNTS),
    ],
    ["a failed test", isTeardownHeapAbort(ABRT, heap, { ...COUNTS, failed: 1 })],
    ["no report", isTeardownHeapAbort(ABRT, heap, undefined)],
    ["nothing passed", isTeardownHeapAbort(ABRT, heap, { passed: 0, failed: 0, skipped: 9 })],
    [
      "a summary with failures",
      isTeardownHeapAbort(ABRT, heap.replace("| 0 failed", "| 2 failed"), COUNTS),
    ],
    ["no summary", isTeardownHeapAbort(ABRT, "a ... ok\nfree(): invalid pointer\n", COUNTS)],
  ];
  assert.deepEqual(not.filter(([, v]) => v).map(([k]) => k), []);
});

Deno.test("summaryLine() keeps CI's `N passed, N failed` prefix and counts skips apart", () => {
  assert.equal(
    summaryLine({ passed: 696, failed: 0, skipped: 0 }, 0),
    "696 passed, 0 failed, 0 skipped",
  );
  assert.equal(
    summaryLine({ passed: 5, failed: 1, skipped: 2 }, 2),
    "5 passed, 3 failed, 2 skipped",
  );
  assert.equal(summaryLine(undefined, 1), "0 passed, 1 failed, 0 skipped");
  assert.match(
    summaryLine({ passed: 1, failed: 0, skipped: 0 }, 0),
    /^\d+ passed, \d+ failed(, |$)/,
  );
});

/** `deno run -A tools/test.ts ...args` from the repository root. */
async function gate(args: string[]): Promise<{ code: number; out: string; last: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tools/test.ts", ...args],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  const lines = new TextDecoder().decode(r.stdout).trim().split("\n");
  return { code: r.code, out, last: lines[lines.length - 1]! };
}

Deno.test("tools/test.ts counts ignored tests as skipped, fails when no test ran, and repeats no ordinary crash", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "gate_sample_test.ts");
    await Deno.writeTextFile(
      file,
      `Deno.test("runs", () => {});\nDeno.test.ignore("ignored", () => {});\n` +
        `Deno.test("steps", async (t) => { await t.step("one", () => {}); });\n`,
    );
    const ok = await gate([file]);
    assert.equal(ok.last, "3 passed, 0 failed, 1 skipped", ok.out);
    assert.equal(ok.code, 0);
    const none = await gate(["--filter", "matches-nothing", file]);
    assert.equal(none.last, "0 passed, 1 failed, 3 skipped", none.out);
    assert.equal(none.code, 1);
    assert.match(none.out, /failed steps: no test ran/);
    // An abort that is not glibc's heap error after a clean summary is not repeated.
    const crash = join(dir, "gate_crash_test.ts");
    await Deno.writeTextFile(
      crash,
      `Deno.test("runs", () => {});\n` +
        `globalThis.addEventListener("unload", () => { console.error("boom"); Deno.exit(3); });\n`,
    );
    const crashed = await gate([crash]);
    assert.equal(crashed.code, 1, crashed.out);
    assert.doesNotMatch(crashed.out, /repeated once/);
    assert.match(crashed.last, /^\d+ passed, [1-9]\d* failed, \d+ skipped$/);
  });
});

/**
 * The pure parts of the gate (`tools/test.ts`): counting a `deno test` JUnit report, recognising
 * the one teardown crash the gate repeats a run for, and the closing summary line. Tested in
 * `tests/tools/gate_test.ts`.
 * @module
 */

/** Test cases of a JUnit report (steps included, as Deno writes them), by outcome. */
export interface Counts {
  /** Ran and passed. */
  passed: number;
  /** Ran and failed (a `<failure>` or `<error>`). */
  failed: number;
  /** Did not run: ignored, or filtered out (`<skipped/>`). */
  skipped: number;
}

/**
 * Counts the `<testcase>`s of a `deno test --junit-path` report. Each case is passed, failed or
 * skipped, so the three add up to the report's `tests`; undefined when the report is not
 * complete (no `<testsuites>` root, or the cases do not add up to its `tests` and `failures`).
 */
export function countJunit(xml: string): Counts | undefined {
  const root = xml.match(/<testsuites\b[^>]*>/)?.[0];
  if (root === undefined || !xml.includes("</testsuites>")) return undefined;
  const tests = Number(root.match(/\btests="(\d+)"/)?.[1] ?? NaN);
  const failures = Number(root.match(/\bfailures="(\d+)"/)?.[1] ?? NaN);
  const errors = Number(root.match(/\berrors="(\d+)"/)?.[1] ?? 0);
  const counts: Counts = { passed: 0, failed: 0, skipped: 0 };
  for (const m of xml.matchAll(/<testcase\b[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const body = m[2] ?? "";
    if (/<(failure|error)\b/.test(body)) counts.failed++;
    else if (/<skipped\b/.test(body)) counts.skipped++;
    else counts.passed++;
  }
  const total = counts.passed + counts.failed + counts.skipped;
  if (total !== tests || counts.failed !== failures + errors) return undefined;
  return counts;
}

/**
 * glibc's messages for a corrupted heap, printed just before it aborts the process
 * (`free(): invalid pointer`, `double free or corruption (out)`, `malloc(): corrupted top size`,
 * `corrupted size vs. prev_size`, `munmap_chunk(): invalid pointer`).
 */
const HEAP_ABORT =
  /^(?:[a-z_]+\(\): (?:invalid|corrupted|unaligned|memory corruption|double free).*|double free or corruption.*|corrupted (?:size|double-linked list).*)$/;

/**
 * True only for the platform flake the gate repeats a run for: the `deno test` process was killed
 * by SIGABRT after a summary line with no failure, every test in a complete JUnit report passed or
 * was skipped, and everything printed after the summary is a glibc heap-corruption message. Any
 * other non-zero exit (a failed test, a panic, a timeout, another signal) is not repeated.
 */
export function isTeardownHeapAbort(
  status: { code: number; signal: string | null },
  tail: string,
  counts: Counts | undefined,
): boolean {
  if (status.signal !== "SIGABRT" && !(status.signal === null && status.code === 134)) {
    return false;
  }
  if (counts === undefined || counts.failed > 0 || counts.passed === 0) return false;
  // deno-lint-ignore no-control-regex
  const text = tail.replace(/\x1b\[[0-9;]*m/g, "");
  const summary = text.lastIndexOf("ok | ");
  if (summary < 0) return false;
  const [line = "", ...rest] = text.slice(summary).split("\n");
  if (!/^ok \| \d+ passed\b.* \| 0 failed\b/.test(line)) return false;
  const after = rest.map((l) => l.trim()).filter((l) => l !== "");
  return after.length > 0 && after.every((l) => HEAP_ABORT.test(l));
}

/**
 * The gate's closing line, `N passed, N failed, N skipped`: CI reads its `N passed, N failed`
 * prefix. `stepFailures` (gate steps that failed, a test run that broke without a report) count as
 * failures, so the line never reads green when something broke.
 */
export function summaryLine(counts: Counts | undefined, stepFailures: number): string {
  const c = counts ?? { passed: 0, failed: 0, skipped: 0 };
  return `${c.passed} passed, ${c.failed + stepFailures} failed, ${c.skipped} skipped`;
}

/**
 * `deno task bench latency`: the timings the tests no longer assert (tests bound work, benches
 * measure time): how long each file of the hostile torch corpus takes to load or be refused, how
 * long `watchOnce` takes to return after an abort during an export, and how regularly the terminal
 * renderer's ticker redraws a silent stage. Prints a Markdown table.
 *
 * Targets (what the tests used to assert): every hostile file under 2000 ms, an abort under 2 s,
 * at least 4 redraws in 80 ms with a 10 ms tick; a SIGTERM to `ckpt merge` at any moment after the
 * runtime starts ends it under 1000 ms with exit 130 (issue 13).
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { loadTorch } from "../formats/torch/load.ts";
import { createTtyRenderer } from "../pipelines/progress.ts";
import { parseWatchSettings } from "../pipelines/watch/config.ts";
import { type ExportRunner, watchOnce } from "../pipelines/watch/watch.ts";
import { mergeArgs } from "../tests/cli/_cli.ts";
import { age, halosCheckpoint, writeTree } from "../tests/pipelines/watch/_files.ts";
import { markdownTable, median } from "./_util.ts";

const rows: [string, number][] = [];

// The hostile corpus: every file, loaded (or refused) once.
const hostile = new URL("../tests/fixtures/torch/hostile/", import.meta.url).pathname;
const cases = JSON.parse(await Deno.readTextFile(join(hostile, "cases.json"))) as Record<
  string,
  string
>;
const times: [string, number][] = [];
for (const name of Object.keys(cases)) {
  const t0 = performance.now();
  try {
    await using f = await loadTorch(join(hostile, name));
    void f.value;
  } catch {
    // refused, as the tests check
  }
  times.push([name, performance.now() - t0]);
}
times.sort((a, b) => b[1] - a[1]);
rows.push([`hostile corpus: median of ${times.length} files`, median(times.map((t) => t[1]))]);
rows.push([`hostile corpus: slowest (${times[0]![0]})`, times[0]![1]]);

// watchOnce: abort 50 ms into an export that would take 30 s.
const runs = await Deno.makeTempDir({ prefix: "ckpt-bench-latency-" });
try {
  await writeTree(join(runs, "step-1"), halosCheckpoint(1));
  await age(runs, 120);
  const runner: ExportRunner = (job) =>
    new Promise((_, reject) => {
      const t = setTimeout(() => reject(new Error("not aborted")), 30_000);
      job.signal.addEventListener("abort", () => {
        clearTimeout(t);
        reject(new CkptError("ABORTED", "Cannot run: aborted"));
      }, { once: true });
    });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  const t0 = performance.now();
  const tick = await watchOnce({
    runsDir: runs,
    settings: parseWatchSettings({ quietSeconds: 30 }),
    runner,
    signal: ac.signal,
  });
  rows.push([
    `watchOnce returns after an abort at 50 ms (aborted: ${tick.aborted})`,
    performance.now() - t0 - 50,
  ]);
} finally {
  await Deno.remove(runs, { recursive: true });
}

// SIGTERM to a `ckpt merge` child (the demo run: a 150k-token tokenizer, so start-up, preflight,
// merge and write all take a while) at several moments after spawn: ms from the signal to the
// exit (target: under 1000, exit 130, no staging left).
{
  const { makeDemoRun } = await import("../examples/_demo_run.ts");
  const dir = await Deno.makeTempDir();
  try {
    const run = await makeDemoRun(join(dir, "run"), { size: "tiny" });
    const cli = new URL("../cli.ts", import.meta.url).pathname;
    for (const at of [50, 150, 300, 600, 1000, 1500, 2500]) {
      const out = join(dir, `out-${at}`);
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, ...mergeArgs(run, out, "--log", "quiet")],
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, at));
      const t0 = performance.now();
      try {
        child.kill("SIGTERM");
      } catch {
        // the tiny merge can end before the later signals: nothing to time
        const { code } = await child.status;
        console.log(`ckpt merge: finished (exit ${code}) before a SIGTERM ${at} ms after spawn`);
        continue;
      }
      const status = await child.status;
      const left = [...Deno.readDirSync(dir)].filter((e) => e.name.startsWith(".ckpt-")).length;
      rows.push([
        `ckpt merge: SIGTERM ${at} ms after spawn -> exit ${status.code}${
          left ? `, ${left} left behind` : ""
        }`,
        performance.now() - t0,
      ]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// The tty ticker: redraws of a silent stage in 80 ms with a 10 ms tick.
let writes = 0;
const render = createTtyRenderer(() => writes++, undefined, 100, 10);
render({ type: "pipeline-start", output: "/o", stages: ["slow"] });
render({ type: "stage-start", stage: "slow", index: 0 });
const before = writes;
await new Promise((r) => setTimeout(r, 80));
const redraws = writes - before;
render({ type: "stage-end", stage: "slow", index: 0, ms: 80 });
rows.push([`tty ticker: redraws in 80 ms at a 10 ms tick (count, not ms)`, redraws]);

console.log(
  markdownTable(
    ["measure", "ms"],
    rows.map(([k, v]) => [k, Number(v.toFixed(1))]),
  ),
);

/**
 * `deno task bench latency`: the timings the tests no longer assert (tests bound work, benches
 * measure time): how long each file of the hostile torch corpus takes to load or be refused, how
 * long `watchOnce` takes to return after an abort during an export, and how regularly the terminal
 * renderer's ticker redraws a silent stage. Prints a Markdown table.
 *
 * Targets (what the tests used to assert): every hostile file under 2000 ms, an abort under 2 s,
 * at least 4 redraws in 80 ms with a 10 ms tick.
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import { loadTorch } from "../formats/torch/load.ts";
import { createTtyRenderer } from "../pipelines/progress.ts";
import { parseWatchSettings } from "../pipelines/watch/config.ts";
import { type ExportRunner, watchOnce } from "../pipelines/watch/watch.ts";
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

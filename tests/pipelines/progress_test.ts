import assert from "node:assert/strict";
import {
  createJsonRenderer,
  createPlainRenderer,
  createRenderer,
  createTtyRenderer,
  formatBytes,
  formatDuration,
  progressLine,
} from "../../pipelines/progress.ts";

Deno.test("`formatBytes()` and `formatDuration()` read naturally", () => {
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(1_500), "1.50 KB");
  assert.equal(formatBytes(3_200_000_000), "3.20 GB");
  assert.equal(formatDuration(850), "850ms");
  assert.equal(formatDuration(12_340), "12.3s");
  assert.equal(formatDuration(245_000), "4m05s");
  assert.equal(formatDuration(3_720_000), "1h02m");
});

Deno.test("`progressLine()` shows bytes, percent, rate and ETA", () => {
  const line = progressLine(
    { name: "writeModel", index: 2, done: 250_000_000, total: 1_000_000_000, unit: "bytes" },
    7,
    5000,
    50_000_000,
  );
  assert.equal(line, "[3/7] writeModel  250 MB / 1.00 GB  25%  50.0 MB/s  ETA 15.0s");
});

Deno.test("`createJsonRenderer()` writes one JSON object per event, throttling progress", () => {
  const lines: string[] = [];
  let t = 0;
  const render = createJsonRenderer((l) => lines.push(l), () => new Date(t), 1000);
  render({ type: "stage-start", stage: "s", index: 0 });
  for (let i = 1; i <= 10; i++) {
    t += 300;
    render({ type: "progress", stage: "s", done: i, total: 10, unit: "files" });
  }
  render({ type: "stage-end", stage: "s", index: 0, ms: 3000 });
  const parsed = lines.map((l) => JSON.parse(l));
  assert.ok(parsed.every((p) => typeof p.ts === "string"));
  const progress = parsed.filter((p) => p.type === "progress").map((p) => p.done);
  assert.deepEqual(progress, [1, 5, 9, 10]);
  assert.equal(parsed[parsed.length - 1].type, "stage-end");
});

Deno.test("`createTtyRenderer()` rewrites one live line and ends each stage with its time", () => {
  let out = "";
  let t = 0;
  const render = createTtyRenderer((s) => (out += s), () => t, 100, 0);
  render({ type: "pipeline-start", output: "/o", stages: ["a"] });
  render({ type: "stage-start", stage: "a", index: 0 });
  t = 1000;
  render({ type: "progress", stage: "a", done: 1_000_000, total: 2_000_000, unit: "bytes" });
  t = 2000;
  render({ type: "stage-end", stage: "a", index: 0, ms: 2000 });
  render({ type: "pipeline-end", output: "/o", ms: 2000, manifestSha256: "ab".repeat(32) });
  assert.ok(out.includes("\r\x1b[2K[1/1] a  1.00 MB / 2.00 MB  50%  1.00 MB/s  ETA 1.0s"), out);
  assert.ok(out.includes("[1/1] a  2.00 MB  done in 2.0s\n"), out);
  assert.match(out, /done in 2.0s: \/o \(manifest sha256 abababab/);
});

Deno.test("`createRenderer()` picks JSON lines when not on a terminal", () => {
  let out = "";
  createRenderer("auto", (s) => (out += s), false)({ type: "stage-start", stage: "a", index: 0 });
  assert.equal(JSON.parse(out.trim()).type, "stage-start");
  out = "";
  createRenderer("quiet", (s) => (out += s), true)({ type: "stage-start", stage: "a", index: 0 });
  assert.equal(out, "");
});

Deno.test("`createPlainRenderer()` prints one escape-free line per finished stage", () => {
  let out = "";
  const render = createPlainRenderer((s) => (out += s));
  render({ type: "pipeline-start", output: "/o", stages: ["a", "b"] });
  render({ type: "stage-start", stage: "a", index: 0 });
  render({ type: "progress", stage: "a", done: 5, total: 10, unit: "files" });
  render({ type: "stage-end", stage: "a", index: 0, ms: 1500 });
  render({ type: "pipeline-error", code: "X", message: "Cannot go on: no", stage: "b" });
  assert.equal(out, "[1/2] a  10 files  1.5s\nfailed in b: [X] Cannot go on: no\n");
});

/** Replaces setInterval/clearInterval/Deno.unrefTimer while `fn` runs; the test fires the ticks. */
async function withFakeIntervals(
  fn: (
    timers: { fns: Map<number, [() => void, number]>; cleared: number[]; unref: number[] },
  ) => void | Promise<void>,
): Promise<void> {
  const timers = {
    fns: new Map<number, [() => void, number]>(),
    cleared: [] as number[],
    unref: [] as number[],
  };
  const saved = [globalThis.setInterval, globalThis.clearInterval, Deno.unrefTimer] as const;
  let next = 1000;
  globalThis.setInterval = ((f: () => void, ms: number) => {
    timers.fns.set(++next, [f, ms]);
    return next;
  }) as unknown as typeof setInterval;
  globalThis.clearInterval =
    ((id: number) => void timers.cleared.push(id)) as unknown as typeof clearInterval;
  Deno.unrefTimer = (id) => void timers.unref.push(id as number);
  try {
    await fn(timers);
  } finally {
    [globalThis.setInterval, globalThis.clearInterval, Deno.unrefTimer] = saved;
  }
}

Deno.test("`createTtyRenderer()` keeps a silent stage's elapsed time moving, then stops", async () => {
  await withFakeIntervals(({ fns, cleared, unref }) => {
    const writes: string[] = [];
    let t = 0;
    const render = createTtyRenderer((s) => writes.push(s), () => t, 100, 10);
    render({ type: "pipeline-start", output: "/o", stages: ["slow"] });
    render({ type: "stage-start", stage: "slow", index: 0 });
    assert.equal(writes.length, 2);
    // One unref'd interval of tickMs; each tick redraws the line with the elapsed time.
    assert.equal(fns.size, 1);
    const [id, [tick, ms]] = [...fns][0]!;
    assert.deepEqual([ms, unref], [10, [id]]);
    for (const at of [1500, 2500, 3500, 4500]) {
      t = at;
      tick();
    }
    assert.deepEqual(
      writes.slice(2),
      [1.5, 2.5, 3.5, 4.5].map((x) => `\r\x1b[2K[1/1] slow  ${x}s`),
    );
    render({ type: "stage-end", stage: "slow", index: 0, ms: 4500 });
    assert.deepEqual(cleared, [id]);
    const after = writes.length;
    tick(); // a tick already queued when the stage ended draws nothing
    assert.equal(writes.length, after);
  });
  await withFakeIntervals(({ fns }) => {
    createTtyRenderer(() => {}, () => 0, 100, 0)({ type: "stage-start", stage: "a", index: 0 });
    assert.equal(fns.size, 0, "tickMs 0 starts no ticker");
  });
});

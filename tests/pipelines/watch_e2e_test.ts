/**
 * End to end: a simulated training run writes checkpoints over time (one slowly, one that never
 * completes) while pairs of `ckpt watch` processes tick at once; the first watcher that starts an
 * export is killed (SIGKILL) midway. Every complete checkpoint must be exported exactly once, the
 * incomplete one never, every output must pass `ckpt verify`, and the state file must be consistent.
 * @module
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { loadState } from "../../pipelines/watch/state.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, spawnCkpt } from "../cli/_cli.ts";
import { age, safetensorsBytes, torchZipBytes } from "./watch/_files.ts";

interface Watcher {
  child: Deno.ChildProcess;
  lines: Record<string, unknown>[];
  done: Promise<Deno.CommandStatus>;
}

function spawnWatch(
  runs: string,
  config: string,
  onLine: (line: Record<string, unknown>, w: Watcher) => void = () => {},
): Watcher {
  const child = spawnCkpt([
    "watch",
    runs,
    "--config",
    config,
    "--log",
    "json",
    "--quiet-seconds",
    "1",
  ]);
  const w: Watcher = { child, lines: [], done: Promise.resolve({} as Deno.CommandStatus) };
  const reading = (async () => {
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        w.lines.push(line);
        onLine(line, w);
      }
    }
  })();
  const stderr = new Response(child.stderr).text();
  w.done = Promise.all([reading, stderr]).then(async ([, err]) => {
    const status = await child.status;
    if (!status.success && status.signal === null) console.error(err);
    return status;
  });
  return w;
}

/** A HALOs-style checkpoint's files, with weights big enough that an export takes a while. */
function checkpointFiles(counter: number, weightBytes: number): Record<string, Uint8Array> {
  const enc = new TextEncoder();
  return {
    "tokenizer.json": enc.encode(JSON.stringify({ version: "1.0", model: {} })),
    "tokenizer_config.json": enc.encode("{}"),
    "metrics.json": enc.encode(JSON.stringify({ counter, loss: 1 / (counter + 1) })),
    "optimizer.pt": torchZipBytes(),
    "scheduler.pt": torchZipBytes(),
    "config.json": enc.encode(JSON.stringify({ model_type: "llama", torch_dtype: "float32" })),
    "model.safetensors": safetensorsBytes(Math.ceil(weightBytes / 4)),
  };
}

async function writeCheckpoint(dir: string, files: Record<string, Uint8Array>): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) await Deno.writeFile(join(dir, name), bytes);
}

/**
 * Writes a checkpoint the way a slow save does: small files, then the weights in pieces; the last
 * piece waits for `beforeLast` (a watcher has seen the save unfinished), so that a watcher slow to
 * start on a loaded machine still finds it being written.
 */
async function writeSlowly(
  dir: string,
  files: Record<string, Uint8Array>,
  beforeLast: Promise<void>,
): Promise<void> {
  const { "model.safetensors": weights, ...rest } = files;
  await writeCheckpoint(dir, rest);
  const file = await Deno.open(join(dir, "model.safetensors"), { write: true, create: true });
  const piece = Math.ceil(weights!.length / 6);
  for (let off = 0; off < weights!.length; off += piece) {
    if (off + piece >= weights!.length) await beforeLast;
    await file.write(weights!.subarray(off, off + piece));
    await new Promise((r) => setTimeout(r, 250));
  }
  file.close();
}

const sha256 = async (path: string) =>
  createHash("sha256").update(await Deno.readFile(path)).digest("hex");

Deno.test("`ckpt watch` exports every complete checkpoint exactly once across overlapping, killed watchers", async () => {
  await withTempDir(async (root) => {
    const runs = join(root, "runs");
    const config = join(root, "export.jsonc");
    await Deno.writeTextFile(
      config,
      `{
        // the watch e2e pipeline: weights to bf16 safetensors, metrics, tokenizer
        "output": "\${run}/../exports/\${name}",
        "stages": [
          { "use": "gatherShards", "from": "\${checkpoint}" },
          { "use": "writeModel", "dtype": "bfloat16" },
          { "use": "writeMetrics", "from": "\${checkpoint}/metrics.json" },
          { "use": "writeTokenizer", "from": "\${checkpoint}", "validate": false },
        ],
        "watch": { "pattern": ["step-*", "FINAL"], "maxTries": 3 },
      }`,
    );
    // Saved before the watchers start: step-64 (complete, written a while ago) and step-192, which
    // stops after the optimizer (no weights): it must never be exported.
    await writeCheckpoint(join(runs, "step-64"), checkpointFiles(64, 24_000_000));
    await writeCheckpoint(join(runs, "step-192"), {
      "metrics.json": new TextEncoder().encode('{"counter": 192}'),
      "optimizer.pt": torchZipBytes(),
    });
    await age(runs, 60);
    const deadline = Date.now() + 40_000;
    // Released when a watcher reports step-128 unfinished, or at the deadline (the assertion on
    // that report below then fails).
    let seen128 = () => {};
    const seen = new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 40_000);
      seen128 = () => {
        clearTimeout(t);
        resolve();
      };
    });
    const slow = writeSlowly(join(runs, "step-128"), checkpointFiles(128, 1000), seen);
    let finalWritten = false;
    const training = slow.then(async () => {
      await writeCheckpoint(join(runs, "FINAL"), checkpointFiles(256, 1000));
      finalWritten = true;
    });

    const all: Watcher[] = [];
    let killed: Watcher | undefined;
    for (let round = 0; Date.now() < deadline; round++) {
      const onLine = (line: Record<string, unknown>, w: Watcher) => {
        if (line.checkpoint === "step-128" && line.event === "skipped-incomplete") seen128();
        if (round === 0 && !killed && line.event === "started") {
          killed = w;
          w.child.kill("SIGKILL");
        }
      };
      const pair = [spawnWatch(runs, config, onLine), spawnWatch(runs, config, onLine)];
      all.push(...pair);
      await Promise.all(pair.map((w) => w.done));
      const state = await loadState(runs);
      const done = ["step-64", "step-128", "FINAL"].every((n) =>
        state.checkpoints[n]?.status === "done"
      );
      if (done && finalWritten) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await training;
    // One more pair of ticks after everything settled: nothing may be exported again.
    const last = [spawnWatch(runs, config), spawnWatch(runs, config)];
    all.push(...last);
    for (const w of last) assert.equal((await w.done).code, 0);

    // A watcher was killed midway through an export.
    assert.ok(killed, "no watcher started an export in the first round");
    assert.equal((await killed.done).signal, "SIGKILL");
    const killedStarted = killed.lines.find((l) => l.event === "started")!;
    assert.ok(!killed.lines.some((l) => l.event === "done"));

    // Exactly once: one `done` per complete checkpoint across every watcher, none for step-192.
    const doneEvents = all.flatMap((w) => w.lines.filter((l) => l.event === "done"));
    assert.deepEqual(
      doneEvents.map((l) => l.checkpoint).sort(),
      ["FINAL", "step-128", "step-64"],
    );
    const events = all.flatMap((w) => w.lines);
    assert.ok(!events.some((l) => l.checkpoint === "step-192" && l.event === "started"));
    assert.ok(
      events.some((l) =>
        l.checkpoint === "step-192" && l.event === "skipped-incomplete" && l.reason === "no-weights"
      ),
    );
    // The slow one was seen while still being written and left alone.
    assert.ok(events.some((l) => l.checkpoint === "step-128" && l.event === "skipped-incomplete"));
    // The killed export was retried from scratch, replacing whatever the dead try left.
    const retry = events.find((l) =>
      l.event === "started" && l.checkpoint === killedStarted.checkpoint && l !== killedStarted
    );
    assert.ok(retry, "the killed export was not retried");
    assert.equal(retry.overwrite, true);

    // The state file is consistent with the outputs.
    const state = await loadState(runs);
    assert.equal(state.checkpoints["step-192"], undefined);
    for (const name of ["step-64", "step-128", "FINAL"]) {
      const rec = state.checkpoints[name]!;
      assert.equal(rec.status, "done");
      assert.equal(rec.output, join(root, "exports", name));
      assert.equal(rec.manifestSha256, await sha256(join(rec.output!, "ckpt-manifest.json")));
      const verify = await ckpt(["verify", rec.output!]);
      assert.equal(verify.code, 0, verify.stderr);
    }
    assert.equal(state.checkpoints[killedStarted.checkpoint as string]!.tries, 2);
    // No staging folder or temp file is left anywhere.
    const leftovers = (await Array.fromAsync(Deno.readDir(join(root, "exports"))))
      .map((e) => e.name).filter((n) => n.startsWith("."));
    assert.deepEqual(leftovers, []);
    const watchFiles = (await Array.fromAsync(Deno.readDir(join(runs, ".ckpt-watch"))))
      .map((e) => e.name).sort();
    assert.deepEqual(watchFiles, ["locks", "state.json", "state.lock"]);
  });
});

Deno.test("`ckpt watch` exits 0 on SIGTERM, aborting the export cleanly", async () => {
  await withTempDir(async (root) => {
    const runs = join(root, "runs");
    const config = join(root, "export.jsonc");
    await Deno.writeTextFile(
      config,
      JSON.stringify({
        output: "${run}/../exports/${name}",
        stages: [{ use: "gatherShards", from: "${checkpoint}" }, { use: "writeModel" }],
      }),
    );
    await writeCheckpoint(join(runs, "step-1"), checkpointFiles(1, 48_000_000));
    await age(runs, 60);
    const w = spawnWatch(runs, config, (line, w) => {
      if (line.event === "started") w.child.kill("SIGTERM");
    });
    const status = await w.done;
    assert.equal(status.code, 0);
    const rec = (await loadState(runs)).checkpoints["step-1"]!;
    // Either the export was aborted (no output, not counted as a try) or it had just finished.
    if (rec.status === "aborted") {
      assert.equal(rec.tries, 0);
      assert.ok(w.lines.some((l) => l.event === "aborted"));
      const exported = await Array.fromAsync(Deno.readDir(join(root, "exports"))).catch(() => []);
      assert.deepEqual(exported, []);
    } else assert.equal(rec.status, "done");
    const again = spawnWatch(runs, config);
    assert.equal((await again.done).code, 0);
    assert.equal((await loadState(runs)).checkpoints["step-1"]?.status, "done");
  });
});

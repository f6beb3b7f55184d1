/**
 * `deno task bench watch`: how long one `ckpt watch` tick takes on a runs folder with 1,000
 * checkpoint folders (HALOs-style: tokenizer, metrics.json, optimizer.pt, scheduler.pt, config,
 * model.safetensors). The export itself is a no-op runner, so the figures are the watcher's own
 * cost: scanning, completeness checks, locks and state writes.
 *
 * Cases: the first tick over 1,000 new complete folders; a steady-state tick (all 1,000 exported)
 * in-process and as a whole `ckpt watch` process; a tick where 1 new folder arrived; a tick where
 * all 1,000 are still being written (quiet period not over).
 * @module
 */
import { join } from "node:path";
import { parseWatchSettings } from "../pipelines/watch/config.ts";
import { type ExportRunner, watchOnce } from "../pipelines/watch/watch.ts";

const N = Number(Deno.args.find((a) => a.startsWith("--n="))?.slice(4) ?? 1000);

function safetensorsBytes(): Uint8Array {
  const header = new TextEncoder().encode(
    JSON.stringify({ w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }),
  );
  const out = new Uint8Array(8 + header.length + 16);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(header, 8);
  return out;
}

function zipBytes(): Uint8Array {
  const out = new Uint8Array(64);
  out.set([0x50, 0x4b, 0x03, 0x04]);
  new DataView(out.buffer).setUint32(42, 0x06054b50, true);
  return out;
}

async function makeCheckpoint(dir: string, counter: number, when: Date): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const files: Record<string, Uint8Array | string> = {
    "tokenizer.json": "{}",
    "tokenizer_config.json": "{}",
    "metrics.json": JSON.stringify({ counter }),
    "optimizer.pt": zipBytes(),
    "scheduler.pt": zipBytes(),
    "config.json": "{}",
    "model.safetensors": safetensorsBytes(),
  };
  for (const [name, c] of Object.entries(files)) {
    const p = join(dir, name);
    if (typeof c === "string") await Deno.writeTextFile(p, c);
    else await Deno.writeFile(p, c);
    await Deno.utime(p, when, when);
  }
  await Deno.utime(dir, when, when);
}

const noop: ExportRunner = async (job) => {
  const out = join(job.vars.run!, "..", "exports", job.vars.name!);
  await Deno.mkdir(out, { recursive: true });
  return { output: out, manifestSha256: undefined };
};

const root = await Deno.makeTempDir({ prefix: "ckpt-bench-watch-" });
const runs = join(root, "runs");
const rows: Array<[string, number]> = [];
try {
  const old = new Date(Date.now() - 3600_000);
  let t = performance.now();
  for (let i = 1; i <= N; i++) await makeCheckpoint(join(runs, `step-${i * 64}`), i * 64, old);
  console.log(
    `made ${N} checkpoint folders (${N * 7} files) in ${
      ((performance.now() - t) / 1000).toFixed(1)
    } s`,
  );
  const settings = parseWatchSettings({ quietSeconds: 30 });
  const tick = async (label: string) => {
    const t0 = performance.now();
    const s = await watchOnce({ runsDir: runs, settings, runner: noop });
    const ms = performance.now() - t0;
    rows.push([`${label} (exported ${s.exported.length}, incomplete ${s.incomplete.length})`, ms]);
    return s;
  };
  await tick(`first tick, ${N} new complete folders`);
  await tick(`steady state, ${N} exported`);
  await tick(`steady state, ${N} exported (again)`);
  await makeCheckpoint(join(runs, `step-${(N + 1) * 64}`), (N + 1) * 64, old);
  await tick(`1 new folder beside ${N} exported`);

  // Whole process, as cron runs it: deno start-up, config read, tick.
  const config = join(root, "export.jsonc");
  await Deno.writeTextFile(
    config,
    JSON.stringify({ output: "${run}/../exports/${name}", stages: [] }),
  );
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  for (let i = 0; i < 2; i++) {
    t = performance.now();
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "watch", runs, "--config", config, "--log", "json"],
      stdout: "null",
      stderr: "inherit",
    }).output();
    rows.push([`ckpt watch process, steady state (exit ${out.code})`, performance.now() - t]);
  }

  // All N folders still being written: every one is walked and found not quiet.
  const fresh = join(root, "fresh");
  const now = new Date();
  for (let i = 1; i <= N; i++) await makeCheckpoint(join(fresh, `step-${i * 64}`), i * 64, now);
  const t1 = performance.now();
  const s = await watchOnce({ runsDir: fresh, settings, runner: noop });
  rows.push([
    `${N} folders still being written (incomplete ${s.incomplete.length})`,
    performance.now() - t1,
  ]);

  console.log(`\n| tick on a runs folder with ${N} checkpoint folders | ms |`);
  console.log("|---|---:|");
  for (const [label, ms] of rows) console.log(`| ${label} | ${ms.toFixed(1)} |`);
} finally {
  await Deno.remove(root, { recursive: true });
}

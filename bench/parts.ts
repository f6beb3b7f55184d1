/**
 * `deno task bench parts`: one export split into parts (`ckpt run --part I/N`, then `--finish N`)
 * against the same export in one part and in one plain `ckpt run`, each a whole process on this
 * machine: 3 parts side by side vs 1 part. On a 2-core machine 3 parallel parts contend for the
 * same cores and disk, so the figure shows the split's overhead (process start, planning in every
 * part, receipts, the finish), not the speed-up N machines give.
 *
 * The input is the demo run (`--size=small`, 80 MB, or `--size=1gb`) with a LoRA adapter, written
 * as bf16 safetensors in `--shard=8MB` shards, with tokenizer, optimizer, scheduler and metrics.
 * `--rounds=N` (default 2): the best of N rounds is shown.
 * @module
 */
import { join } from "node:path";
import { makeDemoRun } from "../examples/_demo_run.ts";

const arg = (name: string, dflt: string) =>
  Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const size = arg("size", "small") as "small" | "1gb";
const shard = arg("shard", "8MB");
const rounds = Number(arg("rounds", "2"));
const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function ckpt(args: string[]): Promise<void> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args, "--log", "quiet"],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (r.code !== 0) {
    throw new Error(`ckpt ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

const dir = await Deno.makeTempDir({ prefix: "ckpt-bench-parts-" });
try {
  const run = await makeDemoRun(join(dir, "run"), { size });
  const cfg = join(dir, "export.jsonc");
  await Deno.writeTextFile(
    cfg,
    JSON.stringify({
      output: "run/OUT",
      stages: [
        { use: "gatherShards", from: "run/base" },
        { use: "mergeLora", adapter: "run/adapter" },
        { use: "writeModel", dtype: "bfloat16", maxShardSize: shard },
        { use: "writeTokenizer", padWithEos: true },
        {
          use: "writeOptim",
          optimizer: "run/state/optimizer.pt",
          scheduler: "run/state/scheduler.pt",
        },
        { use: "writeMetrics", from: "run/eval.json" },
      ],
    }),
  );
  const out = join(dir, "run", "OUT");
  const split = (n: number) => async () => {
    await Promise.all([...Array(n).keys()].map((i) => ckpt(["run", cfg, "--part", `${i}/${n}`])));
    await ckpt(["run", cfg, "--finish", String(n)]);
  };
  const jobs: Array<[string, () => Promise<void>]> = [
    ["ckpt run (one machine, no parts)", () => ckpt(["run", cfg])],
    ["1 part + finish", split(1)],
    ["3 parts side by side + finish", split(3)],
  ];
  const best = new Map<string, number>();
  for (let r = 0; r < rounds; r++) {
    for (const [name, fn] of jobs) {
      const s = await timed(fn);
      await Deno.remove(out, { recursive: true });
      best.set(name, Math.min(best.get(name) ?? Infinity, s));
    }
  }
  const load = await Deno.readTextFile("/proc/loadavg").catch(() => "?");
  console.log(
    `split export of the ${size} demo run (${(run.baseBytes / 1e6).toFixed(0)} MB base, ${shard} ` +
      `shards), best of ${rounds}, ${navigator.hardwareConcurrency} cores, load ${
        load.split(" ").slice(0, 3).join(" ")
      }`,
  );
  console.log("| job | wall | vs 1 part |");
  console.log("| --- | ---: | ---: |");
  const one = best.get("1 part + finish")!;
  for (const [name] of jobs) {
    const s = best.get(name)!;
    console.log(`| ${name} | ${s.toFixed(2)} s | ${(s / one).toFixed(2)}x |`);
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}

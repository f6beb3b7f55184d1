/**
 * `deno task bench e2e`: ckpt against what a user would do instead, every job in the same run, on
 * the model of issue 11 (Llama-shaped bf16, hidden 2048, intermediate 5632, 8 layers, vocab 32000,
 * untied lm_head: 1.08 GB; LoRA r=16 on all 7 projections, 411 M adapted weights):
 *
 * - copy: a plain 16 MiB-block copy of model.safetensors (`dd bs=16M` + `sync` of the file), the
 *   floor every ratio is against;
 * - gather: `ckpt gather base --out x` (no merge);
 * - merge: `ckpt merge --base --adapter --out x`, the whole process (start-up, merge, write, sha256
 *   manifest, fsyncs, rename);
 * - torch script: the 20-line torch 2.13 merge (`bench/e2e_torch.py script`), and PEFT's own path
 *   (`from_pretrained`, `PeftModel.from_pretrained`, `merge_and_unload`, `save_pretrained`),
 *   both through the hf peer (`deno task peers`);
 * - halos-final: the HALOs final-save preset (merge, pytorch_model.bin, tokenizer, optimizer,
 *   scheduler, metrics) of the demo run, against a copy of its input files;
 * - merge 4x: `ckpt merge` of a model with 4x the bytes (4x layers, 4x vocabulary), for memory.
 *
 * A first merge, not timed, fills `auto`'s calibration cache (measured once per machine), so the
 * rounds time what every later export pays. Every input is read once after it is built (ckpt's
 * writers bypass the page cache for large files), so each job starts from cached inputs, as a copy
 * of a file just read would.
 * Each job is its own process, timed from spawn to exit, its peak RSS from `/usr/bin/time`;
 * copy, gather and merge run `--rounds` times interleaved (default 2) and the best of each is
 * kept. Then the merge runs once more with the phase clock on and the bench prints where its time
 * went (read, merge, write, hash, fsync, waiting). Last, the hf peer checks the outputs: ckpt's
 * merged tensors within half a bf16 ulp plus fp32 slack of the float64 merge (the bound of
 * tests/merge), the torch script's within 1 ulp of ckpt's; the bench exits 1 when they are not.
 *
 * Options: `--rounds=N`, `--skip=peft,torch,halos,4x` (any of them), `--backend=auto|cpu|webgpu`,
 * `--keep` (leave the temporary folder). Everything is written under one folder in /tmp, removed
 * at the end.
 * @module
 */
import { join } from "node:path";
import { DEMO_SHAPES, makeDemoRun } from "../examples/_demo_run.ts";
import { findPeer } from "../tools/peers/peers.ts";
import { E2E_SHAPE, E2E_SHAPE_4X, makeE2eModel } from "./_e2e_model.ts";
import { type Job, phaseTable, ratioLines, resultTable } from "./_e2e_report.ts";
import { option } from "./_util.ts";

const rounds = Math.max(1, Number(option("rounds", "2")));
const skip = new Set(option("skip", "").split(",").filter(Boolean));
const backend = option("backend", "");
const keep = Deno.args.includes("--keep");
const REPO = new URL("..", import.meta.url).pathname;
const CLI = join(REPO, "cli.ts");
const TORCH_PY = join(REPO, "bench", "e2e_torch.py");
const TIME = "/usr/bin/time";
const hasTime = await Deno.stat(TIME).then(() => true, () => false);
const hf = skip.has("torch") && skip.has("peft") ? undefined : findPeer("hf")?.path;

/**
 * Runs `argv` as a measured process: wall from spawn to exit; peak RSS (KiB) and CPU seconds (user
 * + system, all threads) from time(1).
 */
async function measure(
  argv: string[],
  label: string,
): Promise<{ ms: number; rssKiB?: number; cpuS?: number }> {
  await new Deno.Command("sync").output(); // the previous job's writeback is not this job's
  const tfile = await Deno.makeTempFile({ dir: root, prefix: "time-" });
  const cmd = hasTime ? [TIME, "-f", "%M %U %S", "-o", tfile, ...argv] : argv;
  const t0 = performance.now();
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(`${label} failed (exit ${out.code}):\n${new TextDecoder().decode(out.stderr)}`);
  }
  const [rss, user, sys] = hasTime
    ? (await Deno.readTextFile(tfile)).trim().split("\n").pop()!.split(" ").map(Number)
    : [];
  await Deno.remove(tfile);
  return rss !== undefined && Number.isFinite(rss)
    ? { ms, rssKiB: rss, cpuS: user! + sys! }
    : { ms };
}

const deno = (args: string[]) => [Deno.execPath(), "run", "-A", ...args];
const ckpt = (args: string[]) => deno([CLI, ...args, ...(backend ? ["--backend", backend] : [])]);

async function fresh(dir: string): Promise<string> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  return dir;
}

const root = await Deno.makeTempDir({ dir: "/tmp", prefix: "ckpt-bench-e2e-" });
let failed = false;
try {
  const load = (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ")[0];
  console.log(
    `machine: ${navigator.hardwareConcurrency} cores (worker counts follow it), load ${load}; ` +
      `peak RSS ${hasTime ? "from /usr/bin/time" : "not measured (no /usr/bin/time)"}`,
  );
  let t = performance.now();
  const m = await makeE2eModel(join(root, "m1"), E2E_SHAPE);
  console.log(
    `model: ${(m.baseBytes / 1e9).toFixed(2)} GB bf16, ${(m.params / 1e6).toFixed(0)} M weights, ` +
      `${(m.adapted / 1e6).toFixed(0)} M adapted (r=16, 7 projections); built in ${
        ((performance.now() - t) / 1000).toFixed(1)
      } s`,
  );
  const src = join(m.base, "model.safetensors");
  // ckpt's writers bypass the page cache (direct I/O) for large files: read the inputs once, so
  // every job, the copy's first round included, starts from the same cached state
  const warm = (dir: string) =>
    measure(["sh", "-c", 'find "$1" -type f -exec cat {} + > /dev/null', "sh", dir], "warm-up");
  await warm(m.base);
  await warm(m.adapter);
  // `auto` measures both backends once per machine and caches the figures; a first, untimed merge
  // fills that cache, so the rounds time what every later export (a cron job's) pays
  const calibration = await measure(
    ckpt(["merge", "--base", m.base, "--adapter", m.adapter, "--out", join(root, "calibrate")]),
    "calibration merge",
  );
  await fresh(join(root, "calibrate"));
  console.log(
    `a first merge filled the calibration cache (untimed): ${(calibration.ms / 1000).toFixed(2)} s`,
  );
  const jobs: Job[] = [];
  const best = (name: string, r: { ms: number; rssKiB?: number; cpuS?: number }, note = "") => {
    const j = jobs.find((x) => x.name === name);
    if (!j) jobs.push({ name, ...r, note });
    else if (r.ms < j.ms) Object.assign(j, r);
  };
  const o = (n: string) => join(root, n);
  for (let r = 0; r < rounds; r++) {
    const copyDst = await fresh(o("copy.safetensors"));
    best(
      "copy",
      await measure(
        ["sh", "-c", `dd if="$1" of="$2" bs=16M status=none && sync "$2"`, "sh", src, copyDst],
        "copy",
      ),
      "dd bs=16M + sync of model.safetensors",
    );
    best(
      "gather",
      await measure(ckpt(["gather", m.base, "--out", await fresh(o("gather"))]), "gather"),
    );
    best(
      "merge",
      await measure(
        ckpt(["merge", "--base", m.base, "--adapter", m.adapter, "--out", await fresh(o("merge"))]),
        "ckpt merge",
      ),
    );
  }
  await fresh(o("copy.safetensors"));
  await fresh(o("gather"));
  const manifest = JSON.parse(await Deno.readTextFile(join(o("merge"), "ckpt-manifest.json")));
  jobs.find((j) => j.name === "merge")!.note = `backend ${manifest.backend}`;
  if (hf && !skip.has("torch")) {
    await Deno.mkdir(o("torch"));
    best(
      "torch script",
      await measure([hf, "python", TORCH_PY, "script", m.base, m.adapter, o("torch")], "torch"),
      "torch 2.13: load_file, W + s*(B@A) in f32, save_file",
    );
  }
  if (hf && !skip.has("peft")) {
    best(
      "PEFT merge_and_unload",
      await measure([hf, "python", TORCH_PY, "peft", m.base, m.adapter, o("peft")], "peft"),
      "peft 0.21 + transformers 5.17, bf16",
    );
  }
  if (!hf && !(skip.has("torch") && skip.has("peft"))) {
    console.log("hf peer missing: torch jobs skipped (run `deno task peers`)");
  }

  // where the merge's time goes (a separate, instrumented run of the same pipeline)
  const phases = JSON.parse(
    new TextDecoder().decode(
      (await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          join(REPO, "bench", "_e2e_child.ts"),
          m.base,
          m.adapter,
          await fresh(o("phases")),
          ...(backend ? [backend] : []),
        ],
        stdout: "piped",
        stderr: "null",
      }).output()).stdout,
    ).trim().split("\n").pop()!,
  );
  await fresh(o("phases"));

  // exactness: ckpt against float64 and against the torch script (and PEFT)
  let check: Record<string, unknown> | undefined;
  if (hf && !skip.has("torch")) {
    const args = [TORCH_PY, "check", m.base, m.adapter, o("merge"), o("torch")];
    if (!skip.has("peft")) args.push(o("peft"));
    const out = await new Deno.Command(hf, {
      args: ["python", ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const line = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
    try {
      check = JSON.parse(line);
    } catch {
      console.error(new TextDecoder().decode(out.stderr));
    }
    if (!out.success) failed = true;
  }
  for (const d of ["merge", "torch", "peft"]) await fresh(o(d));
  await fresh(m.base);
  await fresh(m.adapter);

  if (!skip.has("halos")) {
    t = performance.now();
    const run = await makeDemoRun(o("run"), { size: "1gb" });
    await warm(run.dir);
    console.log(
      `halos run: demo "1gb" (${JSON.stringify(DEMO_SHAPES["1gb"])}), built in ${
        ((performance.now() - t) / 1000).toFixed(1)
      } s`,
    );
    for (let r = 0; r < rounds; r++) {
      const dst = await fresh(o("run-copy"));
      const c = await measure(
        ["sh", "-c", `cp -r "$1" "$2" && find "$2" -type f -exec sync {} +`, "sh", run.dir, dst],
        "copy run",
      );
      best("copy of the halos run", c, "cp -r + sync of every file");
      best(
        "halos-final",
        await measure(
          ckpt([
            "run",
            "halos-final",
            "--var",
            `run=${run.dir}`,
            "--var",
            `out=${await fresh(o("FINAL"))}`,
          ]),
          "halos-final",
        ),
        "merge + pytorch_model.bin + tokenizer + optimizer",
      );
    }
    await fresh(o("run-copy"));
    await fresh(o("FINAL"));
    await fresh(o("run"));
  }

  if (!skip.has("4x")) {
    t = performance.now();
    const m4 = await makeE2eModel(o("m4"), E2E_SHAPE_4X);
    console.log(
      `4x model: ${(m4.baseBytes / 1e9).toFixed(2)} GB, built in ${
        ((performance.now() - t) / 1000).toFixed(1)
      } s`,
    );
    await warm(m4.base);
    await warm(m4.adapter);
    best(
      "merge 4x model",
      await measure(
        ckpt([
          "merge",
          "--base",
          m4.base,
          "--adapter",
          m4.adapter,
          "--out",
          await fresh(o("m4out")),
        ]),
        "ckpt merge 4x",
      ),
      `${(m4.baseBytes / 1e9).toFixed(2)} GB`,
    );
    await fresh(o("m4out"));
    await fresh(o("m4"));
  }

  console.log("");
  console.log(resultTable(jobs));
  console.log("");
  for (const line of ratioLines(jobs)) console.log(line);
  console.log("");
  console.log(phaseTable(phases));
  if (check) {
    console.log("");
    console.log(`outputs: ${JSON.stringify(check)}`);
  }
  if (failed) console.log("\nFAILED: an output differs beyond the bound (see above)");
} finally {
  if (keep) console.log(`kept ${root}`);
  else await Deno.remove(root, { recursive: true });
}
if (failed) Deno.exit(1);

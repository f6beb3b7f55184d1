/**
 * `deno task bench gather`: a ~1 GB bf16 model sharded over 4 ranks as a real
 * torch.distributed.checkpoint folder (written once by `bench/gather_make.py` through the torch
 * peer, cached under `--dir`), gathered and written as safetensors, beside a plain Deno
 * read-then-write copy of the same `.distcp` bytes with a 16 MiB buffer. Each measurement runs in
 * its own child process (its peak RSS, VmHWM, is its own) after a `sync`; times exclude fsync.
 *
 * Rows: `copy` (the floor), `gather (library)` = `openDcpStateDict` + `writeSafetensorsSharded`
 * (5 GB shards), and `ckpt gather` = the whole CLI path through the runner (staging folder,
 * manifest with sha256 of every output file).
 *
 * Options: `--rounds=2`, `--dir=/tmp/ckpt-bench-gather`, `--regen` (rewrite the input).
 * Target: gather at least 0.7x the copy's throughput, peak RSS under 512 MiB.
 * @module
 */
import { join } from "node:path";
import { openDcpStateDict } from "../formats/dcp.ts";
import { writeSafetensorsSharded } from "../formats/safetensors.ts";
import { formatSize } from "../formats/size.ts";
import { BLOCK, copyPlain, markdownTable, measureChild, option, peakRssBytes } from "./_util.ts";
import { findPeer } from "../tools/peers/peers.ts";

async function distcpFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".distcp")) out.push(e.name);
  return out.sort();
}

/** Child: plain copy of every .distcp file with a reused 16 MiB buffer. */
async function copyAll(src: string, dst: string): Promise<number> {
  const buf = new Uint8Array(BLOCK);
  let bytes = 0;
  await Deno.mkdir(dst, { recursive: true });
  for (const name of await distcpFiles(src)) {
    bytes += await copyPlain(join(src, name), join(dst, name), buf);
  }
  return bytes;
}

/** Child: gather the DCP folder and write safetensors. */
async function gatherLibrary(src: string, dst: string): Promise<number> {
  await Deno.mkdir(dst, { recursive: true });
  await using sd = await openDcpStateDict(src);
  await writeSafetensorsSharded(dst, sd, { maxShardSize: 5e9 });
  return sd.totalBytes();
}

/** Child: the `ckpt gather` command. */
async function gatherCli(src: string, dst: string): Promise<number> {
  const { run } = await import("../cli/gather.ts");
  const code = await run([src, "--out", dst, "--log", "quiet"]);
  if (code !== 0) throw new Error(`ckpt gather exited ${code}`);
  let bytes = 0;
  for await (const e of Deno.readDir(dst)) {
    if (e.name.endsWith(".safetensors")) bytes += (await Deno.stat(join(dst, e.name))).size;
  }
  return bytes;
}

async function child(mode: string, src: string, dst: string): Promise<void> {
  let sampled = 0;
  const timer = setInterval(() => (sampled = Math.max(sampled, Deno.memoryUsage().rss)), 5);
  const t0 = performance.now();
  const bytes = mode === "copy"
    ? await copyAll(src, dst)
    : mode === "library"
    ? await gatherLibrary(src, dst)
    : await gatherCli(src, dst);
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(timer);
  console.log(JSON.stringify({ seconds, bytes, hwm: peakRssBytes(), sampled }));
}

async function ensureInput(dir: string): Promise<string> {
  const dcp = join(dir, "dcp");
  const ready = await Deno.stat(join(dcp, ".metadata")).then(() => true, () => false);
  if (ready && !Deno.args.includes("--regen")) return dcp;
  await Deno.remove(dcp, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  const peer = findPeer("torch26")?.path;
  if (!peer) throw new Error("the torch26 peer is missing: run 'deno task peers'");
  const script = new URL("./gather_make.py", import.meta.url).pathname;
  console.log(`writing the 4-rank DCP input with torch (${peer}) ...`);
  const proc = new Deno.Command(peer, {
    args: ["bash", "-c", `USE_LIBUV=0 timeout 300 python3 ${script} ${dcp}`],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const out = await proc.output();
  // The metadata file is written last: its presence means the checkpoint is complete even if a
  // rank lingers at shutdown.
  const done = await Deno.stat(join(dcp, ".metadata")).then(() => true, () => false);
  if (!done) {
    throw new Error(
      `gather_make.py failed (exit ${out.code}): ${
        new TextDecoder().decode(out.stderr).slice(-2000)
      }`,
    );
  }
  return dcp;
}

interface Measured {
  seconds: number;
  bytes: number;
  hwm: number;
  sampled: number;
}

async function measure(mode: string, src: string, dst: string): Promise<Measured> {
  await Deno.remove(dst, { recursive: true }).catch(() => {});
  const r = await measureChild<Measured>(import.meta.filename!, mode, src, dst);
  await Deno.remove(dst, { recursive: true }).catch(() => {});
  return r;
}

async function main(): Promise<void> {
  const at = Deno.args.indexOf("--child");
  if (at >= 0) {
    const [mode, src, dst] = Deno.args.slice(at + 1);
    await child(mode!, src!, dst!);
    return;
  }
  const dir = option("dir", "/tmp/ckpt-bench-gather");
  const rounds = Number(option("rounds", "2"));
  const src = await ensureInput(dir);
  const files = await distcpFiles(src);
  let inputBytes = 0;
  for (const f of files) inputBytes += (await Deno.stat(join(src, f))).size;
  console.log(
    `input: ${src}, ${files.length} rank files, ${formatSize(inputBytes)} (${inputBytes} bytes)`,
  );
  const modes = [["copy", "copy"], ["library", "gather (library)"], [
    "cli",
    "ckpt gather",
  ]] as const;
  const best = new Map<string, { seconds: number; bytes: number; hwm: number }>();
  for (let r = 0; r < rounds; r++) {
    for (const [mode] of modes) {
      const m = await measure(mode, src, join(dir, `out-${mode}`));
      const prev = best.get(mode);
      if (!prev || m.seconds < prev.seconds) best.set(mode, m);
      console.log(
        `  round ${r + 1} ${mode}: ${m.seconds.toFixed(2)} s, peak ${formatSize(m.hwm)}`,
      );
    }
  }
  const copy = best.get("copy")!;
  const copyRate = copy.bytes / copy.seconds;
  console.log("");
  console.log(markdownTable(
    ["what", "bytes", "best time", "throughput", "vs copy", "peak RSS"],
    modes.map(([mode, label]) => {
      const m = best.get(mode)!;
      const rate = m.bytes / m.seconds;
      return [
        label,
        formatSize(m.bytes),
        `${m.seconds.toFixed(2)} s`,
        `${formatSize(rate)}/s`,
        `${(rate / copyRate).toFixed(2)}x`,
        formatSize(m.hwm),
      ];
    }),
  ));
  console.log("\ntarget: gather >= 0.70x the copy's throughput, peak RSS < 512 MiB");
}

await main();

/**
 * Child process of `bench/diff.ts`: runs one measured job and prints a JSON line with its wall time
 * and the process's peak resident memory (VmHWM), so each job's memory is its own.
 *
 * `deno run -A bench/_diff_child.ts diff <A> <B> [adapter-for-B]` or `... read <A> <B>` (the floor:
 * both weights files streamed once in 16 MiB blocks, nothing compared).
 * @module
 */
import { join } from "node:path";
import { diffStateDicts } from "../pipelines/diff/diff.ts";
import { openDiffInput } from "../pipelines/diff/open.ts";
import { BLOCK, peakRssBytes } from "./_util.ts";

async function readAll(dir: string): Promise<number> {
  let bytes = 0;
  const buf = new Uint8Array(BLOCK);
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".safetensors")) continue;
    using f = await Deno.open(join(dir, e.name));
    for (;;) {
      const n = await f.read(buf);
      if (n === null || n === 0) break;
      bytes += n;
    }
  }
  return bytes;
}

const [job, a, b, adapter] = Deno.args;
const t0 = performance.now();
let equal: boolean | undefined;
let differing = 0;
if (job === "diff") {
  const sa = await openDiffInput(a!);
  const sb = await openDiffInput(b!, { adapter, backend: "cpu" });
  const report = await diffStateDicts(sa.stateDict, sb.stateDict);
  equal = report.equal;
  differing = report.totals.differing;
  await sa.stateDict.close();
  await sb.stateDict.close();
} else if (job === "read") {
  await readAll(a!);
  await readAll(b!);
} else {
  console.error("usage: _diff_child.ts diff <A> <B> [adapter] | read <A> <B>");
  Deno.exit(2);
}
console.log(
  JSON.stringify({ job, ms: performance.now() - t0, peakRss: peakRssBytes(), equal, differing }),
);

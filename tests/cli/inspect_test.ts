import assert from "node:assert/strict";
import { join } from "node:path";
import { renderReport } from "../../cli/inspect.ts";
import { inspectPath } from "../../readers/inspect.ts";
import { ckpt } from "./_cli.ts";

const FIXTURES = new URL("../fixtures/safetensors/", import.meta.url).pathname;

Deno.test("`renderReport()` prints tensors, files, totals and metadata", async () => {
  const text = renderReport(await inspectPath(join(FIXTURES, "sharded")));
  assert.match(text, /hf-shards, 5 tensors, 192 B \(192 bytes\) in 3 files/);
  assert.match(
    text,
    /lm_head\.weight\s+BF16\s+\[8, 4\]\s+64 B\s+model-00003-of-00003\.safetensors/,
  );
  assert.match(text, /metadata: .*"format":"pt"/);
  assert.match(text, /by dtype: BF16 192 B/);
  const limited = renderReport(await inspectPath(join(FIXTURES, "all_dtypes.safetensors")), 2);
  assert.match(limited, /\.\.\. 14 more tensors/);
});

Deno.test("`ckpt inspect` prints JSON, and fails clearly on bad input and bad usage", async () => {
  const ok = await ckpt(["inspect", join(FIXTURES, "all_dtypes.safetensors"), "--json"]);
  assert.equal(ok.code, 0, ok.stderr);
  const report = JSON.parse(ok.stdout);
  assert.equal(report.kind, "safetensors");
  assert.equal(report.tensors.length, 16);
  const bad = await ckpt(["inspect", join(FIXTURES, "hostile", "trailing_bytes.safetensors")]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /\[SAFETENSORS_TRAILING\] Cannot read safetensors ".*trailing_bytes/);
  const usage = await ckpt(["inspect"]);
  assert.equal(usage.code, 2);
  const limit = await ckpt(["inspect", FIXTURES, "--limit", "x"]);
  assert.equal(limit.code, 2);
});

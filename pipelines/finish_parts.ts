/**
 * The finish of a split export (`ckpt run <config> --finish N`): with the output's lock held
 * exclusively (no part can be running), reads the N receipts, checks that every part finished
 * (`PARTS_MISSING`, `PART_FAILED` naming them), that they followed one weight plan and that every
 * planned shard is in the receipt of the part it belongs to, exactly once (`PARTS_MISMATCH`);
 * writes the shard index from the plan and the manifest from the receipts (sizes and sha256 the
 * parts computed while writing: no weight is read again), checks the folder holds exactly those
 * files, and renames it into place as a one-machine run does. The result equals the one-machine
 * output byte for byte; the manifest differs only in its timings, `createdAt` and a `split` record
 * (id, count, and each part's host and time).
 *
 * A finish on an output this split already finished does nothing. A finish that fails after its
 * manifest is written (the rename refused, say) leaves the folder whole; the next finish renames
 * it.
 * @module
 */
import { join } from "node:path";
import { CkptError } from "../errors.ts";
import type { PipelineConfig, RawConfig } from "./config.ts";
import {
  buildManifest,
  type Manifest,
  MANIFEST_NAME,
  type ManifestStage,
  readManifest,
  writeManifest,
} from "./manifest.ts";
import { sha256Hex } from "./hashing.ts";
import { assignParts, checkSplittable, leadPart, splitId } from "./split.ts";
import { OutputLock } from "./_output_lock.ts";
import { configInfo, errorEvent, resolveConfig, runError, safeEmitter } from "./_run_shared.ts";
import {
  type PartFailure,
  type PartReceipt,
  readFailure,
  readReceipt,
  SPLIT_DIR,
  splitFolder,
  type StageGather,
} from "./_split_receipts.ts";
import { round1, signalsPolled } from "./_stage_loop.ts";
import { exists, fsCall, StagingFolder } from "./_staging.ts";
import type { RunOptions } from "./run.ts";
import { finishedBySplit } from "./run_part.ts";

/** Options of {@linkcode finishParts}: the runner's, less `dryRun` and `backend`, plus the count. */
export interface FinishOptions extends Omit<RunOptions, "dryRun" | "backend"> {
  /** How many parts the export was split into. */
  count: number;
}

/** The `split` record a finished manifest carries. */
export interface SplitRecord {
  /** The split export's id. */
  id: string;
  /** How many parts. */
  count: number;
  /** Each part: where and how long it ran, how many files it wrote. */
  parts: Array<{ part: number; host: string; ms: number; files: number }>;
}

/** What {@linkcode finishParts} resolves to. */
export interface FinishResult {
  /** Absolute output folder. */
  output: string;
  /** `finished`, or `already-finished` when the output was in place already. */
  status: "finished" | "already-finished";
  /** sha256 of the manifest written (empty when already finished). */
  manifestSha256: string;
  /** The manifest written, or the one in place. */
  manifest: Manifest & { split?: SplitRecord };
  /** Wall time in ms. */
  ms: number;
}

/** The receipts of all `count` parts; `PART_FAILED` / `PARTS_MISSING` naming the parts without. */
async function allReceipts(folder: string, id: string, count: number): Promise<PartReceipt[]> {
  const receipts: PartReceipt[] = [];
  const missing: number[] = [];
  const failed: PartFailure[] = [];
  for (let i = 0; i < count; i++) {
    const r = await readReceipt(folder, id, i, count);
    if (r) {
      receipts.push(r);
      continue;
    }
    const f = await readFailure(folder, i, count);
    if (f) failed.push(f);
    else missing.push(i);
  }
  if (failed.length === 0 && missing.length === 0) return receipts;
  const lines = failed.map((f) =>
    `part ${f.part} failed on ${f.host} at ${f.at}: [${f.code}] ${f.message}`
  );
  if (missing.length > 0) {
    lines.push(
      `part${missing.length === 1 ? "" : "s"} ${missing.join(", ")} ha${
        missing.length === 1 ? "s" : "ve"
      } no receipt (not run yet, or killed)`,
    );
  }
  const message = `Cannot finish the ${count}-part export: ${lines.join("; ")}; rerun ${
    failed.length + missing.length === 1 ? "it" : "them"
  } with --part I/${count}`;
  const details = { file: folder, details: { failed: failed.map((f) => f.part), missing } };
  if (failed.length > 0) throw new CkptError("PART_FAILED", message, details);
  throw new CkptError("PARTS_MISSING", message, details);
}

/**
 * Checks every part ran the same ckpt version on the same inputs: each input a part recorded has
 * the size and modification time the lead part saw (a checkpoint rewritten while the parts ran
 * would mix two models), `PARTS_MISMATCH` naming the part and the input.
 */
function checkSameInputs(receipts: readonly PartReceipt[], count: number): void {
  const lead = receipts[leadPart(count)]!;
  const seen = new Map(lead.inputs.map((i) => [`${i.role}\0${i.path}`, i]));
  for (const r of receipts) {
    if (r.ckpt !== lead.ckpt) {
      throw new CkptError(
        "PARTS_MISMATCH",
        `Cannot finish the ${count}-part export: part ${r.part} was written by ckpt ${r.ckpt}, ` +
          `part ${lead.part} by ckpt ${lead.ckpt}; rerun the parts with one version`,
        { details: { parts: [r.part, lead.part] } },
      );
    }
    for (const i of r.inputs) {
      const l = seen.get(`${i.role}\0${i.path}`);
      if (l && (l.size !== i.size || l.mtime !== i.mtime)) {
        throw new CkptError(
          "PARTS_MISMATCH",
          `Cannot finish the ${count}-part export: the input "${i.path}" (${i.role}) changed ` +
            `between parts: part ${r.part} saw ${i.size ?? "?"} bytes modified ${
              i.mtime ?? "?"
            }, ` +
            `part ${lead.part} ${l.size ?? "?"} bytes modified ${l.mtime ?? "?"}; rerun the parts`,
          { file: i.path, details: { parts: [r.part, lead.part] } },
        );
      }
    }
  }
}

/**
 * Checks the receipts agree and cover the plan: one weight plan in all; every shared file in the
 * receipt of the part the plan gives it; no file in two receipts. Resolves to every file's digest.
 */
function checkCoverage(
  receipts: readonly PartReceipt[],
  count: number,
): Map<string, { size: number; sha256: string; stage: string; part: number }> {
  const lead = receipts[leadPart(count)]!;
  const plan = JSON.stringify(lead.plans);
  const differ = receipts.filter((r) => JSON.stringify(r.plans) !== plan).map((r) => r.part);
  if (differ.length > 0) {
    throw new CkptError(
      "PARTS_MISMATCH",
      `Cannot finish the ${count}-part export: part${differ.length === 1 ? "" : "s"} ${
        differ.join(", ")
      } planned other weight files than part ${lead.part} (the input changed between parts?); ` +
        `remove their receipts and rerun them`,
      { details: { parts: differ } },
    );
  }
  const files = new Map<string, { size: number; sha256: string; stage: string; part: number }>();
  for (const r of receipts) {
    for (const f of r.files) {
      const prev = files.get(f.path);
      if (prev) {
        throw new CkptError(
          "PARTS_MISMATCH",
          `Cannot finish the ${count}-part export: "${f.path}" was written by part ${prev.part} ` +
            `and by part ${r.part}`,
          { tensor: f.path, details: { parts: [prev.part, r.part] } },
        );
      }
      files.set(f.path, { size: f.size, sha256: f.sha256, stage: f.stage, part: r.part });
    }
  }
  for (const p of lead.plans) {
    const owner = assignParts(p.shared, count);
    p.shared.forEach((f, i) => {
      const got = files.get(f.path);
      if (got?.part !== owner[i]) {
        throw new CkptError(
          "PARTS_MISMATCH",
          `Cannot finish the ${count}-part export: "${f.path}" belongs to part ${owner[i]}, but ${
            got ? `part ${got.part} wrote it` : "no part wrote it"
          }`,
          { details: { file: f.path, part: owner[i] } },
        );
      }
    });
  }
  return files;
}

/**
 * The lead part's stage reports with each recorded plan's `files` made whole (the one-machine
 * report's list, with the sizes the parts wrote).
 */
function wholeStages(
  receipts: readonly PartReceipt[],
  lead: PartReceipt,
  sizeOf: (path: string) => number,
): ManifestStage[] {
  const stages: ManifestStage[] = structuredClone(lead.stages ?? []);
  for (const p of lead.plans) {
    const stage = stages.find((s) => s.index === p.stage);
    if (stage) stage.report.files = p.files.map((path) => ({ path, bytes: sizeOf(path) }));
  }
  for (const g of lead.gathered) {
    const stage = stages.find((s) => s.index === g.stage);
    if (stage) stage.report[g.key] = joinGathered(receipts, g);
  }
  return stages;
}

/**
 * Every part's items of one gathered report key, in the one-machine order; an item several parts
 * measured (the tied embeddings each part compares) must be the same in all (`PARTS_MISMATCH`).
 */
function joinGathered(receipts: readonly PartReceipt[], g: StageGather): unknown[] {
  const byName = new Map<string, { item: unknown; part: number }>();
  for (const r of receipts) {
    const mine = r.gathered.find((x) => x.stage === g.stage && x.key === g.key);
    for (const item of mine?.items ?? []) {
      const name = String((item as Record<string, unknown>)?.[g.by]);
      const prev = byName.get(name);
      if (prev && JSON.stringify(prev.item) !== JSON.stringify(item)) {
        throw new CkptError(
          "PARTS_MISMATCH",
          `Cannot finish the ${r.count}-part export: parts ${prev.part} and ${r.part} measured ` +
            `"${name}" differently (${g.key})`,
          { tensor: name, details: { parts: [prev.part, r.part], key: g.key } },
        );
      }
      if (!prev) byName.set(name, { item, part: r.part });
    }
  }
  const rank = new Map(g.order.map((name, i) => [name, i]));
  const last = g.order.length; // unknown names after the known ones, in the order found
  return [...byName].sort(([a], [b]) => (rank.get(a) ?? last) - (rank.get(b) ?? last))
    .map(([, v]) => v.item);
}

/**
 * Finishes a split export of `count` parts; see the module doc. Errors: `PARTS_MISSING`,
 * `PART_FAILED`, `PARTS_MISMATCH`, `SPLIT_STAGE`, `OUTPUT_LOCKED` (a part or another run holds
 * the output; `wait` waits), `OUTPUT_EXISTS`, `OUTPUT_NOT_CKPT`, `STAGING_UNREPORTED`,
 * `STAGING_MISMATCH` and `FS_*` codes.
 */
export async function finishParts(
  config: PipelineConfig | RawConfig | string,
  options: FinishOptions,
): Promise<FinishResult> {
  const t0 = performance.now();
  const cfg = await resolveConfig(config, options);
  const count = options.count;
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new CkptError("PART_SPEC", `Cannot finish ${count} parts: expected a positive count`);
  }
  checkSplittable(cfg);
  const id = splitId(cfg, count);
  const output = cfg.output;
  const folder = splitFolder(output, id);
  const signal = options.signal ?? new AbortController().signal;
  const emit = safeEmitter(options.onEvent);
  emit({ type: "pipeline-start", output, stages: [`finish ${count} parts`] });
  let lock: OutputLock | undefined;
  let staging: StagingFolder | undefined;
  // a process that exits mid-finish (the CLI's grace timer) leaves the parts' work, not its lock
  const onUnload = () => lock?.releaseSync();
  globalThis.addEventListener("unload", onUnload);
  try {
    lock = await OutputLock.acquire(output, {
      wait: options.wait ?? false,
      signal,
      purpose: `finishing the ${count}-part export of ${output}`,
    });
    if (!(await exists(folder)) && await finishedBySplit(output, id)) {
      const manifest = await readManifest(output);
      return { output, status: "already-finished", manifestSha256: "", manifest, ms: 0 };
    }
    if (!(await exists(folder))) {
      throw new CkptError(
        "PARTS_MISSING",
        `Cannot finish the ${count}-part export of "${output}": no part has run (no folder ` +
          `"${folder}"; the parts must run with the same config, variables and count)`,
        { file: folder, details: { missing: [...Array(count).keys()] } },
      );
    }
    staging = await StagingFolder.adopt(output, folder);
    let manifest: Manifest & { split?: SplitRecord };
    let manifestSha256: string;
    if (!(await exists(join(folder, SPLIT_DIR))) && await exists(join(folder, MANIFEST_NAME))) {
      // An earlier finish wrote everything but could not rename: check and rename.
      manifest = await readManifest(folder);
      if (manifest.split?.id !== id) {
        throw new CkptError(
          "PARTS_MISMATCH",
          `Cannot finish "${folder}": its manifest is not this split's`,
          {
            file: folder,
          },
        );
      }
      await staging.seal(manifest.files.map((f) => ({ path: f.path, bytes: f.size, stage: "" })));
      manifestSha256 = sha256Hex(await Deno.readFile(join(folder, MANIFEST_NAME)));
    } else {
      ({ manifest, manifestSha256 } = await assemble(staging, folder, id, count, cfg, t0));
    }
    await staging.syncFolders(manifest.files.map((f) => f.path));
    await signalsPolled();
    if (signal.aborted) throw new CkptError("ABORTED", "Cannot finish the parts: aborted");
    await staging.commit({ overwrite: options.overwrite ?? false, force: options.force ?? false });
    const ms = performance.now() - t0;
    emit({ type: "pipeline-end", output, ms: round1(ms), manifestSha256 });
    return { output, status: "finished", manifestSha256, manifest, ms };
  } catch (err) {
    const e = runError(err, signal, output);
    emit(errorEvent(e, undefined));
    throw e;
  } finally {
    staging?.release();
    globalThis.removeEventListener("unload", onUnload);
    await lock?.release().catch(() => {});
  }
}

/** Checks the receipts, writes the index and the manifest, removes the bookkeeping. */
async function assemble(
  staging: StagingFolder,
  folder: string,
  id: string,
  count: number,
  cfg: PipelineConfig,
  t0: number,
): Promise<{ manifest: Manifest & { split: SplitRecord }; manifestSha256: string }> {
  const receipts = await allReceipts(folder, id, count);
  checkSameInputs(receipts, count);
  const files = checkCoverage(receipts, count);
  const lead = receipts[leadPart(count)]!;
  for (const p of lead.plans) {
    if (!p.index) continue;
    const bytes = new TextEncoder().encode(p.index.text);
    const path = join(folder, p.index.path);
    await fsCall("write", "write the shard index", path, async () => {
      const f = await Deno.open(path, { write: true, create: true, truncate: true });
      try {
        let off = 0;
        while (off < bytes.length) off += await f.write(bytes.subarray(off));
        await f.sync();
      } finally {
        f.close();
      }
    });
    const stage = lead.stages?.find((s) => s.index === p.stage)?.name ?? "";
    files.set(p.index.path, { size: bytes.length, sha256: sha256Hex(bytes), stage, part: -1 });
  }
  const reported = [...files].map(([path, f]) => ({ path, bytes: f.size, stage: f.stage }));
  const paths = await staging.seal(reported, new Set([SPLIT_DIR]));
  const stages = wholeStages(receipts, lead, (path) => files.get(path)?.size ?? 0);
  const built = await buildManifest(folder, {
    output: cfg.output,
    config: configInfo(cfg),
    inputs: lead.inputs,
    stages,
    totalMs: Math.round(Math.max(...receipts.map((r) => r.ms)) + performance.now() - t0),
    files: paths,
    hasher: (abs) => {
      const f = files.get(abs.slice(folder.length + 1));
      if (!f) throw new CkptError("STAGING_MISMATCH", `Cannot hash "${abs}": no part wrote it`);
      return Promise.resolve({ size: f.size, sha256: f.sha256 });
    },
  });
  const manifest = {
    ...built,
    split: {
      id,
      count,
      parts: receipts.map((r) => ({ part: r.part, host: r.host, ms: r.ms, files: r.files.length })),
    },
  };
  const manifestSha256 = await writeManifest(folder, manifest);
  await fsCall(
    "remove",
    "remove the parts' receipts",
    join(folder, SPLIT_DIR),
    () => Deno.remove(join(folder, SPLIT_DIR), { recursive: true }),
  );
  return { manifest, manifestSha256 };
}

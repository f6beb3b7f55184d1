/**
 * The shared folder of a split export and what each part leaves in it.
 *
 * Names (beside the output, `<key>` as in `_staging.ts`, `<id>` from `split.ts`'s `splitId`):
 *
 * - `.ckpt-parts-<key>-<id>/`: the folder every part moves its finished files into and the finish
 *   renames into place. A one-machine run never removes it (its name is not a staging name), so
 *   finished parts survive anything but a person deleting it.
 * - `.ckpt-parts-<key>-<id>/.ckpt-split/`: the bookkeeping, removed by the finish before the rename:
 *   - `part-0000I-of-0000N/`: part I's own work folder while it runs (removed when it ends);
 *   - `part-0000I-of-0000N.lock`: `flock`ed by part I while it runs (`PART_RUNNING` for a second);
 *   - `part-0000I-of-0000N.json`: part I's receipt, written last, after its files are in place;
 *   - `part-0000I-of-0000N.failed.json`: why part I failed, when it failed with an error.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { CkptError } from "../errors.ts";
import { osError } from "../errors/os.ts";
import type { ManifestFile, ManifestInput, ManifestStage } from "./manifest.ts";
import type { PartGather, PartPlan } from "./stage.ts";
import { partName } from "./split.ts";
import { outputKey } from "./_staging.ts";

/** Name of the bookkeeping folder inside the shared folder. */
export const SPLIT_DIR = ".ckpt-split";

/** The shared folder of split export `id` of `output`. */
export function splitFolder(output: string, id: string): string {
  return join(dirname(output), `.ckpt-parts-${outputKey(basename(output))}-${id}`);
}

/** Paths of part `index` of `count` inside the shared folder `folder`. */
export function partPaths(folder: string, index: number, count: number): {
  work: string;
  lock: string;
  receipt: string;
  failed: string;
} {
  const stem = join(folder, SPLIT_DIR, partName(index, count));
  return {
    work: stem,
    lock: `${stem}.lock`,
    receipt: `${stem}.json`,
    failed: `${stem}.failed.json`,
  };
}

/** A weight plan one stage recorded in a part, with the stage's position. */
export type StagePlan = PartPlan & { stage: number };

/** A report key one stage measured per part, with this part's items (see `PartContext.gather`). */
export type StageGather = PartGather & { stage: number; items: unknown[] };

/** What a part leaves when it finished: its files and hashes, and the plan it followed. */
export interface PartReceipt {
  format: "ckpt-part-receipt";
  version: 1;
  /** The split export's id (`splitId`). */
  split: string;
  part: number;
  count: number;
  /** True for the part that ran the one-part stages. */
  lead: boolean;
  host: string;
  pid: number;
  startedAt: string;
  finishedAt: string;
  ms: number;
  /** The weight plans recorded by the every-part stages (equal in every part). */
  plans: StagePlan[];
  /** The report keys this part measured for its share (joined by the finish). */
  gathered: StageGather[];
  /** The files this part wrote, with size and sha256 (hashed while written). */
  files: Array<ManifestFile & { stage: string }>;
  /** Lead part only: every stage's timing and report, as the manifest lists them. */
  stages?: ManifestStage[];
  /** The inputs this part's stages recorded (size and mtime when known; the lead's go in the manifest). */
  inputs: ManifestInput[];
  /** The ckpt version that wrote the part (all parts must be the same). */
  ckpt: string;
}

/** What a part leaves when it failed with an error. */
export interface PartFailure {
  format: "ckpt-part-failure";
  part: number;
  count: number;
  host: string;
  pid: number;
  at: string;
  code: string;
  message: string;
}

const ReceiptSchema = z.looseObject({
  format: z.literal("ckpt-part-receipt"),
  version: z.literal(1),
  split: z.string(),
  part: z.number().int().nonnegative(),
  count: z.number().int().positive(),
  lead: z.boolean(),
  host: z.string(),
  ms: z.number(),
  plans: z.array(z.looseObject({
    stage: z.number().int(),
    files: z.array(z.string()),
    shared: z.array(z.object({ path: z.string(), bytes: z.number() })),
    index: z.object({ path: z.string(), text: z.string() }).optional(),
  })),
  gathered: z.array(z.looseObject({
    stage: z.number().int(),
    key: z.string(),
    by: z.string(),
    order: z.array(z.string()),
    items: z.array(z.unknown()),
  })),
  files: z.array(z.looseObject({
    path: z.string().min(1),
    size: z.number().int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    stage: z.string(),
  })),
  stages: z.array(
    z.looseObject({
      name: z.string(),
      index: z.number(),
      report: z.record(z.string(), z.unknown()),
    }),
  ).optional(),
  inputs: z.array(z.looseObject({ path: z.string(), role: z.string() })),
  ckpt: z.string(),
});

/** Writes `value` as JSON to `path` atomically and durably (temporary file, fsync, rename). */
export async function writeJsonDurably(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const bytes = new TextEncoder().encode(JSON.stringify(value, null, 2) + "\n");
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
    const dir = await Deno.open(dirname(path), { read: true });
    try {
      await dir.sync();
    } finally {
      dir.close();
    }
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw osError(err, "write", path);
  }
}

async function readJson(path: string): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw osError(err, "read", path);
  }
  try {
    return JSON.parse(text);
  } catch {
    return null; // torn or foreign: treated as no receipt by the callers
  }
}

/**
 * Part `index`'s receipt in `folder`, or undefined when it has none. A receipt that does not
 * parse, or names another split, part or count, is `PARTS_MISMATCH` naming the file.
 */
export async function readReceipt(
  folder: string,
  id: string,
  index: number,
  count: number,
): Promise<PartReceipt | undefined> {
  const path = partPaths(folder, index, count).receipt;
  const raw = await readJson(path);
  if (raw === undefined) return undefined;
  const parsed = ReceiptSchema.safeParse(raw);
  // The receipt as written (the schema only checks it: its key order is the manifest's).
  const r = parsed.success ? raw as PartReceipt : undefined;
  if (!r || r.split !== id || r.part !== index || r.count !== count) {
    throw new CkptError(
      "PARTS_MISMATCH",
      `Cannot use the receipt of part ${index} of ${count} ("${path}"): ${
        r
          ? `it says it is part ${r.part} of ${r.count} of split ${r.split}, not ${index} of ${count} of ${id}`
          : "it is not a ckpt part receipt"
      } (remove it and rerun the part)`,
      { file: path, details: { part: index } },
    );
  }
  return r;
}

/** Part `index`'s failure record, when its last run failed with an error. */
export async function readFailure(
  folder: string,
  index: number,
  count: number,
): Promise<PartFailure | undefined> {
  const raw = await readJson(partPaths(folder, index, count).failed);
  if (raw === undefined || raw === null || typeof raw !== "object") return undefined;
  const f = raw as PartFailure;
  return f.format === "ckpt-part-failure" ? f : undefined;
}

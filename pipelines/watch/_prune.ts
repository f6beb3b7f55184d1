/**
 * Retention for `ckpt watch`: once a newer export is done, the outputs of older exports beyond
 * `keep` are deleted, never a folder without a manifest or one that holds an input.
 * @module
 */
import { isAbsolute, join, relative, resolve } from "node:path";
import { CkptError } from "../../errors.ts";
import { MANIFEST_NAME } from "../manifest.ts";
import { errorText, type EventBody } from "./events.ts";
import { type CheckpointFolder, compareCheckpoints, stepOf } from "./scan.ts";
import { updateState, type WatchState } from "./state.ts";

/**
 * Retention: keeps the `keep` newest done exports; deletes the outputs of older ones, but only
 * those older than `current` (a newer export was just verified), only folders that hold a
 * {@linkcode MANIFEST_NAME}, and never a folder that is or contains an input or the runs folder.
 */
export async function prune(
  current: CheckpointFolder,
  runsDir: string,
  keep: number,
  emit: (e: EventBody) => void,
): Promise<WatchState> {
  const victims: { name: string; output: string }[] = [];
  const inputs: string[] = [];
  const state = await updateState(runsDir, (s) => {
    inputs.push(...Object.keys(s.checkpoints).map((name) => resolve(runsDir, name)));
    const live = Object.entries(s.checkpoints)
      .filter(([, r]) => r.status === "done" && r.output && !r.pruned)
      .map(([name, r]) => ({ name, r, cp: { name, path: "", step: r.step ?? stepOf(name) } }))
      .sort((a, b) => compareCheckpoints(a.cp, b.cp));
    const old = live.slice(0, Math.max(0, live.length - keep));
    const cur = { name: current.name, path: "", step: current.step };
    for (const v of old) {
      if (compareCheckpoints(v.cp, cur) >= 0) continue;
      v.r.pruned = true;
      v.r.prunedAt = new Date().toISOString();
      victims.push({ name: v.name, output: v.r.output! });
    }
    return s;
  });
  for (const v of victims) {
    try {
      await removeExport(v.output, runsDir, inputs);
      emit({ event: "pruned", checkpoint: v.name, output: v.output });
    } catch (err) {
      const { code, message } = errorText(err);
      emit({ event: "prune-failed", checkpoint: v.name, output: v.output, code, message });
    }
  }
  return state;
}

async function removeExport(output: string, runsDir: string, inputs: string[]): Promise<void> {
  const out = resolve(output);
  const contains = (parent: string, child: string): boolean => {
    const rel = relative(parent, child);
    return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
  };
  const guarded = [resolve(runsDir), ...inputs].find((p) => contains(out, p));
  if (guarded !== undefined) {
    throw new CkptError("WATCH_PRUNE", `Cannot delete "${out}": it contains input "${guarded}"`, {
      file: out,
    });
  }
  try {
    await Deno.lstat(join(out, MANIFEST_NAME));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      // Already gone (deleted by hand) is fine; a folder without a manifest is not ours to delete.
      if (await Deno.lstat(out).then(() => true, () => false)) {
        throw new CkptError("WATCH_PRUNE", `Cannot delete "${out}": it holds no ${MANIFEST_NAME}`, {
          file: out,
        });
      }
      return;
    }
    throw err;
  }
  await Deno.remove(out, { recursive: true });
}

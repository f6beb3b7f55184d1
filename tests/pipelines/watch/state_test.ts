import assert from "node:assert/strict";
import { loadState, saveState, statePath, updateState } from "../../../pipelines/watch/state.ts";
import { withTempDir } from "../../_helpers/tmp.ts";

Deno.test("`loadState()` returns an empty state when there is none", async () => {
  await withTempDir(async (runs) => {
    const s = await loadState(runs);
    assert.deepEqual(s.checkpoints, {});
  });
});

Deno.test("`loadState()` rejects a corrupt state file with WATCH_STATE", async () => {
  await withTempDir(async (runs) => {
    await Deno.mkdir(`${runs}/.ckpt-watch`);
    await Deno.writeTextFile(statePath(runs), "{ half");
    await assert.rejects(
      loadState(runs),
      (e: unknown) => (e as { code?: string }).code === "WATCH_STATE",
    );
    await Deno.writeTextFile(statePath(runs), JSON.stringify({ version: 99, checkpoints: {} }));
    await assert.rejects(
      loadState(runs),
      (e: unknown) => (e as { code?: string }).code === "WATCH_STATE",
    );
  });
});

Deno.test("`saveState()` replaces the file atomically and leaves no temp files", async () => {
  await withTempDir(async (runs) => {
    const s = await loadState(runs);
    s.checkpoints["step-1"] = { status: "done", tries: 1 };
    await saveState(runs, s);
    s.checkpoints["step-2"] = { status: "error", tries: 2, error: { code: "X", message: "m" } };
    await saveState(runs, s);
    const names = (await Array.fromAsync(Deno.readDir(`${runs}/.ckpt-watch`))).map((e) => e.name);
    assert.deepEqual(names, ["state.json"]);
    assert.deepEqual(Object.keys((await loadState(runs)).checkpoints), ["step-1", "step-2"]);
  });
});

Deno.test("`updateState()` never loses concurrent updates", async () => {
  await withTempDir(async (runs) => {
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        updateState(runs, (s) => {
          s.checkpoints[`step-${i}`] = { status: "done", tries: 1 };
        })),
    );
    assert.equal(Object.keys((await loadState(runs)).checkpoints).length, 20);
  });
});

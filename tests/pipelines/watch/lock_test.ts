import assert from "node:assert/strict";
import { FileLock, isLocked, readLockHolder } from "../../../pipelines/watch/lock.ts";
import { withTempDir } from "../../_helpers/tmp.ts";

const HOLDER = new URL("./_hold_lock.ts", import.meta.url).pathname;

function spawnHolder(path: string): { child: Deno.ChildProcess; firstLine: Promise<string> } {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HOLDER, path],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const firstLine = (async () => {
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    reader.releaseLock();
    return text.trim();
  })();
  return { child, firstLine };
}

Deno.test("`FileLock.tryAcquire()` excludes a second holder in the same process", async () => {
  await withTempDir(async (dir) => {
    const a = await FileLock.tryAcquire(`${dir}/locks/a.lock`, "first");
    assert.ok(a);
    assert.equal(await FileLock.tryAcquire(`${dir}/locks/a.lock`), null);
    assert.equal(await isLocked(`${dir}/locks/a.lock`), true);
    assert.equal((await readLockHolder(`${dir}/locks/a.lock`))?.pid, Deno.pid);
    await a.release();
    await a.release();
    assert.equal(await isLocked(`${dir}/locks/a.lock`), false);
  });
});

Deno.test("`FileLock` excludes another process and is freed when that process is killed", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/x.lock`;
    const { child, firstLine } = spawnHolder(path);
    try {
      assert.equal(await firstLine, "locked");
      assert.equal(await FileLock.tryAcquire(path), null);
      const holder = await readLockHolder(path);
      assert.equal(holder?.pid, child.pid);
      assert.equal(holder?.purpose, "test-holder");
      // A second process cannot take it either.
      const second = spawnHolder(path);
      assert.equal(await second.firstLine, "busy");
      await second.child.stdin.close();
      await second.child.status;
    } finally {
      child.kill("SIGKILL");
      await child.status;
      await child.stdin.close().catch(() => {});
    }
    // The kernel dropped the dead holder's lock: no stale-lock guessing needed.
    const lock = await FileLock.tryAcquire(path);
    assert.ok(lock);
    await lock.release();
  });
});

Deno.test("`FileLock.acquire()` times out with WATCH_LOCK_TIMEOUT and honours the signal", async () => {
  await withTempDir(async (dir) => {
    const held = await FileLock.tryAcquire(`${dir}/s.lock`);
    assert.ok(held);
    await assert.rejects(
      FileLock.acquire(`${dir}/s.lock`, { timeoutMs: 60, pollMs: 10 }),
      (e: unknown) => (e as { code?: string }).code === "WATCH_LOCK_TIMEOUT",
    );
    const ac = new AbortController();
    ac.abort(new Error("stop"));
    await assert.rejects(FileLock.acquire(`${dir}/s.lock`, { signal: ac.signal }), /stop/);
    await held.release();
    const again = await FileLock.acquire(`${dir}/s.lock`, { timeoutMs: 100 });
    await again.release();
  });
});

Deno.test("`FileLock.tryAcquire()` recreates a lock file removed by hand", async () => {
  await withTempDir(async (dir) => {
    const a = await FileLock.tryAcquire(`${dir}/r.lock`);
    assert.ok(a);
    await a.release();
    await Deno.remove(`${dir}/r.lock`);
    const b = await FileLock.tryAcquire(`${dir}/r.lock`);
    assert.ok(b);
    assert.equal(await FileLock.tryAcquire(`${dir}/r.lock`), null);
    await b.release();
  });
});

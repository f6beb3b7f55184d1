/**
 * Test helper process: takes the lock named by argv[0], prints "locked" (or "busy") and waits until
 * killed or until stdin closes.
 * @module
 */
import { FileLock } from "../../../pipelines/watch/lock.ts";

const lock = await FileLock.tryAcquire(Deno.args[0]!, "test-holder");
console.log(lock ? "locked" : "busy");
if (lock) {
  for await (const _ of Deno.stdin.readable) { /* wait for stdin to close */ }
  await lock.release();
}

/**
 * A direct I/O worker that fails, for tests of how the direct sink (`formats/_file_sink.ts`)
 * lives through its worker's death: the real worker (`formats/_direct_file_worker.ts`), which
 * opens the file as it always does, but the first "write" or "finish" it is sent throws out of
 * its message handler, uncaught, as a bug or a crash in the worker would.
 * @module
 */
import "../../formats/_direct_file_worker.ts";

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<{ op: string }>) => void) | null;
};
const real = scope.onmessage!;

scope.onmessage = (e) => {
  if (e.data.op === "write" || e.data.op === "finish") {
    throw new Error(`the test worker fails at "${e.data.op}"`);
  }
  real(e);
};

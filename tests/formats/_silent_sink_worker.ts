/**
 * A direct I/O worker for tests of a failed write (`formats/_file_sink.ts`): its first "write" is
 * answered with an `ENOSPC` error, as a full disk answers, and no later "write" is answered at all,
 * as writes still queued in the device would not be; every other request succeeds.
 * @module
 */
const scope = self as unknown as {
  onmessage: ((e: MessageEvent<{ id: number; op: string }>) => void) | null;
  postMessage(message: unknown): void;
};

let writes = 0;
scope.onmessage = (e) => {
  const m = e.data;
  if (m.op !== "write") return scope.postMessage({ id: m.id, ok: true, direct: true });
  if (writes++ > 0) return; // never answered
  scope.postMessage({ id: m.id, error: { message: "no space left on device", code: "ENOSPC" } });
};

/**
 * A direct I/O worker for the test of the sink's background syncs on a disk that is behind
 * (`formats/_file_sink.ts`): it writes nothing, and answers a "write" only once six are waiting
 * (the oldest then), so the sink always has five writes queued, more than half its ring. A message
 * `{ op: "drain" }` from the test answers every waiting write and ends the holding. Every other
 * request succeeds at once.
 * @module
 */
const scope = self as unknown as {
  onmessage: ((e: MessageEvent<{ id: number; op: string }>) => void) | null;
  postMessage(message: unknown): void;
};

const waiting: number[] = [];
let holding = true;
scope.onmessage = (e) => {
  const m = e.data;
  if (m.op === "drain") {
    holding = false;
    for (const id of waiting.splice(0)) scope.postMessage({ id, ok: true });
    return;
  }
  if (m.op !== "write") return scope.postMessage({ id: m.id, ok: true, direct: true });
  if (!holding) return scope.postMessage({ id: m.id, ok: true });
  waiting.push(m.id);
  if (waiting.length >= 6) scope.postMessage({ id: waiting.shift()!, ok: true });
};

/**
 * Worker that hashes files for the manifest off the main thread, so the runner can hash a stage's
 * outputs while the next stages run. Messages: `{ id, path }` in, `{ id, size, sha256 }` or
 * `{ id, error }` out.
 * @module
 */
import { hashFile } from "./manifest.ts";

interface HashRequest {
  id: number;
  path: string;
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<HashRequest>) => void) | null;
  postMessage(message: unknown): void;
};

scope.onmessage = async (e) => {
  const { id, path } = e.data;
  try {
    const { size, sha256 } = await hashFile(path);
    scope.postMessage({ id, size, sha256 });
  } catch (err) {
    scope.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
};

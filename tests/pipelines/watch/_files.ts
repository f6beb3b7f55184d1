/**
 * Test helpers: tiny files shaped like what a training run writes (a safetensors file, a torch zip),
 * and a way to age a folder's mtimes past the quiet period.
 * @module
 */
import { join } from "node:path";

/** Bytes of a safetensors file holding one F32 tensor of `n` values. */
export function safetensorsBytes(n = 4): Uint8Array {
  const header = new TextEncoder().encode(
    JSON.stringify({
      __metadata__: { format: "pt" },
      w: { dtype: "F32", shape: [n], data_offsets: [0, 4 * n] },
    }),
  );
  const out = new Uint8Array(8 + header.length + 4 * n);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(header, 8);
  return out;
}

/** Bytes shaped like a torch zip: local header magic first, end-of-central-directory last. */
export function torchZipBytes(): Uint8Array {
  const out = new Uint8Array(64);
  out.set([0x50, 0x4b, 0x03, 0x04], 0);
  const eocd = out.length - 22;
  new DataView(out.buffer).setUint32(eocd, 0x06054b50, true);
  return out;
}

/** Writes `files` (relative path -> bytes or text) under `dir`. */
export async function writeTree(
  dir: string,
  files: Record<string, Uint8Array | string>,
): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    const path = join(dir, rel);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    if (typeof content === "string") await Deno.writeTextFile(path, content);
    else await Deno.writeFile(path, content);
  }
}

/** Sets the mtime of everything under (and including) `dir` to `secondsAgo` seconds ago. */
export async function age(dir: string, secondsAgo: number): Promise<void> {
  const t = new Date(Date.now() - secondsAgo * 1000);
  const walk = async (d: string): Promise<void> => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (e.isDirectory) await walk(p);
      await Deno.utime(p, t, t);
    }
  };
  await walk(dir);
  await Deno.utime(dir, t, t);
}

/** A complete HALOs-style checkpoint: tokenizer, metrics, optimizer, scheduler, weights. */
export function halosCheckpoint(counter: number): Record<string, Uint8Array | string> {
  return {
    "tokenizer.json": "{}",
    "tokenizer_config.json": "{}",
    "metrics.json": JSON.stringify({ counter }),
    "optimizer.pt": torchZipBytes(),
    "scheduler.pt": torchZipBytes(),
    "config.json": "{}",
    "model.safetensors": safetensorsBytes(),
  };
}

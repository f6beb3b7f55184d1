/**
 * `auto`'s calibration: when a WebGPU adapter is at hand, both backends merge the same synthetic
 * blocks (bf16, the adapter's rank and column count, about 8 MiB of W each, two in flight, transfers
 * included, as the merge transform feeds them) and the faster one in weights per second wins. The
 * figures are cached in `$CKPT_CACHE_DIR` (default `$XDG_CACHE_HOME/ckpt`, else `~/.cache/ckpt`),
 * `calibration.json`, so later runs pay nothing. The key names the machine without loading the GPU
 * driver (core count, Deno version and so the bundled wgpu, and on Linux the PCI ids of the GPUs'
 * render nodes and the NVIDIA driver version), the LoRA rank and the column count; each entry also
 * names the WebGPU adapter it measured. Private to `merge/backend.ts`.
 * @module
 */
import { join } from "node:path";
import { cacheDir, writeCacheFile } from "../formats/_cache_dir.ts";
import type { MergeBackend, MergeRowsRequest } from "../kernels/types.ts";

/** What a calibration measured: million merged weights per second per backend. */
export interface Calibration {
  /** CPU backend, M weights/s. */
  cpu: number;
  /** WebGPU backend, M weights/s. */
  webgpu: number;
  /** The WebGPU adapter measured, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (fallback)`. */
  adapter: string;
  /** When it was measured (ISO time). */
  measured: string;
  /** True when read from the cache instead of measured now. */
  cached: boolean;
}

/** The workload of a calibration: the adapter's rank and the base's column count. */
export interface CalibrationShape {
  /** LoRA rank (the sum over adapters merged together). */
  rank: number;
  /** Columns of the weights (input features). */
  cols: number;
}

/** The calibration cache file (`CKPT_CACHE_DIR`, `XDG_CACHE_HOME/ckpt`, `~/.cache/ckpt`), or undefined. */
export function calibrationFile(): string | undefined {
  const dir = cacheDir();
  return dir ? join(dir, "calibration.json") : undefined;
}

/** How {@linkcode gpuHardware} reads the system; each returns nothing when it cannot. */
export interface SystemFiles {
  /** A text file's content, or undefined (missing, no permission). */
  read(path: string): string | undefined;
  /** A folder's entry names, or none. */
  list(dir: string): string[];
}

/** Whether `path` may be read without asking (a permission prompt would stop a merge). */
function mayRead(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "read", path }).state === "granted";
  } catch {
    return false;
  }
}

/** The real file system, read only where permission is already granted. */
export const systemFiles: SystemFiles = {
  read(path) {
    try {
      return mayRead(path) ? Deno.readTextFileSync(path) : undefined;
    } catch {
      return undefined;
    }
  },
  list(dir) {
    try {
      return mayRead(dir) ? [...Deno.readDirSync(dir)].map((e) => e.name) : [];
    } catch {
      return [];
    }
  },
};

/**
 * The GPU hardware visible without loading a driver: on Linux the sorted PCI `vendor:device` ids
 * of `/sys/class/drm/renderD*` (`pci none` without any) and the first line of
 * `/proc/driver/nvidia/version` when there is one; elsewhere the fixed `gpu ?`.
 */
export function gpuHardware(files: SystemFiles = systemFiles, os: string = Deno.build.os): string {
  if (os !== "linux") return "gpu ?";
  const hex = (s: string | undefined) => (s ?? "?").trim().replace(/^0x/i, "");
  const ids = files.list("/sys/class/drm").filter((n) => /^renderD\d+$/.test(n)).map((n) => {
    const dev = `/sys/class/drm/${n}/device`;
    return `${hex(files.read(`${dev}/vendor`))}:${hex(files.read(`${dev}/device`))}`;
  }).sort();
  const nvidia = files.read("/proc/driver/nvidia/version")?.split("\n")[0]?.trim();
  return `pci ${ids.join(",") || "none"}${nvidia ? `|nvidia ${nvidia}` : ""}`;
}

/** The machine part of the cache key: core count, Deno version, {@linkcode gpuHardware}. */
export function machineKey(files: SystemFiles = systemFiles): string {
  return `${navigator.hardwareConcurrency} cores|deno ${Deno.version.deno}|${gpuHardware(files)}`;
}

/** The cache key: the machine, the rank, and the column count rounded to a power of 2. */
export function calibrationKey(shape: CalibrationShape, machine: string = machineKey()): string {
  const cols = 2 ** Math.round(Math.log2(Math.max(1, shape.cols)));
  return `${machine}|r${shape.rank}|c${cols}`;
}

async function readCache(file: string): Promise<Record<string, Calibration>> {
  try {
    const v = JSON.parse(await Deno.readTextFile(file));
    return v && typeof v === "object" && !Array.isArray(v) ? v : {};
  } catch {
    return {};
  }
}

/** The cached calibration of `key`, if any (an entry without its adapter is not one). */
export async function cachedCalibration(
  file: string | undefined,
  key: string,
): Promise<Calibration | undefined> {
  if (!file) return undefined;
  const c = (await readCache(file))[key];
  if (!c || !(c.cpu > 0) || !(c.webgpu > 0) || typeof c.adapter !== "string") return undefined;
  return {
    cpu: c.cpu,
    webgpu: c.webgpu,
    adapter: c.adapter,
    measured: String(c.measured),
    cached: true,
  };
}

/** Stores `c` under `key` (best effort: a cache that cannot be written is skipped). */
export async function storeCalibration(
  file: string | undefined,
  key: string,
  c: Calibration,
): Promise<void> {
  if (!file) return;
  try {
    const all = await readCache(file);
    all[key] = { ...c, cached: false };
    await writeCacheFile(file, JSON.stringify(all, null, 2) + "\n");
  } catch {
    // read-only home, no permission: calibrate again next time
  }
}

/** A synthetic bf16 block of about 8 MiB of W with the given rank and columns. */
function block(shape: CalibrationShape): MergeRowsRequest {
  const { rank, cols } = shape;
  const rows = Math.max(1, Math.floor((8 << 20) / (2 * cols)));
  const w = new Uint16Array(rows * cols);
  for (let i = 0; i < w.length; i++) w[i] = 0x3c00 + (i * 2654435761 >>> 24);
  const a = new Float32Array(rank * cols).map((_, i) => ((i * 7) % 13) / 1300);
  const b = new Float32Array(rows * rank).map((_, i) => ((i * 5) % 11) / 1100);
  return {
    name: "calibration",
    w: new Uint8Array(w.buffer),
    wDtype: "BF16",
    outDtype: "BF16",
    rows,
    cols,
    rank,
    a,
    b,
    scale: 2,
  };
}

/** Seconds to merge `blocks` blocks of `req` on `backend`, two in flight. */
async function run(backend: MergeBackend, req: MergeRowsRequest, blocks: number): Promise<number> {
  const t0 = performance.now();
  const inFlight: Promise<Uint8Array>[] = [];
  for (let i = 0; i < blocks; i++) {
    if (inFlight.length >= 2) await inFlight.shift();
    inFlight.push(backend.mergeRows(req));
  }
  await Promise.all(inFlight);
  return (performance.now() - t0) / 1000;
}

/**
 * M weights per second of `backend` on `blocks` blocks of `req`, after a warm-up of at least
 * 200 ms (WebAssembly and shaders are compiled, then optimized in the background: the first
 * blocks run several times slower than the rest of a merge).
 */
async function rate(backend: MergeBackend, req: MergeRowsRequest, blocks: number): Promise<number> {
  const warm = performance.now();
  for (let i = 0; i < 16 && performance.now() - warm < 200; i++) await run(backend, req, 2);
  const s = await run(backend, req, blocks);
  return (req.rows * req.cols * blocks) / 1e6 / Math.max(s, 1e-6);
}

/**
 * Measures both backends on the same blocks (`blocks` each, default 4); `adapter` names the one
 * WebGPU runs on.
 */
export async function calibrate(
  cpu: MergeBackend,
  webgpu: MergeBackend,
  adapter: string,
  shape: CalibrationShape,
  blocks = 4,
): Promise<Calibration> {
  const req = block(shape);
  const c = await rate(cpu, req, blocks);
  const g = await rate(webgpu, req, blocks);
  return {
    cpu: Math.round(c),
    webgpu: Math.round(g),
    adapter,
    measured: new Date().toISOString(),
    cached: false,
  };
}

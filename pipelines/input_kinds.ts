/**
 * The pluggable input kinds of {@linkcode gatherShards}: each kind knows how to recognise a path
 * (`detect`) and how to open it as a lazy {@linkcode StateDict} (`open`). The built-in kinds
 * (single safetensors file, HF safetensors shard folder, torch `.bin/.pt`, `pytorch_model.bin`
 * shard folder) are registered by `pipelines/stages/gather_shards.ts`; other modules (the
 * torch.distributed.checkpoint reader) add theirs with {@linkcode registerInputKind}.
 *
 * Detection asks the kinds in priority order (highest first, then registration order) and takes the
 * first that says yes; a config can also name the kind explicitly.
 *
 * @example Registering a kind
 * ```ts
 * import { detectInputKind, registerInputKind, unregisterInputKind } from "./input_kinds.ts";
 * import { StateDict } from "../formats/state_dict.ts";
 * import assert from "node:assert/strict";
 *
 * registerInputKind({
 *   name: "example-empty",
 *   summary: "paths ending in .empty open as an empty state dict",
 *   detect: (path) => Promise.resolve(path.endsWith(".empty")),
 *   open: () => Promise.resolve(new StateDict()),
 * });
 * const file = await Deno.makeTempFile({ suffix: ".empty" });
 * assert.equal((await detectInputKind(file)).name, "example-empty");
 * unregisterInputKind("example-empty");
 * await Deno.remove(file);
 * ```
 * @module
 */
import { CkptError } from "../errors.ts";
import type { StateDict } from "../formats/state_dict.ts";

/** Options every input kind's `open` receives. */
export interface InputOpenOptions {
  /** Aborts long opens (many shards). */
  signal?: AbortSignal;
}

/** One kind of weights input gatherShards can read. */
export interface InputKind {
  /** Stable name used in configs (`"kind": "hf-shards"`) and reports. */
  readonly name: string;
  /** One-line description for docs and `--help`. */
  readonly summary?: string;
  /** Detection order: higher first (built-ins use 0..100); ties keep registration order. */
  readonly priority?: number;
  /** True when `path` (file or folder, already resolved) is of this kind; must not throw for other kinds. */
  detect(path: string): Promise<boolean>;
  /** Opens `path` as a lazy state dict (headers only; tensor data is read on demand). */
  open(path: string, options: InputOpenOptions): Promise<StateDict>;
}

const KINDS: InputKind[] = [];

/**
 * Adds an input kind; a kind with the same name is replaced (so re-imports are harmless).
 * Throws `INPUT_KIND` for an empty name.
 */
export function registerInputKind(kind: InputKind): void {
  if (typeof kind.name !== "string" || kind.name.length === 0) {
    throw new CkptError("INPUT_KIND", "Cannot register an input kind: its name is empty");
  }
  const at = KINDS.findIndex((k) => k.name === kind.name);
  if (at >= 0) KINDS[at] = kind;
  else KINDS.push(kind);
}

/** Removes the kind called `name`; true when it was registered. */
export function unregisterInputKind(name: string): boolean {
  const at = KINDS.findIndex((k) => k.name === name);
  if (at < 0) return false;
  KINDS.splice(at, 1);
  return true;
}

/** The registered kinds in detection order (highest priority first). */
export function inputKinds(): readonly InputKind[] {
  return KINDS
    .map((kind, index) => ({ kind, index }))
    .sort((a, b) => (b.kind.priority ?? 0) - (a.kind.priority ?? 0) || a.index - b.index)
    .map((e) => e.kind);
}

/** The kind called `name`, or an `INPUT_KIND` error listing the known names. */
export function getInputKind(name: string): InputKind {
  const kind = KINDS.find((k) => k.name === name);
  if (!kind) {
    throw new CkptError(
      "INPUT_KIND",
      `Cannot use input kind "${name}": known kinds are ${
        KINDS.map((k) => `"${k.name}"`).join(", ")
      }`,
      { details: { kind: name, known: KINDS.map((k) => k.name) } },
    );
  }
  return kind;
}

/**
 * The first kind (in {@linkcode inputKinds} order) that recognises `path`. `INPUT_MISSING` when the
 * path does not exist, `INPUT_KIND` when no kind recognises it.
 */
export async function detectInputKind(path: string): Promise<InputKind> {
  try {
    await Deno.stat(path);
  } catch (cause) {
    throw new CkptError("INPUT_MISSING", `Cannot read weights from "${path}": it does not exist`, {
      file: path,
      cause,
    });
  }
  for (const kind of inputKinds()) {
    if (await kind.detect(path)) return kind;
  }
  throw new CkptError(
    "INPUT_KIND",
    `Cannot tell what kind of weights "${path}" holds: none of ${
      KINDS.map((k) => `"${k.name}"`).join(", ")
    } recognises it`,
    { file: path, details: { known: KINDS.map((k) => k.name) } },
  );
}

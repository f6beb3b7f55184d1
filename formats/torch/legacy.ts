/**
 * Recognises what a `.pt`/`.bin` file is from its first bytes, and refuses the formats ckpt does
 * not read with a message that says how to convert them: the pre-1.6 (non-zip) torch.save format,
 * the older tar format, TorchScript archives, and bare pickles.
 *
 * @example Detecting the legacy format
 * ```ts
 * import { detectTorchFormat } from "./legacy.ts";
 * import assert from "node:assert/strict";
 *
 * const head = new Uint8Array([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
 * assert.equal(detectTorchFormat(head), "legacy");
 * assert.equal(detectTorchFormat(new Uint8Array([0x50, 0x4b, 0x03, 0x04])), "zip");
 * ```
 * @module
 */
import { CkptError } from "../../errors.ts";

/** What the first bytes of a file say it is. */
export type TorchFileKind = "zip" | "legacy" | "tar" | "torchscript-preview" | "pickle" | "unknown";

const LEGACY_MAGIC = [
  0x80,
  0x02,
  0x8a,
  0x0a,
  0x6c,
  0xfc,
  0x9c,
  0x46,
  0xf9,
  0x20,
  0x6a,
  0xa8,
  0x50,
  0x19,
];

/** Classifies a file by its first bytes (pass at least 262 bytes to detect tar). */
export function detectTorchFormat(head: Uint8Array): TorchFileKind {
  const starts = (sig: readonly number[], at = 0) =>
    head.length >= at + sig.length && sig.every((b, i) => head[at + i] === b);
  if (starts([0x50, 0x4b, 0x03, 0x04]) || starts([0x50, 0x4b, 0x05, 0x06])) return "zip";
  if (starts([...new TextEncoder().encode("PYTORCH1")])) return "torchscript-preview";
  if (starts(LEGACY_MAGIC)) return "legacy";
  if (starts([...new TextEncoder().encode("ustar")], 257)) return "tar";
  if (head.length >= 2 && head[0] === 0x80 && head[1]! <= 5) return "pickle";
  return "unknown";
}

/** Throws the refusal for a non-zip kind (`TORCH_LEGACY`, `TORCH_TORCHSCRIPT`, `TORCH_NOT_TORCH`). */
export function refuseTorchFormat(kind: TorchFileKind, file: string): never {
  switch (kind) {
    case "legacy":
    case "tar":
      throw new CkptError(
        "TORCH_LEGACY",
        `Cannot read "${file}": it is the legacy (pre-1.6${
          kind === "tar" ? ", tar" : ""
        }) torch.save format; re-save it with torch >= 1.6 default (zip) serialization: ` +
          `python -c "import torch; torch.save(torch.load('${file}', weights_only=True), 'converted.pt')"`,
        { file, details: { kind } },
      );
    case "torchscript-preview":
      throw new CkptError(
        "TORCH_TORCHSCRIPT",
        `Cannot read "${file}": it is a TorchScript archive (PYTORCH1), not a torch.save file`,
        { file },
      );
    case "pickle":
      throw new CkptError(
        "TORCH_NOT_TORCH",
        `Cannot read "${file}": it is a bare pickle, not a torch.save zip archive`,
        { file },
      );
    default:
      throw new CkptError(
        "TORCH_NOT_TORCH",
        `Cannot read "${file}": it is not a torch.save file (no zip or pickle signature)`,
        { file },
      );
  }
}

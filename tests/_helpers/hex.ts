/**
 * Bytes as lowercase hex, for comparing tensor bytes with what Python reports.
 * @module
 */

/** `bytes` as a lowercase hex string, two digits a byte. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

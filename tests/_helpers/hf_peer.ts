/**
 * The hf peer's runner, kept for existing imports: peers are found and run by
 * `tests/_helpers/peer.ts` (import from there).
 * @module
 */
export { runHfPython } from "./peer.ts";

/**
 * Runs Python with the current Hugging Face stack (`../shared/tools/hf-peer`: torch 2.13 CPU,
 * transformers 5.17, PEFT 0.21, accelerate 1.15, safetensors 0.8). Tests that need it fail loudly
 * when it is missing, as the torch 2.6 peer's do (`tests/_helpers/peer.ts`).
 * @module
 */
import { join } from "node:path";
import { REPO_ROOT } from "./peer.ts";

/** Path of the hf-peer launcher (`CKPT_HF_PEER` overrides). */
export function hfPeerPath(): string {
  return Deno.env.get("CKPT_HF_PEER") ?? join(REPO_ROOT, "..", "shared", "tools", "hf-peer");
}

/**
 * Runs `python <script> ...args` with the hf-peer (script path relative to the repo root, or
 * absolute) and parses the last stdout line as JSON. Throws with stderr when Python fails.
 */
export async function runHfPython<T = unknown>(script: string, args: string[] = []): Promise<T> {
  const peer = hfPeerPath();
  try {
    await Deno.stat(peer);
  } catch {
    throw new Error(`hf peer missing at ${peer}: CI builds it with 'hf-peer --ensure'`);
  }
  const out = await new Deno.Command(peer, {
    args: ["python", script, ...args],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`hf peer failed (exit ${out.code}):\n${stderr}\n${stdout}`);
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1] ?? "null") as T;
}

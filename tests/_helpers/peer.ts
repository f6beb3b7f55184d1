/**
 * Runs Python inside the real PyTorch 2.6 peer (`../shared/tools/torch-peer`). Tests that need it fail
 * loudly when it is missing: CI builds it, and a silent skip would hide an interop break.
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Repository root. */
export const REPO_ROOT: string = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Path of the torch-peer launcher (`CKPT_TORCH_PEER` overrides). */
export function peerPath(): string {
  return Deno.env.get("CKPT_TORCH_PEER") ?? join(REPO_ROOT, "..", "shared", "tools", "torch-peer");
}

/** Result of a peer run. */
export interface PeerResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs `python3 -c <script> ...args` in the peer, with the current folder set to `cwd` (default: the
 * repo root; the peer sees it and /tmp at the same paths). Throws with stderr when Python fails.
 */
export async function runPython(
  script: string,
  args: string[] = [],
  cwd: string = REPO_ROOT,
): Promise<PeerResult> {
  const peer = peerPath();
  try {
    await Deno.stat(peer);
  } catch {
    throw new Error(`torch peer missing at ${peer}: CI builds it with 'torch-peer --ensure'`);
  }
  const out = await new Deno.Command(peer, {
    args: ["python3", "-c", script, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`torch peer failed (exit ${out.code}):\n${stderr}\n${stdout}`);
  return { stdout, stderr };
}

/** Runs a peer script and parses the last stdout line as JSON. */
export async function runPythonJson<T = unknown>(
  script: string,
  args: string[] = [],
  cwd?: string,
): Promise<T> {
  const { stdout } = await runPython(script, args, cwd);
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1] ?? "null") as T;
}

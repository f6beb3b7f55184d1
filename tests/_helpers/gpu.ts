/**
 * Runs code where WebGPU finds no adapter, for the "no GPU" paths of the GPU and merge tests.
 * @module
 */

/**
 * Runs `script` with `deno eval` where WebGPU has no adapter (`DENO_WEBGPU_BACKEND=dx12` on
 * Linux) and returns the lines it printed to stdout.
 */
export async function evalWithoutGpu(script: string): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    env: { DENO_WEBGPU_BACKEND: "dx12" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n");
}

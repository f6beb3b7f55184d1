/**
 * Worker of the CPU merge backend: receives the shared memory once, then tasks; runs each with
 * {@linkcode runCpuTask} and answers `{ id }` (or `{ id, error }`).
 * @module
 */
/// <reference lib="deno.worker" />
import { type CpuTask, KernelCache, runCpuTask } from "./_rows.ts";

let mem: WebAssembly.Memory | undefined;
let cache: KernelCache | undefined;

self.onmessage = (e: MessageEvent) => {
  const msg = e.data as
    | { type: "init"; mem: WebAssembly.Memory }
    | { type: "task"; id: number; task: CpuTask; module?: WebAssembly.Module };
  if (msg.type === "init") {
    mem = msg.mem;
    cache = new KernelCache(mem);
    return;
  }
  try {
    const change = runCpuTask(mem!, cache!, msg.task, msg.module);
    self.postMessage(change ? { id: msg.id, change } : { id: msg.id });
  } catch (err) {
    self.postMessage({ id: msg.id, error: String((err as Error)?.stack ?? err) });
  }
};

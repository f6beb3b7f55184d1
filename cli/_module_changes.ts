/**
 * The lines `ckpt run`, `ckpt merge` and the finish of a split export print after an export: the
 * merged modules that changed most, from mergeLora's `moduleChanges` in the manifest.
 * @module
 */
import type { Manifest } from "../pipelines/manifest.ts";

/**
 * The `n` merged modules that changed most (‖ΔW‖/‖W‖, from the mergeLora reports in the manifest)
 * as lines to print at the end of a run; none when nothing was merged.
 */
export function topModuleChanges(result: { manifest: Pick<Manifest, "stages"> }, n = 5): string[] {
  const changes: { module: string; relNorm: number }[] = [];
  for (const stage of result.manifest.stages) {
    const list = stage.report.moduleChanges;
    if (!Array.isArray(list)) continue;
    for (const c of list as { module?: unknown; relNorm?: unknown }[]) {
      if (typeof c.module === "string" && typeof c.relNorm === "number") {
        changes.push({ module: c.module, relNorm: c.relNorm });
      }
    }
  }
  if (changes.length === 0) return [];
  const top = [...changes].sort((a, b) => b.relNorm - a.relNorm).slice(0, n);
  const width = Math.max(...top.map((c) => c.module.length));
  return [
    `most changed modules, ||dW||/||W|| (${top.length} of ${changes.length} merged):`,
    ...top.map((c) => `  ${c.module.padEnd(width)}  ${c.relNorm.toExponential(3)}`),
  ];
}

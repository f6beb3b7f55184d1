/**
 * The writeReport stage: `ckpt-report.html` in the output, a self-contained page people can look at
 * after a LoRA merge (no network): the adapters and backend, a per-layer chart of ‖ΔW‖/‖W‖ (layers
 * along one axis, q/k/v/o/gate/up/down as series) and the sortable table of every merged module.
 * The figures are the ones mergeLora measured while writeModel wrote the merged tensors (no second
 * pass), so the stage goes after writeModel; it is listed in the manifest like every output.
 *
 * ```jsonc
 * { "use": "writeReport" }   // last, after writeModel
 * ```
 *
 * @example The stage takes no options
 * ```ts
 * import { writeReportStage } from "./write_report.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(writeReportStage.options.safeParse({}).success, true);
 * assert.equal(writeReportStage.options.safeParse({ file: "x.html" }).success, false);
 * ```
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import { CkptError } from "../../errors.ts";
import { renderReportHtml } from "../report/html.ts";
import { mergeReportPage } from "../report/pages.ts";
import { defineStage, type Stage } from "../stage.ts";

/** The file writeReport writes. */
export const REPORT_FILE = "ckpt-report.html";

/** The writeReport stage (config name `writeReport`). */
export const writeReportStage: Stage = defineStage({
  name: "writeReport",
  summary:
    "write ckpt-report.html: ||dW||/||W|| of the merge per layer and module (after writeModel)",
  options: z.strictObject({}),
  /**
   * `REPORT_NO_MERGE` without a mergeLora stage before it; `REPORT_INCOMPLETE` when no merged module
   * has been written yet (the stage stands before writeModel). A module the writer did not write
   * (a tied head written once) shows without figures.
   */
  async run(ctx) {
    const report = ctx.mergeReport;
    if (!report) {
      throw new CkptError(
        "REPORT_NO_MERGE",
        `Cannot write ${REPORT_FILE}: no mergeLora stage ran before writeReport`,
      );
    }
    if (ctx.dryRun) {
      ctx.report("writeReport", { files: [{ path: REPORT_FILE }], estimated: true });
      return;
    }
    if (report.modules.length > 0 && report.changes.length === 0) {
      throw new CkptError(
        "REPORT_INCOMPLETE",
        `Cannot write ${REPORT_FILE}: none of the ${report.modules.length} merged modules has been written yet; put writeReport after writeModel`,
      );
    }
    const output = report.adapters.map((a) => a.path ?? a.name).join(" + ");
    const html = renderReportHtml(mergeReportPage(report, `merge of ${output}`));
    const bytes = new TextEncoder().encode(html);
    await Deno.writeFile(join(ctx.outDir, REPORT_FILE), bytes);
    ctx.report("writeReport", {
      files: [{ path: REPORT_FILE, bytes: bytes.byteLength }],
      modules: report.modules.length,
      measured: report.changes.length,
    });
    ctx.emit({ type: "progress", stage: "writeReport", done: 1, total: 1, unit: "files" });
  },
});

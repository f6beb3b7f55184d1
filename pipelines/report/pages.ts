/**
 * The two report pages: {@linkcode diffReportPage} (`ckpt diff --html`) and
 * {@linkcode mergeReportPage} (`ckpt-report.html` of a run with a LoRA merge), as
 * {@linkcode ReportPage}s for `renderReportHtml`.
 *
 * @example The page of a merge that moved one module
 * ```ts
 * import { mergeReportPage } from "./pages.ts";
 * import { renderReportHtml } from "./html.ts";
 * import assert from "node:assert/strict";
 *
 * const page = mergeReportPage({
 *   adapters: [{ name: "default", weight: 1, tensors: 2, useDora: false }],
 *   modules: [{ module: "model.layers.0.mlp.up_proj", tensor: "model.layers.0.mlp.up_proj.weight", layout: "linear", shape: [4, 4], dtype: "BF16", dora: false, adapters: [{ name: "default", r: 2, alpha: 4, scale: 2, weight: 1 }] }],
 *   changes: [{ module: "model.layers.0.mlp.up_proj", tensor: "model.layers.0.mlp.up_proj.weight", dtype: "BF16", normW: 2, normDelta: 0.1, relNorm: 0.05, maxAbs: 0.03 }],
 * }, "/models/x");
 * assert.equal(page.rows[0]!.relNorm, 0.05);
 * assert.match(renderReportHtml(page), /data-module="up"/);
 * ```
 * @module
 */
import type { MergeReport } from "../../merge/lora_types.ts";
import type { DiffReport } from "../diff/diff.ts";
import type { ReportPage } from "./html.ts";

/** What a diff page says about each side. */
export interface DiffSideInfo {
  /** The path given. */
  path: string;
  /** Input kind. */
  kind: string;
  /** Adapter merged on the fly, if any. */
  adapter?: string;
}

function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  return x === 0
    ? "0"
    : Math.abs(x) >= 1e-3 && Math.abs(x) < 1e5
    ? String(Number(x.toPrecision(4)))
    : x.toExponential(3);
}

function side(s: DiffSideInfo): string {
  return `${s.path} (${s.kind}${s.adapter === undefined ? "" : ` + adapter ${s.adapter}`})`;
}

/** The page of a `ckpt diff`: verdict and totals, ‖A−B‖/‖A‖ per layer and module, every tensor. */
export function diffReportPage(report: DiffReport, a: DiffSideInfo, b: DiffSideInfo): ReportPage {
  const t = report.totals;
  const tol = "ulp" in report.tolerance
    ? `${report.tolerance.ulp} ulp of the wider dtype`
    : `|A-B| <= ${report.tolerance.abs}`;
  const rows: ReportPage["rows"] = report.tensors.map((d) => ({
    name: d.name,
    status: d.status,
    dtype: d.dtypeA === d.dtypeB ? d.dtypeA : `${d.dtypeA} / ${d.dtypeB}`,
    shape: d.status === "shape"
      ? `[${d.shapeA.join(", ")}] / [${d.shapeB.join(", ")}]`
      : `[${d.shapeA.join(", ")}]`,
    maxAbs: d.maxAbs,
    maxUlp: d.maxUlp,
    relNorm: d.relNorm,
    cosine: d.cosine,
    differing: d.differing,
    numel: d.numel,
    first: d.first ? `[${d.first.at.join(", ")}]: ${d.first.a} / ${d.first.b}` : "",
  }));
  for (const name of report.onlyA) rows.push({ name, status: "only in A" });
  for (const name of report.onlyB) rows.push({ name, status: "only in B" });
  return {
    title: "ckpt diff",
    subtitle: `A: ${side(a)} · B: ${side(b)}`,
    summary: [
      [
        "verdict",
        report.equal ? (t.close > 0 ? "equal within the tolerance" : "equal") : "different",
      ],
      ["tolerance", tol],
      ["tensors compared", String(t.compared)],
      ["equal", String(t.equal)],
      ["within tolerance", String(t.close)],
      ["different", String(t.different)],
      ["dtype mismatch", String(t.dtype)],
      ["shape mismatch", String(t.shape)],
      ["only in A", String(t.onlyA)],
      ["only in B", String(t.onlyB)],
      ["differing elements", `${t.differing} of ${t.elements}`],
      ["max |A-B|", `${num(t.maxAbs)}${t.maxAbsTensor ? ` (${t.maxAbsTensor})` : ""}`],
      ["max ulp", String(t.maxUlp)],
      ["||A-B|| / ||A||", num(t.relNorm)],
    ],
    chart: {
      title: "||A-B|| / ||A|| per layer",
      // weight matrices (norms and biases are vectors: no module series of their own)
      points: report.tensors.filter((d) => d.status !== "shape" && d.shapeA.length >= 2).map((
        d,
      ) => ({
        name: d.name,
        value: d.relNorm,
      })),
    },
    columns: [
      { key: "name", label: "tensor" },
      { key: "status", label: "status" },
      { key: "dtype", label: "dtype" },
      { key: "shape", label: "shape" },
      { key: "maxAbs", label: "max |A-B|", numeric: true },
      { key: "maxUlp", label: "max ulp", numeric: true, help: "ulps of the wider dtype" },
      { key: "relNorm", label: "||A-B||/||A||", numeric: true },
      { key: "cosine", label: "cosine", numeric: true },
      { key: "differing", label: "differing", numeric: true },
      { key: "numel", label: "elements", numeric: true },
      { key: "first", label: "first difference (A / B)" },
    ],
    rows,
  };
}

/** The page of a LoRA merge: the adapters, ‖ΔW‖/‖W‖ per layer and module, every merged module. */
export function mergeReportPage(
  report: Pick<MergeReport, "adapters" | "modules" | "changes" | "backend">,
  output: string,
): ReportPage {
  const changes = new Map(report.changes.map((c) => [c.tensor, c]));
  const rows: ReportPage["rows"] = report.modules.map((m) => {
    const c = changes.get(m.tensor);
    const a = m.adapters;
    return {
      name: m.module,
      layout: m.layout + (m.dora ? " + DoRA" : ""),
      dtype: c?.dtype ?? m.dtype,
      shape: `[${m.shape.join(", ")}]`,
      r: a.map((x) => x.r).join("+"),
      scale: a.length === 1 ? a[0]!.scale : a.map((x) => num(x.scale)).join("+"),
      normW: c?.normW,
      normDelta: c?.normDelta,
      relNorm: c?.relNorm,
      maxAbs: c?.maxAbs,
    };
  });
  const rel = report.changes.map((c) => c.relNorm).filter(Number.isFinite);
  const top = [...report.changes].sort((x, y) => y.relNorm - x.relNorm)[0];
  return {
    title: "ckpt merge report",
    subtitle: output,
    summary: [
      [
        "adapters",
        report.adapters.map((a) => `${a.name}${a.path ? ` (${a.path})` : ""}`).join(", "),
      ],
      [
        "backend",
        report.backend ? report.backend.description : "none",
      ],
      ["modules merged", String(report.modules.length)],
      ["mean ||dW|| / ||W||", rel.length ? num(rel.reduce((s, x) => s + x, 0) / rel.length) : "-"],
      ["max ||dW|| / ||W||", top ? `${num(top.relNorm)} (${top.module})` : "-"],
    ],
    chart: {
      title: "||dW|| / ||W|| per layer",
      points: report.changes.map((c) => ({ name: c.tensor, value: c.relNorm })),
    },
    columns: [
      { key: "name", label: "module" },
      { key: "layout", label: "layout" },
      { key: "dtype", label: "dtype" },
      { key: "shape", label: "shape" },
      { key: "r", label: "r" },
      { key: "scale", label: "scale", numeric: true },
      { key: "normW", label: "||W||", numeric: true },
      { key: "normDelta", label: "||dW||", numeric: true },
      { key: "relNorm", label: "||dW||/||W||", numeric: true },
      { key: "maxAbs", label: "max |dW|", numeric: true },
    ],
    rows,
  };
}

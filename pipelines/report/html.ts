/**
 * One self-contained HTML page for a report people look at (`ckpt diff --html`,
 * `ckpt-report.html`): a summary, a per-layer chart of the relative change (layers along one axis,
 * modules as series) and the full table, sortable by any column with a click. No network: styles
 * and the sorting script are inline, the chart is inline SVG, fonts are the system's, and a
 * Content-Security-Policy forbids loading anything else.
 *
 * @example A page with one row
 * ```ts
 * import { renderReportHtml } from "./html.ts";
 * import assert from "node:assert/strict";
 *
 * const html = renderReportHtml({
 *   title: "example",
 *   summary: [["tensors", "1"]],
 *   chart: { title: "relative change", points: [{ name: "model.layers.0.self_attn.q_proj.weight", value: 0.1 }] },
 *   columns: [{ key: "name", label: "tensor" }, { key: "rel", label: "rel", numeric: true }],
 *   rows: [{ name: "model.layers.0.self_attn.q_proj.weight", rel: 0.1 }],
 * });
 * assert.match(html, /<rect class="bar"[^>]*data-layer="0" data-module="q"/);
 * assert.doesNotMatch(html, /<script src|<link /);
 * ```
 * @module
 */
import { type ChartPoint, chartSvg } from "./_chart.ts";

export { type ChartPoint, type Placed, placePoints, seriesName } from "./_chart.ts";

/** One column of the table. */
export interface ReportColumn {
  /** Key of the row field. */
  key: string;
  /** Header text. */
  label: string;
  /** Numbers: sorted numerically (largest first on the first click), shown with 3 digits. */
  numeric?: boolean;
  /** A tooltip for the header. */
  help?: string;
}

/** A table cell: text, a number, or absent. */
export type ReportCell = string | number | undefined;

/** What {@linkcode renderReportHtml} draws. */
export interface ReportPage {
  /** Page title and heading. */
  title: string;
  /** A line under the heading. */
  subtitle?: string;
  /** Label/value pairs of the summary. */
  summary: [string, string][];
  /** The per-layer chart: one point per tensor (tensors outside numbered layers are left out). */
  chart: { title: string; points: ChartPoint[] };
  /** Table columns, in order. */
  columns: ReportColumn[];
  /** Table rows. */
  rows: Record<string, ReportCell>[];
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

function show(v: ReportCell, numeric: boolean): string {
  if (v === undefined) return "";
  if (typeof v === "string") return v;
  if (!numeric) return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (v === 0 || Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e5
    ? String(Number(v.toPrecision(4)))
    : v.toExponential(3);
}

/** `data-value` for sorting: numbers as they are (non-finite as ±1e308), text as is. */
function sortValue(v: ReportCell): string {
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "-1e308";
    return String(Number.isFinite(v) ? v : v > 0 ? 1e308 : -1e308);
  }
  return v ?? "";
}

const STYLE = `
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } .subtitle { color: #666; margin: 0 0 16px; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 0 0 20px; }
dl.summary dt { color: #666; } dl.summary dd { margin: 0; font-variant-numeric: tabular-nums; }
.chart-title { font-weight: 600; font-size: 13px; } .tick { font-size: 11px; fill: #555; }
.grid { stroke: #ddd; } svg { display: block; margin: 0 0 20px; max-width: 100%; overflow: visible; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
td.num { text-align: right; } th { cursor: pointer; user-select: none; background: #f6f6f6; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.differs td:first-child { border-left: 3px solid #e15759; }
`;

/** Sorts the table by a clicked header: numbers largest first on the first click, text A to Z. */
const SCRIPT = `
(function () {
  var table = document.getElementById("tensors");
  var heads = table.tHead.rows[0].cells;
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener("click", (function (col) { return function () { sortBy(col); }; })(i));
  }
  function sortBy(col) {
    var th = heads[col];
    var numeric = th.getAttribute("data-numeric") === "1";
    var current = th.getAttribute("aria-sort");
    var dir = current ? (current === "ascending" ? -1 : 1) : (numeric ? -1 : 1);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-value"), y = b.cells[col].getAttribute("data-value");
      if (numeric) return dir * ((x === "" ? -Infinity : Number(x)) - (y === "" ? -Infinity : Number(y)));
      return dir * x.localeCompare(y);
    });
    for (var j = 0; j < heads.length; j++) heads[j].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    for (var k = 0; k < rows.length; k++) body.appendChild(rows[k]);
  }
})();
`;

/** The page as one HTML string (see the module doc). */
export function renderReportHtml(page: ReportPage): string {
  const chart = chartSvg(page.chart.points, page.chart.title);
  const head = page.columns.map((c) =>
    `<th data-key="${esc(c.key)}" data-numeric="${c.numeric ? 1 : 0}"${
      c.help ? ` title="${esc(c.help)}"` : ""
    }>${esc(c.label)}</th>`
  ).join("");
  const body = page.rows.map((r) => {
    const cells = page.columns.map((c) => {
      const v = r[c.key];
      return `<td${c.numeric ? ' class="num"' : ""} data-value="${esc(sortValue(v))}">${
        esc(show(v, c.numeric ?? false))
      }</td>`;
    }).join("");
    const cls = typeof r.status === "string" && r.status !== "equal" ? ' class="differs"' : "";
    return `<tr${cls}>${cells}</tr>`;
  }).join("\n");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(page.title)}</title>
<style>${STYLE}</style>
</head>
<body>
<h1>${esc(page.title)}</h1>
${page.subtitle ? `<p class="subtitle">${esc(page.subtitle)}</p>` : ""}
<dl class="summary">
${page.summary.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("\n")}
</dl>
${chart || '<p class="subtitle">No tensor sits in a numbered layer: no per-layer chart.</p>'}
<table id="tensors">
<thead><tr>${head}</tr></thead>
<tbody>
${body}
</tbody>
</table>
<script>${SCRIPT}</script>
</body>
</html>
`;
}

/**
 * The per-layer chart of a report page, as inline SVG: layers along the x axis, one bar per module
 * (q/k/v/o/gate/up/down, then any other) in each layer's group, bar height the relative change.
 * Tensors are placed by their name: `….layers.<i>.<…>.<module>.weight` (also `h.<i>`, `blocks.<i>`,
 * `layer.<i>`). Private to `pipelines/report/`.
 * @module
 */

/** One tensor's value, by name. */
export interface ChartPoint {
  /** Tensor name. */
  name: string;
  /** The value the bar shows (a relative change, ≥ 0; non-finite values draw at the top). */
  value: number;
}

/** A tensor placed on the chart. */
export interface Placed {
  /** Layer index. */
  layer: number;
  /** Series: the short module name (`q`, `k`, ..., `down`) or the module's last name part. */
  module: string;
  /** Tensor name. */
  name: string;
  /** The value of its bar. */
  value: number;
}

const LAYER = /(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.(?:.+\.)?([^.]+)\.weight$/;
/** Series order and short names of the usual transformer projections. */
const KNOWN: readonly [string, string][] = [
  ["q_proj", "q"],
  ["k_proj", "k"],
  ["v_proj", "v"],
  ["o_proj", "o"],
  ["gate_proj", "gate"],
  ["up_proj", "up"],
  ["down_proj", "down"],
];
const COLORS = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

/** The series (short module name) of a module's last name part. */
export function seriesName(module: string): string {
  return KNOWN.find(([long]) => long === module)?.[1] ?? module;
}

/** The tensors of `points` that sit in a numbered layer, with their layer and series. */
export function placePoints(points: readonly ChartPoint[]): Placed[] {
  const placed: Placed[] = [];
  for (const p of points) {
    const m = LAYER.exec(p.name);
    if (!m) continue;
    placed.push({ layer: Number(m[1]), module: seriesName(m[2]!), name: p.name, value: p.value });
  }
  return placed;
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  return x === 0 ? "0" : x.toExponential(2);
}

/**
 * The chart as an SVG element (an empty string when no tensor sits in a numbered layer): one
 * `rect.bar` per (layer, module) with `data-layer`, `data-module`, `data-value` and a tooltip.
 */
export function chartSvg(points: readonly ChartPoint[], title: string): string {
  const placed = placePoints(points);
  if (placed.length === 0) return "";
  const order = (s: string) => {
    const i = KNOWN.findIndex(([, short]) => short === s);
    return i < 0 ? KNOWN.length : i;
  };
  const series = [...new Set(placed.map((p) => p.module))].sort((a, b) =>
    order(a) - order(b) || a.localeCompare(b)
  );
  const layers = [...new Set(placed.map((p) => p.layer))].sort((a, b) => a - b);
  const finite = placed.map((p) => p.value).filter(Number.isFinite);
  const max = Math.max(0, ...finite) || 1;
  const bar = Math.max(2, Math.min(12, Math.floor(900 / (layers.length * (series.length + 1)))));
  const group = bar * (series.length + 1);
  const left = 64, top = 28, height = 220, bottom = 36;
  const legendWidth = series.reduce((w, s) => w + 30 + 7 * s.length, 0);
  const width = Math.max(left + group * layers.length + 16, left + legendWidth);
  const legendY = top + height + bottom;
  const out: string[] = [];
  out.push(
    `<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${
      legendY + 24
    }" role="img" aria-label="${esc(title)}">`,
    `<text x="${left}" y="16" class="chart-title">${esc(title)}</text>`,
  );
  for (const f of [0, 0.5, 1]) {
    const y = top + height - f * height;
    out.push(
      `<line x1="${left}" x2="${left + group * layers.length}" y1="${y}" y2="${y}" class="grid"/>`,
      `<text x="${left - 6}" y="${y + 4}" class="tick" text-anchor="end">${fmt(max * f)}</text>`,
    );
  }
  const every = Math.max(1, Math.ceil(layers.length / 40));
  for (const [li, layer] of layers.entries()) {
    const gx = left + li * group;
    if (li % every === 0) {
      out.push(
        `<text x="${gx + group / 2}" y="${
          top + height + 14
        }" class="tick" text-anchor="middle">${layer}</text>`,
      );
    }
    for (const [si, s] of series.entries()) {
      const p = placed.find((q) => q.layer === layer && q.module === s);
      if (!p) continue;
      const v = Number.isFinite(p.value) ? p.value : max;
      const h = Math.max(0, (v / max) * height);
      out.push(
        `<rect class="bar" x="${gx + si * bar}" y="${(top + height - h).toFixed(2)}" width="${
          bar - 1
        }" height="${h.toFixed(2)}" fill="${
          COLORS[si % COLORS.length]
        }" data-layer="${layer}" data-module="${esc(s)}" data-value="${p.value}"><title>${
          esc(p.name)
        }: ${fmt(p.value)}</title></rect>`,
      );
    }
  }
  out.push(
    `<text x="${left + (group * layers.length) / 2}" y="${
      top + height + 30
    }" class="tick" text-anchor="middle">layer</text>`,
  );
  let x = left;
  for (const [si, s] of series.entries()) {
    out.push(
      `<rect class="legend" x="${x}" y="${legendY}" width="10" height="10" fill="${
        COLORS[si % COLORS.length]
      }"/>`,
      `<text x="${x + 14}" y="${legendY + 9}" class="tick">${esc(s)}</text>`,
    );
    x += 30 + 7 * s.length;
  }
  out.push("</svg>");
  return out.join("\n");
}

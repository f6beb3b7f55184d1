/**
 * `ckpt diff <A> <B>`: what differs between two models, tensor by tensor, streaming. Exit 0 when
 * they are equal within the tolerance, 1 when they are not, 2 on a usage error or an input that
 * cannot be read (as diff(1): scripts and CI can tell "different" from "could not compare").
 * @module
 */
import { CkptError } from "../errors.ts";
import type { BackendChoice } from "../merge/backend.ts";
import {
  type DiffReport,
  diffStateDicts,
  type TensorDiff,
  type Tolerance,
} from "../pipelines/diff/diff.ts";
import { type DiffInput, fillTiedHeads, openDiffInput } from "../pipelines/diff/open.ts";
import { renderReportHtml } from "../pipelines/report/html.ts";
import { diffReportPage } from "../pipelines/report/pages.ts";
import { parseCommand, stringOption, UsageError } from "./_args.ts";

const HELP = `ckpt diff: compare two models tensor by tensor

Usage: ckpt diff <A> <B> [options]

<A> and <B> are anything ckpt reads: a model folder (safetensors or pytorch_model.bin, sharded or
not), a torch.distributed.checkpoint folder, a .safetensors or torch .bin/.pt file. With
--adapter-a/--adapter-b a side is a base model with a LoRA adapter merged on the fly (as ckpt merge
would write it, nothing written). Tensors are matched by name after the wrapper prefixes gather
strips (module., _orig_mod., _fsdp_wrapped_module.), read once each, block by block.

Per tensor: shape/dtype mismatch, max |A-B| and where, max difference in ulps of the wider dtype,
relative norm ||A-B||/||A||, cosine similarity, differing elements (the first with its index);
names only in A or only in B; totals.

Options:
  --tolerance <t>     equal within: <n>ulp (ulps of the wider dtype, e.g. 1ulp) or an absolute
                      difference (e.g. 1e-3 or 1e-3abs); default 0ulp: every value equal
  --allow-dtype       judge tensors whose dtypes differ by their values alone (default: a dtype
                      difference makes the models differ)
  --adapter-a <dir>   merge this LoRA adapter into A before comparing
  --adapter-b <dir>   merge this LoRA adapter into B before comparing
  --backend <b>       merge backend for those: auto (default), webgpu or cpu
  --kind-a <k>        input kind of A instead of detecting it (likewise --kind-b)
  --json              print the full report as JSON (stdout) instead of text
  --html <file>       also write a self-contained HTML page: the summary, a per-layer chart of
                      ||A-B||/||A|| (modules as series) and the sortable table of every tensor
  --all               list every tensor in the text output, not only those that differ
  -h, --help          this help

Exit codes: 0 equal (within the tolerance), 1 different, 2 usage error or unreadable input`;

/** Parses `--tolerance`: `<n>ulp`, `<x>abs` or a plain number (absolute). */
export function parseTolerance(text: string | undefined): Tolerance {
  if (text === undefined) return { ulp: 0 };
  const t = text.trim().toLowerCase();
  const ulp = /^(\d+)\s*ulps?$/.exec(t);
  if (ulp) return { ulp: Number(ulp[1]) };
  const abs = /^([0-9.eE+-]+)\s*(abs)?$/.exec(t);
  const x = abs ? Number(abs[1]) : NaN;
  if (Number.isFinite(x) && x >= 0) return { abs: x };
  throw new UsageError(
    `--tolerance must be <n>ulp (e.g. 1ulp) or a non-negative absolute difference (e.g. 1e-3), not "${text}"`,
  );
}

function backendFlag(v: string | undefined): BackendChoice | undefined {
  if (v === undefined || v === "auto" || v === "cpu" || v === "webgpu") return v;
  throw new UsageError(`--backend must be auto, webgpu or cpu, not "${v}"`);
}

/** A number for a table cell: 0, 3 significant digits, or inf/nan. */
function num(x: number): string {
  if (x === 0) return "0";
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : "inf";
  return Math.abs(x) >= 1e-3 && Math.abs(x) < 1e5
    ? String(Number(x.toPrecision(3)))
    : x.toExponential(2);
}

/** An ulp count exactly (it is an integer), or inf. */
function ulps(x: number): string {
  return Number.isFinite(x) ? String(x) : "inf";
}

function shapeText(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

function describe(side: DiffInput, label: string): string {
  const merged = side.adapter === undefined
    ? ""
    : ` + adapter ${side.adapter} (merged on ${side.backend})`;
  const tied = side.tiedHead === undefined ? "" : `; lm_head.weight tied to ${side.tiedHead}`;
  return `${label}: ${side.path} (${side.kind}${merged}), ${side.stateDict.size} tensors${tied}`;
}

function toleranceText(t: Tolerance): string {
  return "ulp" in t ? `${t.ulp} ulp` : `|A-B| <= ${t.abs}`;
}

/** One line per tensor: name, status, then the figures or the mismatch. */
function tensorLine(t: TensorDiff, width: number): string {
  const name = t.name.padEnd(width);
  if (t.status === "shape") {
    return `  ${name}  shape     A ${t.dtypeA}${shapeText(t.shapeA)}  B ${t.dtypeB}${
      shapeText(t.shapeB)
    }`;
  }
  const dtype = t.dtypeA === t.dtypeB ? "" : `  dtype A ${t.dtypeA} B ${t.dtypeB}`;
  if (t.differing === 0) return `  ${name}  ${t.status.padEnd(9)} ${t.numel} elements${dtype}`;
  const first = t.first
    ? `  first at [${t.first.at.join(", ")}]: A ${t.first.a} B ${t.first.b}`
    : "";
  return `  ${name}  ${t.status.padEnd(9)} max|A-B| ${num(t.maxAbs)}  ${ulps(t.maxUlp)} ulp  ` +
    `rel ${num(t.relNorm)}  cos ${
      t.cosine.toFixed(6)
    }  ${t.differing}/${t.numel} differ${first}${dtype}`;
}

/** The text report `ckpt diff` prints (exported for tests). */
export function formatDiffText(
  report: DiffReport,
  a: DiffInput,
  b: DiffInput,
  all = false,
): string {
  const lines = [
    describe(a, "A"),
    describe(b, "B"),
    `tolerance: ${toleranceText(report.tolerance)}`,
  ];
  const listed = report.tensors.filter((t) => all || t.status !== "equal");
  if (listed.length > 0) {
    const width = Math.min(60, Math.max(...listed.map((t) => t.name.length)));
    lines.push("", all ? "tensors:" : "tensors that are not equal:");
    for (const t of listed) lines.push(tensorLine(t, width));
  }
  if (report.onlyA.length > 0) {
    lines.push(
      "",
      `only in A (${report.onlyA.length}):`,
      ...report.onlyA.map((n) => `  ${n}`),
    );
  }
  if (report.onlyB.length > 0) {
    lines.push(
      "",
      `only in B (${report.onlyB.length}):`,
      ...report.onlyB.map((n) => `  ${n}`),
    );
  }
  const s = report.totals;
  const where = s.maxAbsTensor === undefined ? "" : ` (${s.maxAbsTensor})`;
  lines.push(
    "",
    `total: ${s.compared} compared: ${s.equal} equal, ${s.close} within tolerance, ${s.different} different, ` +
      `${s.dtype} dtype mismatch, ${s.shape} shape mismatch; ${s.onlyA} only in A, ${s.onlyB} only in B`,
    `elements: ${s.differing} of ${s.elements} differ; max |A-B| ${num(s.maxAbs)}${where}; ` +
      `max ${ulps(s.maxUlp)} ulp; ||A-B||/||A|| ${num(s.relNorm)}`,
    report.equal
      ? "A and B are equal" + (s.close > 0 ? " within the tolerance" : "")
      : "A and B differ",
  );
  return lines.join("\n");
}

/** JSON with Infinity and NaN as strings (JSON has no such numbers). */
export function diffJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_k, v) => typeof v === "number" && !Number.isFinite(v) ? String(v) : v,
    2,
  );
}

/** Entry point of `ckpt diff`. */
export async function run(args: string[]): Promise<number> {
  const parsed = parseCommand(args, {
    tolerance: { type: "string" },
    "allow-dtype": { type: "boolean" },
    "adapter-a": { type: "string" },
    "adapter-b": { type: "string" },
    backend: { type: "string" },
    "kind-a": { type: "string" },
    "kind-b": { type: "string" },
    json: { type: "boolean" },
    html: { type: "string" },
    all: { type: "boolean" },
  }, HELP);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 2) {
    throw new UsageError(`expected two inputs to compare, got ${parsed.positionals.length}`);
  }
  const tolerance = parseTolerance(stringOption(parsed, "tolerance"));
  const backend = backendFlag(stringOption(parsed, "backend"));
  const [pathA, pathB] = parsed.positionals as [string, string];
  let a: DiffInput | undefined, b: DiffInput | undefined;
  try {
    a = await openDiffInput(pathA, {
      adapter: stringOption(parsed, "adapter-a"),
      backend,
      kind: stringOption(parsed, "kind-a"),
    });
    b = await openDiffInput(pathB, {
      adapter: stringOption(parsed, "adapter-b"),
      backend,
      kind: stringOption(parsed, "kind-b"),
    });
    fillTiedHeads(a, b);
    const progress = progressLine();
    const report = await diffStateDicts(a.stateDict, b.stateDict, {
      tolerance,
      allowDtype: parsed.values["allow-dtype"] === true,
      ...(progress ? { onTensor: progress.update } : {}),
    });
    progress?.clear();
    const html = stringOption(parsed, "html");
    if (html !== undefined) {
      const page = diffReportPage(report, a, b);
      await Deno.writeTextFile(html, renderReportHtml(page));
      console.error(`ckpt diff: wrote ${html}`);
    }
    if (parsed.values.json === true) {
      console.log(diffJson({ a: sideInfo(a), b: sideInfo(b), ...report }));
    } else console.log(formatDiffText(report, a, b, parsed.values.all === true));
    return report.equal ? 0 : 1;
  } catch (err) {
    if (!(err instanceof CkptError) || err.code === "ABORTED") throw err;
    // "could not compare" is not "different": exit 2, as diff(1) does
    console.error(`ckpt diff: [${err.code}] ${err.message}`);
    return 2;
  } finally {
    await a?.stateDict.close();
    await b?.stateDict.close();
  }
}

/** On a terminal, one line on stderr naming the tensor being compared (none otherwise). */
function progressLine():
  | { update: (d: TensorDiff, i: number, total: number) => void; clear: () => void }
  | undefined {
  if (!Deno.stderr.isTerminal()) return undefined;
  const enc = new TextEncoder();
  const write = (s: string) => Deno.stderr.writeSync(enc.encode(s));
  return {
    update: (d, i, total) => write(`\r\x1b[2K[${i + 1}/${total}] ${d.name}`.slice(0, 200)),
    clear: () => write("\r\x1b[2K"),
  };
}

function sideInfo(s: DiffInput): Record<string, unknown> {
  return {
    path: s.path,
    kind: s.kind,
    tensors: s.stateDict.size,
    ...(s.tiedHead === undefined ? {} : { tiedHead: s.tiedHead }),
    ...(s.adapter === undefined ? {} : { adapter: s.adapter, backend: s.backend }),
  };
}

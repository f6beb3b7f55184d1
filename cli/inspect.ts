/**
 * `ckpt inspect <file|folder>`: lists the tensors of a checkpoint (dtype, shape, size, file),
 * totals and metadata, as a table or `--json`. Reads headers only.
 * @module
 */
import { inspectPath, type InspectReport } from "../readers/inspect.ts";
import { formatSize } from "../formats/size.ts";
import { parseCommand, UsageError } from "./_args.ts";

const HELP = `ckpt inspect: list the tensors and values of a checkpoint file or folder

Usage: ckpt inspect <file|folder> [--json] [--limit N]

Reads only headers (never tensor data) of: a safetensors file, a Hugging Face shard folder
(model.safetensors.index.json, cross-checked against every shard), and the other formats ckpt
reads. Prints each tensor's dtype, shape, size and file, then totals and metadata. Anything
that cannot be read is an error naming the file, the tensor and the check that failed.

Options:
  --json        print the report as one JSON object (for scripts)
  --limit <n>   show at most n tensors in the table (totals still count all)
  -h, --help    this help

Exit codes: 0 ok, 1 unreadable input, 2 usage error`;

/** Renders a report as a plain-text table (what `ckpt inspect` prints without `--json`). */
export function renderReport(report: InspectReport, limit = Infinity): string {
  const lines: string[] = [];
  const fileCount = report.files?.length;
  lines.push(
    `${report.path}: ${report.kind}, ${report.tensors.length} tensors, ${
      formatSize(report.totalBytes)
    } (${report.totalBytes} bytes)${fileCount === undefined ? "" : ` in ${fileCount} files`}`,
  );
  if (report.metadata && Object.keys(report.metadata).length > 0) {
    lines.push(`metadata: ${JSON.stringify(report.metadata)}`);
  }
  const shown = report.tensors.slice(0, limit);
  const rows = shown.map((t) => [
    t.name,
    t.dtype,
    `[${t.shape.join(", ")}]`,
    formatSize(t.bytes),
    t.file ?? "",
  ]);
  const header = ["name", "dtype", "shape", "size", report.files ? "file" : ""];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  if (rows.length > 0) {
    lines.push("", fmt(header), ...rows.map(fmt));
  }
  if (shown.length < report.tensors.length) {
    lines.push(`... ${report.tensors.length - shown.length} more tensors (--limit ${limit})`);
  }
  if (report.files) {
    lines.push("", "files:");
    for (const f of report.files) {
      lines.push(`  ${f.file}  ${f.tensors} tensors, ${formatSize(f.bytes)}`);
    }
  }
  if (report.tree !== undefined) {
    lines.push("", "values:", JSON.stringify(report.tree, null, 2));
  }
  const byDtype = new Map<string, number>();
  for (const t of report.tensors) byDtype.set(t.dtype, (byDtype.get(t.dtype) ?? 0) + t.bytes);
  if (byDtype.size > 0) {
    lines.push(
      "",
      `by dtype: ${[...byDtype].map(([d, b]) => `${d} ${formatSize(b)}`).join(", ")}`,
    );
  }
  return lines.join("\n");
}

/** Entry point of `ckpt inspect`. */
export async function run(args: string[]): Promise<number> {
  const parsed = parseCommand(args, {
    json: { type: "boolean" },
    limit: { type: "string" },
  }, HELP);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`expected one file or folder, got ${parsed.positionals.length}`);
  }
  const limitText = parsed.values.limit;
  let limit = Infinity;
  if (limitText !== undefined) {
    limit = Number(limitText);
    if (!Number.isInteger(limit) || limit < 0) {
      throw new UsageError(`--limit must be a non-negative integer (got "${limitText}")`);
    }
  }
  const report = await inspectPath(parsed.positionals[0]!);
  console.log(parsed.values.json ? JSON.stringify(report, null, 2) : renderReport(report, limit));
  return 0;
}

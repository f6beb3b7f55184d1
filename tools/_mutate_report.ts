/**
 * The report of `deno task mutate` (`.mutate/report.md`): one row per target with its score and,
 * for a sampled run, the sample size and the 95 % interval; then every survivor and every
 * equivalent mutant with its reason.
 * @module
 */
import type { MutantStatus } from "./_mutate_run.ts";
import { type Estimate, stratified, wilson } from "./_mutate_sample.ts";

/** One mutant's outcome, as written to `.mutate/results.json`. */
export interface MutantResult {
  target: string;
  key: string;
  file: string;
  line: number;
  col: number;
  operator: string;
  original: string;
  replacement: string;
  status: MutantStatus;
  tests: string[];
  ms: number;
  failed?: string | undefined;
  fileHash: string;
  /** Mutants in the whole target, and how many of them were drawn (equal when not sampled). */
  population: number;
  drawn: number;
}

/** What the report needs besides the results. */
export interface ReportOptions {
  /** Target names, in report order. */
  targets: string[];
  /** Equivalent mutants: key to reason (`tools/mutate_equivalent.json`). */
  equivalent: Record<string, string>;
  /** Keys of every mutant the run found in the targets it ran (drawn or not): for stale entries. */
  found: Set<string>;
  /** Files of the targets run (an equivalent of another file is never stale here). */
  files: string[];
  /** The run's wall time in minutes, its parallel jobs, and its seed when it sampled. */
  minutes: number;
  jobs: number;
  seed?: number | undefined;
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
const range = (e: Estimate) => `${pct(e.low)} – ${pct(e.high)}`;

/**
 * The Markdown report. A target's score is detected (killed or timed out) over the mutants that
 * compile less the equivalent ones; the interval is exact (a point) when the target was run
 * whole. The "all" row weights each target by the mutants it stands for.
 *
 * @example A whole target with one survivor
 * ```ts
 * import assert from "node:assert/strict";
 * const r = (key: string, status: "killed" | "survived") => ({
 *   target: "t", key, file: "f.ts", line: 1, col: 1, operator: "boundary", original: "<",
 *   replacement: "<=", status, tests: [], ms: 0, fileHash: "", population: 4, drawn: 4,
 * });
 * const md = renderReport([r("a", "killed"), r("b", "killed"), r("c", "killed"), r("d", "survived")], {
 *   targets: ["t"], equivalent: {}, found: new Set(["a", "b", "c", "d"]), files: ["f.ts"],
 *   minutes: 1, jobs: 1,
 * });
 * assert.match(md, /\| t \| 4 of 4 \| 0 \| 3 \| 0 \| 1 \| 0 \| 0 \| 75\.0 % \| 75\.0 % – 75\.0 % \|/);
 * ```
 */
export function renderReport(all: MutantResult[], o: ReportOptions): string {
  const lines: string[] = [
    "| target | mutants run | compile errors | killed | timeouts | survived | no coverage | equivalent | score | 95 % interval |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  const isEq = (r: MutantResult) =>
    r.key in o.equivalent && (r.status === "survived" || r.status === "no-coverage");
  const totals = [0, 0, 0, 0, 0, 0, 0, 0];
  const strata = [];
  for (const name of o.targets) {
    const rs = all.filter((r) => r.target === name);
    if (rs.length === 0) continue;
    const count = (s: MutantStatus) => rs.filter((r) => r.status === s && !isEq(r)).length;
    const population = rs[0]!.population;
    const row = [
      rs.length,
      population,
      count("compile-error"),
      count("killed"),
      count("timeout"),
      count("survived"),
      count("no-coverage"),
      rs.filter(isEq).length,
    ];
    row.forEach((v, i) => totals[i]! += v);
    const detected = row[3]! + row[4]!;
    const valid = rs.length - row[2]! - row[7]!;
    // The valid mutants this target stands for: its population times the valid share drawn.
    const weight = population * valid / rs.length;
    const e = wilson(detected, valid, Math.round(weight));
    strata.push({ k: detected, n: valid, weight });
    const [run, , ...rest] = row;
    lines.push(
      `| ${name} | ${run} of ${population} | ${rest.join(" | ")} | ` +
        `${valid === 0 ? "-" : pct(e.p)} | ${valid === 0 ? "-" : range(e)} |`,
    );
  }
  const e = stratified(strata);
  const [run, population, ...rest] = totals;
  lines.push(
    `| **all** | ${run} of ${population} | ${rest.join(" | ")} | **${pct(e.p)}** | ${range(e)} |`,
  );
  const sampled = all.some((r) => r.drawn < r.population);
  lines.push(
    "",
    `Run time: ${o.minutes.toFixed(1)} min with ${o.jobs} job(s).` +
      (sampled
        ? ` Sampled run (seed ${o.seed}): the interval is the 95 % Wilson interval of each ` +
          `target's sample (finite population corrected); "all" weights each target by the ` +
          `mutants it stands for.`
        : ""),
  );
  const survivors = all.filter((r) =>
    (r.status === "survived" || r.status === "no-coverage") && !isEq(r)
  );
  lines.push("", `## Survivors (${survivors.length})`, "");
  for (const r of survivors.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line)) {
    lines.push(
      `- ${r.file}:${r.line}:${r.col} ${r.operator} \`${r.original}\` -> \`${r.replacement}\`` +
        (r.status === "no-coverage" ? " (no test reaches it)" : ""),
    );
  }
  const eqs = all.filter((r) => r.key in o.equivalent);
  lines.push("", `## Equivalent (${eqs.length}, from tools/mutate_equivalent.json)`, "");
  for (const r of eqs) {
    lines.push(
      `- ${r.file}:${r.line} ${r.operator} \`${r.original}\` -> \`${r.replacement}\`` +
        ` (${r.status}): ${o.equivalent[r.key]}`,
    );
  }
  const stale = Object.keys(o.equivalent).filter((k) =>
    !o.found.has(k) && o.files.some((f) => k.startsWith(f + " "))
  );
  if (stale.length > 0) {
    lines.push("", `## Stale equivalents (no such mutant now)`, "", ...stale.map((k) => `- ${k}`));
  }
  return lines.join("\n") + "\n";
}

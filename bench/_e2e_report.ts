/**
 * Tables of `deno task bench e2e`: the jobs with their ratios to the copy, the issue's targets as
 * ratios met or missed, and the merge's per-phase breakdown.
 * @module
 */
import type { Phase, PhaseTotal } from "../formats/phase_clock.ts";
import { markdownTable } from "./_util.ts";

/** One measured job: best wall time, peak RSS (KiB) when measured, a note. */
export interface Job {
  name: string;
  ms: number;
  rssKiB?: number;
  /** CPU seconds, user + system, all threads. */
  cpuS?: number;
  note: string;
}

const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const mib = (kib?: number) => kib === undefined ? "–" : `${(kib / 1024).toFixed(0)} MiB`;

function find(jobs: Job[], name: string): Job | undefined {
  return jobs.find((j) => j.name === name);
}

/** The jobs as a Markdown table, each wall time also as a multiple of the copy's. */
export function resultTable(jobs: Job[]): string {
  const copy = find(jobs, "copy");
  const halosCopy = find(jobs, "copy of the halos run");
  return markdownTable(
    ["job", "wall", "x copy", "CPU", "peak RSS", "what"],
    jobs.map((j) => {
      const floor = j.name === "halos-final" ? halosCopy : copy;
      // the 4x model has no copy of its own: its row is about memory
      const ratio = floor && j !== floor && !j.name.includes("copy") && !j.name.includes("4x")
        ? `${(j.ms / floor.ms).toFixed(2)}x`
        : "";
      const cpu = j.cpuS === undefined ? "–" : `${j.cpuS.toFixed(2)} s`;
      return [j.name, sec(j.ms), ratio, cpu, mib(j.rssKiB), j.note];
    }),
  );
}

/** The issue's targets, each with the measured ratio and whether it is met. */
export function ratioLines(jobs: Job[]): string[] {
  const lines: string[] = [];
  const line = (what: string, value: number | undefined, target: string, ok: boolean) => {
    if (value === undefined || !Number.isFinite(value)) return;
    lines.push(`${ok ? "met " : "MISS"}  ${what}: ${value.toFixed(2)} (target ${target})`);
  };
  const get = (n: string) => find(jobs, n);
  const copy = get("copy"), merge = get("merge"), gather = get("gather");
  const torch = get("torch script"), peft = get("PEFT merge_and_unload");
  const halos = get("halos-final"), halosCopy = get("copy of the halos run");
  const m4 = get("merge 4x model");
  if (copy && merge) line("merge / copy", merge.ms / copy.ms, "<= 1.5", merge.ms <= 1.5 * copy.ms);
  if (merge && torch) {
    line("torch script / merge", torch.ms / merge.ms, ">= 2.5", torch.ms >= 2.5 * merge.ms);
  }
  if (merge && peft) line("PEFT / merge", peft.ms / merge.ms, ">= 4", peft.ms >= 4 * merge.ms);
  if (merge?.rssKiB !== undefined) {
    line("merge peak RSS, MiB", merge.rssKiB / 1024, "<= 384", merge.rssKiB <= 384 * 1024);
  }
  if (merge?.rssKiB !== undefined && m4?.rssKiB !== undefined) {
    const r = m4.rssKiB / merge.rssKiB;
    line("peak RSS 4x model / 1x model", r, "<= 1.10", r <= 1.1);
  }
  if (copy && gather) {
    line("gather / copy", gather.ms / copy.ms, "<= 1.3", gather.ms <= 1.3 * copy.ms);
  }
  if (halos && halosCopy) {
    line(
      "halos-final / copy of its inputs",
      halos.ms / halosCopy.ms,
      "<= 2.5",
      halos.ms <= 2.5 * halosCopy.ms,
    );
  }
  return lines;
}

const PHASES: Array<[Phase, string]> = [
  ["read", "positional reads of the base (pread into the backend's memory)"],
  ["merge", "blocks on the merge backend (decode, W + s·B·A, encode; the ‖ΔW‖ sums)"],
  ["cast", "dtype conversions outside the kernel"],
  ["write", "output bytes handed to the OS (direct I/O: waiting for the disk to free a block)"],
  ["hash", "sha256 on the hash worker"],
  ["fsync", "background syncs while writing (one at a time), fsyncs before the rename"],
  ["wait-data", "the writer waiting for its next block (read or merge behind)"],
  ["wait-hash", "the writer waiting for the hash worker to free a block"],
];

/** What `_e2e_child.ts` prints. */
export interface PhaseRun {
  ms: number;
  peakRss: number;
  backend: string;
  stages: Array<{ name: string; ms: number }>;
  runnerMs: number;
  phases: Partial<Record<Phase, PhaseTotal>>;
}

/** The merge's breakdown: wall, stages, and the busy time of each phase. */
export function phaseTable(run: PhaseRun): string {
  const head =
    `where the merge's time goes (one instrumented run, backend ${run.backend}): wall ${
      sec(run.ms)
    }; stages ${
      run.stages.map((s) => `${s.name} ${sec(s.ms)}`).join(", ")
    }, runner (hash wait, manifest, fsync, rename) ${sec(run.runnerMs)}.` +
    "\nPhases overlap (reads, merging, writing and hashing run at once): busy time per phase.\n";
  const rows = PHASES.map(([p, what]) => {
    const t = run.phases[p];
    const rate = t && t.bytes > 0 && t.ms > 0
      ? `${(t.bytes / 1e6 / (t.ms / 1000)).toFixed(0)} MB/s`
      : "";
    return [p, t ? sec(t.ms) : "0.00 s", t ? String(t.calls) : "0", rate, what];
  });
  return head + markdownTable(["phase", "busy", "calls", "rate", "what"], rows);
}

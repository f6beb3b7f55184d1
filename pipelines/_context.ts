/**
 * What the runner builds around its stages: the {@linkcode StageContext} every stage shares (with
 * the inputs it records and the reports it makes), and the checks that keep the output away from
 * the inputs (`OUTPUT_INSIDE_INPUT`).
 * @module
 */
import { relative, resolve, sep } from "node:path";
import { CkptError } from "../errors.ts";
import type { BackendChoice } from "../merge/backend.ts";
import type { PipelineConfig } from "./config.ts";
import type { ManifestInput } from "./manifest.ts";
import type { PipelineEvent, StageContext } from "./stage.ts";
import { exists } from "./_staging.ts";

function isInside(child: string, parent: string): boolean {
  const rel = relative(parent, child);
  return rel === "" || (!rel.startsWith("..") && !rel.startsWith(sep) && rel !== "..");
}

/** `OUTPUT_INSIDE_INPUT` when `output` is inside `input` or contains it. */
export function checkOutputAgainst(output: string, input: string, what: string): void {
  if (isInside(output, input) || isInside(input, output)) {
    throw new CkptError(
      "OUTPUT_INSIDE_INPUT",
      `Cannot write output "${output}": it ${
        isInside(output, input) ? "is inside" : "contains"
      } the input ${what} "${input}"`,
      { file: output, details: { output, input } },
    );
  }
}

function collectStrings(value: unknown, out: string[]): void {
  if (typeof value === "string") out.push(value);
  else if (Array.isArray(value)) { for (const v of value) collectStrings(v, out); }
  else if (value !== null && typeof value === "object") {
    for (const v of Object.values(value)) collectStrings(v, out);
  }
}

/** Paths named in stage options that exist on disk: the inputs known before anything runs. */
export async function declaredInputs(config: PipelineConfig): Promise<string[]> {
  const found = new Set<string>();
  for (const s of config.stages) {
    const strings: string[] = [];
    collectStrings(s.options, strings);
    for (const str of strings) {
      if (str === "" || str.length > 4096 || str.includes("\n")) continue;
      const p = resolve(config.baseDir, str);
      if (await exists(p)) found.add(p);
    }
  }
  return [...found];
}

async function statInput(path: string, role: string): Promise<ManifestInput> {
  try {
    const st = await Deno.stat(path);
    return {
      path,
      role,
      ...(st.isFile ? { size: st.size } : {}),
      ...(st.mtime ? { mtime: st.mtime.toISOString() } : {}),
    };
  } catch {
    return { path, role };
  }
}

function mergeReport(into: Record<string, unknown>, data: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(data)) {
    const prev = into[k];
    if (k === "files" && Array.isArray(prev) && Array.isArray(v)) into[k] = [...prev, ...v];
    else into[k] = v;
  }
}

/** What {@linkcode createRunContext} needs. */
export interface RunContextInit {
  cfg: PipelineConfig;
  outDir: string;
  signal: AbortSignal;
  dryRun: boolean;
  backend: BackendChoice | undefined;
  onOutputBytes: StageContext["onOutputBytes"];
  emit: (event: PipelineEvent) => void;
  /** Index of the stage (or preflight) running, whose report `ctx.report` adds to. */
  current: () => number;
}

/** The shared stage context plus what the stages recorded through it. */
export interface RunContext {
  ctx: StageContext;
  /** The report of stage `index` so far. */
  reportOf(index: number): Record<string, unknown>;
  /** Drops the reports made so far (preflights report nothing that counts). */
  clearReports(): void;
  /** Every input recorded with `ctx.addInput`, once their stats are read. */
  inputs(): Promise<ManifestInput[]>;
}

/** Builds the context the runner passes to every stage. */
export function createRunContext(init: RunContextInit): RunContext {
  const { cfg } = init;
  const inputs: ManifestInput[] = [];
  const pendingInputs: Array<Promise<void>> = [];
  const reports = new Map<number, Record<string, unknown>>();
  const ctx: StageContext = {
    outDir: init.outDir,
    baseDir: cfg.baseDir,
    signal: init.signal,
    dryRun: init.dryRun,
    ...(init.backend ? { backend: init.backend } : {}),
    ...(init.onOutputBytes ? { onOutputBytes: init.onOutputBytes } : {}),
    stateDict: undefined,
    modelConfig: undefined,
    modelDir: undefined,
    adapterDir: undefined,
    resolve: (p: string): string => resolve(cfg.baseDir, p),
    emit: init.emit,
    addInput(path: string, role: string): void {
      const abs = resolve(cfg.baseDir, path);
      checkOutputAgainst(cfg.output, abs, role);
      pendingInputs.push(statInput(abs, role).then((i) => void inputs.push(i)));
    },
    report(_stage: string, data: Record<string, unknown>): void {
      const r = reports.get(init.current()) ?? {};
      mergeReport(r, data);
      reports.set(init.current(), r);
    },
  };
  return {
    ctx,
    reportOf: (index) => reports.get(index) ?? {},
    clearReports: () => reports.clear(),
    inputs: async () => {
      await Promise.all(pendingInputs);
      return inputs;
    },
  };
}

/**
 * What the runner builds around its stages: the {@linkcode StageContext} every stage shares (with
 * the inputs it records and the reports it makes), and the checks that keep the output away from
 * the inputs (`OUTPUT_INSIDE_INPUT`).
 * @module
 */
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { CkptError } from "../errors.ts";
import type { BackendChoice } from "../merge/backend.ts";
import type { PipelineConfig } from "./config.ts";
import type { ManifestInput } from "./manifest.ts";
import type { PartContext, PipelineEvent, StageContext } from "./stage.ts";
import { exists } from "./_staging.ts";

function isInside(child: string, parent: string): boolean {
  const rel = relative(parent, child);
  return rel === "" || (!rel.startsWith("..") && !rel.startsWith(sep) && rel !== "..");
}

/** The real path of `p`: symlinks resolved in its nearest existing ancestor, the rest appended. */
export function realPathOf(p: string): string {
  const rest: string[] = [];
  for (let cur = resolve(p);; cur = dirname(cur)) {
    try {
      return join(Deno.realPathSync(cur), ...rest.reverse());
    } catch {
      if (dirname(cur) === cur) return resolve(p);
      rest.push(basename(cur));
    }
  }
}

/** `dev:ino` of `p` and of every existing folder above it (symlinks followed). */
function identities(p: string): Set<string> {
  const ids = new Set<string>();
  for (let cur = realPathOf(p);; cur = dirname(cur)) {
    try {
      const st = Deno.statSync(cur);
      ids.add(`${st.dev}:${st.ino}`);
    } catch {
      // not there (yet): its parents still count
    }
    if (dirname(cur) === cur) return ids;
  }
}

function identity(p: string): string | undefined {
  try {
    const st = Deno.statSync(p);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * Where `output` stands to `input`: "is inside", "contains" or undefined. Compares the path text,
 * the real paths (symlinked parents resolved) and device/inode pairs (bind mounts, hard-linked
 * paths), so no spelling of a path lets an output replace an input.
 */
function relation(output: string, input: string): "is inside" | "contains" | undefined {
  if (isInside(output, input)) return "is inside";
  if (isInside(input, output)) return "contains";
  const [realOut, realIn] = [realPathOf(output), realPathOf(input)];
  if (isInside(realOut, realIn)) return "is inside";
  if (isInside(realIn, realOut)) return "contains";
  const inId = identity(input);
  if (inId !== undefined && identities(output).has(inId)) return "is inside";
  const outId = identity(output);
  if (outId !== undefined && identities(input).has(outId)) return "contains";
  return undefined;
}

/**
 * `OUTPUT_INSIDE_INPUT` when `output` is inside `input` or contains it, by path text, real path
 * or device/inode.
 */
export function checkOutputAgainst(output: string, input: string, what: string): void {
  const how = relation(output, input);
  if (how === undefined) return;
  const real = realPathOf(output);
  throw new CkptError(
    "OUTPUT_INSIDE_INPUT",
    `Cannot write output "${output}"${real === output ? "" : ` (really "${real}")`}: it ${how} ` +
      `the input ${what} "${input}"`,
    { file: output, details: { output, input, realOutput: real, realInput: realPathOf(input) } },
  );
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
      if (str === "" || str.includes("\n")) continue;
      // No bound on the length: resolve() folds "./" and "x/.." away, so a long option can name
      // an existing path. One that is no path at all (too long a name, say) is simply not an input.
      const p = resolve(config.baseDir, str);
      if (await exists(p).catch(() => false)) found.add(p);
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
  /** The part of a split export this run is (`ctx.part`); absent in a one-machine run. */
  part?: PartContext;
  /** Takes the checks a preflight defers (`ctx.defer`, the stage loop's). */
  defer?: (check: Promise<void>) => void;
  /** Takes what a preflight keeps open for its run (`ctx.closeAtEnd`, the stage loop's). */
  closeAtEnd?: (close: () => Promise<void>) => void;
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
  // Kept in the order the stages recorded them, whichever stat answers first.
  const pendingInputs: Array<Promise<ManifestInput>> = [];
  const reports = new Map<number, Record<string, unknown>>();
  const ctx: StageContext = {
    outDir: init.outDir,
    baseDir: cfg.baseDir,
    signal: init.signal,
    dryRun: init.dryRun,
    ...(init.backend ? { backend: init.backend } : {}),
    ...(init.onOutputBytes ? { onOutputBytes: init.onOutputBytes } : {}),
    ...(init.part ? { part: init.part } : {}),
    ...(init.defer ? { defer: init.defer } : {}),
    ...(init.closeAtEnd ? { closeAtEnd: init.closeAtEnd } : {}),
    stateDict: undefined,
    modelConfig: undefined,
    modelDir: undefined,
    adapterDir: undefined,
    resolve: (p: string): string => resolve(cfg.baseDir, p),
    emit: init.emit,
    addInput(path: string, role: string): void {
      const abs = resolve(cfg.baseDir, path);
      checkOutputAgainst(cfg.output, abs, role);
      pendingInputs.push(statInput(abs, role));
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
    inputs: () => Promise.all(pendingInputs),
  };
}

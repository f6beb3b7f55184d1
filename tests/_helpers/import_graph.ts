/**
 * The library's real import graph and the three architecture rules checked on it
 * (`tests/architecture_test.ts`, described in `docs/architecture.md`):
 *
 * - no import cycle among source files, not even between two files of one folder;
 * - no upward import between the top-level folders ({@linkcode LAYERS}, low to high);
 * - no source file over {@linkcode MAX_SOURCE_LINES} lines.
 *
 * The graph comes from `deno info --json` (Deno's own module graph: static, dynamic and type-only
 * imports, resolved as Deno resolves them), run once on a temporary root that imports every source
 * file, with local files only (npm packages and remote modules are not fetched), plus the worker
 * entry points started with `new Worker(new URL("./x.ts", import.meta.url))`, which no import
 * statement names.
 *
 * ```sh
 * deno run -A tests/_helpers/import_graph.ts   # print the graph's cross-folder imports
 * ```
 * @module
 */
import { join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { sourceFiles } from "./error_codes.ts";
import { REPO_ROOT } from "./peer.ts";

/** How one file reaches another. */
export type ImportKind = "static" | "dynamic" | "type" | "worker";

/** One import of one file by another, both relative to the root (`formats/dcp.ts`). */
export interface ImportEdge {
  /** The importing file. */
  from: string;
  /** The imported file. */
  to: string;
  /** `static` (import/export from), `dynamic` (`import()`), `type` (types only) or `worker`. */
  kind: ImportKind;
}

/** Every file of the graph with the imports it makes (files inside the root only). */
export type ImportGraph = Map<string, ImportEdge[]>;

/** Longest a source file may be, in lines. */
export const MAX_SOURCE_LINES = 500;

/**
 * The layers, low to high: a file may import files of its own layer and of lower layers only.
 * Each entry lists the top-level files and folders that form it.
 */
export const LAYERS: readonly (readonly string[])[] = [
  ["errors.ts", "errors"],
  ["formats"],
  ["readers"],
  ["kernels"],
  ["gpu"],
  ["merge"],
  ["pipelines"],
  ["cli", "cli.ts", "mod.ts"],
];

/**
 * The layer (index into {@linkcode LAYERS}) of a file, from its first path segment; undefined for
 * a file outside every layer (tests, tools, a new top-level folder no layer names yet).
 */
export function layerOf(file: string, layers: readonly (readonly string[])[] = LAYERS) {
  const top = file.split("/")[0]!;
  const i = layers.findIndex((names) => names.includes(top));
  return i < 0 ? undefined : i;
}

interface DenoInfoDependency {
  code?: { specifier?: string };
  type?: { specifier?: string };
  isDynamic?: boolean;
}
interface DenoInfoModule {
  specifier?: string;
  dependencies?: DenoInfoDependency[];
}

/**
 * Reads the import graph of `files` (relative to `root`) with `deno info --json`. Only imports of
 * files inside `root` are kept (npm packages, `node:` built-ins and JSON are left out). Throws
 * when `deno info` fails or leaves one of `files` out of its graph.
 */
export async function readImportGraph(
  files: readonly string[],
  root: string = REPO_ROOT,
  config: string | null = join(root, "deno.json"),
): Promise<ImportGraph> {
  const dir = await Deno.makeTempDir({ prefix: "ckpt-import-graph-" });
  try {
    const entry = join(dir, "all.ts");
    const lines = files.map((f) => `import ${JSON.stringify(pathToFileURL(join(root, f)).href)};`);
    await Deno.writeTextFile(entry, lines.join("\n") + "\n");
    // Local files only: npm packages and remote modules are not resolved (no network, no lock).
    const args = ["info", "--json", "--no-npm", "--no-remote", "--no-lock"];
    args.push(...(config ? ["--config", config] : ["--no-config"]), entry);
    const out = await new Deno.Command(Deno.execPath(), { args, cwd: root, stderr: "piped" })
      .output();
    if (!out.success) {
      throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr).trim()}`);
    }
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: DenoInfoModule[] };
    return await graphFromInfo(info.modules, files, resolve(root));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function graphFromInfo(
  modules: DenoInfoModule[],
  files: readonly string[],
  root: string,
): Promise<ImportGraph> {
  const inside = (specifier: string | undefined): string | undefined => {
    if (!specifier?.startsWith("file:")) return undefined;
    const rel = relative(root, fileURLToPath(specifier));
    return rel.startsWith("..") || rel.startsWith("/") ? undefined : rel.split("\\").join("/");
  };
  const graph: ImportGraph = new Map();
  for (const m of modules) {
    const from = inside(m.specifier);
    if (from === undefined || !from.endsWith(".ts")) continue;
    const edges: ImportEdge[] = [];
    const add = (to: string | undefined, kind: ImportKind) => {
      if (to !== undefined && to.endsWith(".ts") && !edges.some((e) => e.to === to)) {
        edges.push({ from, to, kind });
      }
    };
    for (const d of m.dependencies ?? []) {
      add(inside(d.code?.specifier), d.isDynamic ? "dynamic" : "static");
      add(inside(d.type?.specifier), "type");
    }
    const text = await Deno.readTextFile(join(root, from));
    for (const w of workerEntries(text)) {
      add(inside(new URL(w, pathToFileURL(join(root, from))).href), "worker");
    }
    graph.set(from, edges);
  }
  const missing = files.filter((f) => !graph.has(f));
  if (missing.length > 0) throw new Error(`deno info left out ${missing.join(", ")}`);
  return graph;
}

/** The worker entry points a file starts: `new Worker(new URL("./x.ts", import.meta.url))`. */
export function workerEntries(text: string): string[] {
  const re =
    /new\s+Worker\(\s*new\s+URL\(\s*["'`](\.{1,2}\/[^"'`]+\.ts)["'`]\s*,\s*import\.meta\.url\s*\)/g;
  return [...text.matchAll(re)].map((m) => m[1]!);
}

/**
 * The import cycles of a graph: one per strongly connected group of files, written as the path
 * that leaves its first file (in sort order) and comes back to it (`["a.ts", "b.ts", "a.ts"]`).
 * A file that imports itself is a cycle of one. Empty when the graph has no cycle.
 */
export function findCycles(graph: ImportGraph): string[][] {
  const next = (v: string) => (graph.get(v) ?? []).map((e) => e.to);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const groups: string[][] = [];
  // Tarjan's algorithm, iterative so that a long import chain cannot overflow the call stack.
  for (const start of [...graph.keys()].sort()) {
    if (index.has(start)) continue;
    const work: { v: string; i: number }[] = [{ v: start, i: 0 }];
    index.set(start, index.size);
    low.set(start, index.get(start)!);
    stack.push(start);
    onStack.add(start);
    while (work.length > 0) {
      const top = work[work.length - 1]!;
      const targets = next(top.v);
      if (top.i < targets.length) {
        const w = targets[top.i++]!;
        if (!index.has(w)) {
          index.set(w, index.size);
          low.set(w, index.get(w)!);
          stack.push(w);
          onStack.add(w);
          work.push({ v: w, i: 0 });
        } else if (onStack.has(w)) {
          low.set(top.v, Math.min(low.get(top.v)!, index.get(w)!));
        }
        continue;
      }
      work.pop();
      const parent = work[work.length - 1];
      if (parent) low.set(parent.v, Math.min(low.get(parent.v)!, low.get(top.v)!));
      if (low.get(top.v) === index.get(top.v)) {
        const group: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          group.push(w);
        } while (w !== top.v);
        if (group.length > 1 || next(top.v).includes(top.v)) groups.push(group.sort());
      }
    }
  }
  return groups.map((g) => cyclePath(g[0]!, new Set(g), next)).sort((a, b) =>
    a[0]!.localeCompare(b[0]!)
  );
}

/** The shortest path from `start` back to itself inside one strongly connected group. */
function cyclePath(start: string, group: Set<string>, next: (v: string) => string[]): string[] {
  const from = new Map<string, string>();
  const queue = [start];
  for (let q = 0; q < queue.length; q++) {
    const v = queue[q]!;
    for (const w of next(v)) {
      if (!group.has(w)) continue;
      if (w === start) {
        const path: string[] = [];
        for (let u = v; u !== start; u = from.get(u)!) path.unshift(u);
        return [start, ...path, start];
      }
      if (!from.has(w)) {
        from.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start];
}

/**
 * The imports that break the layer rule, one line each (`formats/x.ts (formats) imports
 * merge/y.ts (merge)`): an import of a higher layer, or of a file outside every layer (a test or
 * tool). Imports inside one layer are allowed (cycles are {@linkcode findCycles}'s job).
 */
export function findUpwardImports(
  graph: ImportGraph,
  layers: readonly (readonly string[])[] = LAYERS,
): string[] {
  const name = (f: string) => {
    const l = layerOf(f, layers);
    return l === undefined ? "no layer" : layers[l]!.join(", ");
  };
  const found: string[] = [];
  for (const [from, edges] of [...graph].sort(([a], [b]) => a.localeCompare(b))) {
    const own = layerOf(from, layers);
    if (own === undefined) continue;
    for (const e of edges) {
      const to = layerOf(e.to, layers);
      if (to === undefined || to > own) {
        found.push(`${from} (${name(from)}) imports ${e.to} (${name(e.to)}; ${e.kind} import)`);
      }
    }
  }
  return found;
}

/** Number of lines of a text (a final newline does not start another line). */
export function countLines(text: string): number {
  if (text === "") return 0;
  return text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
}

/** The files longer than `max` lines, as `"file: N lines"`, longest first. */
export function findLongFiles(
  lines: ReadonlyMap<string, number>,
  max: number = MAX_SOURCE_LINES,
): string[] {
  return [...lines].filter(([, n]) => n > max).sort((a, b) =>
    b[1] - a[1] || a[0].localeCompare(b[0])
  )
    .map(([f, n]) => `${f}: ${n} lines (at most ${max})`);
}

if (import.meta.main) {
  const files = await sourceFiles();
  const graph = await readImportGraph(files);
  const top = (f: string) => f.split("/")[0]!;
  const counts = new Map<string, number>();
  for (const edges of graph.values()) {
    for (const e of edges) {
      if (top(e.from) !== top(e.to)) {
        const key = `${top(e.from)} -> ${top(e.to)}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
    }
  }
  for (const [k, n] of [...counts].sort()) console.log(`${k}: ${n}`);
}

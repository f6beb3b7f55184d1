/**
 * The architecture rules of docs/architecture.md, checked on the real import graph (Deno's own,
 * from `deno info`): no import cycle among source files, no import from a lower layer into a higher
 * one, no source file over 500 lines. Each rule is also run on a small made-up graph that breaks
 * it, so a rule that could never fail would show here.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { sourceFiles } from "./_helpers/error_codes.ts";
import {
  countLines,
  findCycles,
  findLongFiles,
  findUpwardImports,
  type ImportEdge,
  type ImportGraph,
  type ImportKind,
  layerOf,
  LAYERS,
  MAX_SOURCE_LINES,
  readImportGraph,
  workerEntries,
} from "./_helpers/import_graph.ts";
import { REPO_ROOT } from "./_helpers/peer.ts";
import { withTempDir } from "./_helpers/tmp.ts";

const files = await sourceFiles();
const graph = await readImportGraph(files);

/** A made-up graph from `"a.ts -> b.ts"` lines (static imports unless a kind follows). */
function graphOf(...lines: string[]): ImportGraph {
  const g: ImportGraph = new Map();
  for (const line of lines) {
    const [from, to, kind = "static"] = line.split(/\s*->\s*|\s+/) as [string, string, ImportKind?];
    const edge: ImportEdge = { from, to, kind };
    g.set(from, [...(g.get(from) ?? []), edge]);
    if (!g.has(to)) g.set(to, []);
  }
  return g;
}

Deno.test("the import graph holds every source file and the imports Deno sees in them", () => {
  assert.ok(files.length > 100, `only ${files.length} source files found`);
  assert.deepEqual([...graph.keys()].filter((f) => !files.includes(f)), []);
  const has = (from: string, to: string, kind: ImportKind) =>
    graph.get(from)?.some((e) => e.to === to && e.kind === kind) ?? false;
  assert.ok(has("mod.ts", "errors.ts", "static"), "mod.ts re-exports errors.ts");
  assert.ok(has("cli.ts", "cli/run.ts", "dynamic"), "cli.ts loads cli/run.ts lazily");
  assert.ok(has("kernels/cpu/backend.ts", "kernels/cpu/worker.ts", "worker"), "the CPU workers");
  const edges = [...graph.values()].reduce((n, e) => n + e.length, 0);
  assert.ok(edges > 300, `only ${edges} imports found`);
});

Deno.test("no source file is part of an import cycle", () => {
  assert.deepEqual(findCycles(graph), []);
});

Deno.test("every source file belongs to a layer", () => {
  assert.deepEqual(files.filter((f) => layerOf(f) === undefined), []);
});

Deno.test("no source file imports a higher layer (or a test or tool)", () => {
  assert.deepEqual(findUpwardImports(graph), []);
});

Deno.test(`no source file is over ${MAX_SOURCE_LINES} lines`, async () => {
  const lines = new Map<string, number>();
  for (const f of files) lines.set(f, countLines(await Deno.readTextFile(join(REPO_ROOT, f))));
  assert.deepEqual(findLongFiles(lines), []);
  assert.ok(Math.max(...lines.values()) > 100, "line counts were read");
});

Deno.test("findCycles() finds a circle of two, a longer circle and a self-import, not a diamond", () => {
  assert.deepEqual(findCycles(graphOf("a.ts -> b.ts", "b.ts -> a.ts")), [["a.ts", "b.ts", "a.ts"]]);
  assert.deepEqual(
    findCycles(graphOf("x.ts -> y.ts", "y.ts -> z.ts", "z.ts -> x.ts", "z.ts -> w.ts")),
    [["x.ts", "y.ts", "z.ts", "x.ts"]],
  );
  assert.deepEqual(findCycles(graphOf("s.ts -> s.ts")), [["s.ts", "s.ts"]]);
  assert.deepEqual(
    findCycles(graphOf("top.ts -> l.ts", "top.ts -> r.ts", "l.ts -> end.ts", "r.ts -> end.ts")),
    [],
  );
  assert.deepEqual(
    findCycles(graphOf("a.ts -> b.ts type", "b.ts -> c.ts dynamic", "c.ts -> a.ts worker")),
    [["a.ts", "b.ts", "c.ts", "a.ts"]],
    "type-only, dynamic and worker imports close a cycle too",
  );
});

Deno.test("findUpwardImports() reports a lower layer importing a higher one, or a test", () => {
  const g = graphOf(
    "formats/dtype.ts -> merge/lora.ts type",
    "merge/lora.ts -> formats/dtype.ts",
    "merge/lora.ts -> merge/dora.ts",
    "errors/os.ts -> errors.ts",
    "kernels/types.ts -> tests/_helpers/tmp.ts",
    "tests/x_test.ts -> cli.ts",
  );
  assert.deepEqual(findUpwardImports(g), [
    "formats/dtype.ts (formats) imports merge/lora.ts (merge; type import)",
    "kernels/types.ts (kernels) imports tests/_helpers/tmp.ts (no layer; static import)",
  ]);
});

Deno.test("layerOf() places files by their top-level folder, low to high", () => {
  assert.deepEqual(
    ["errors.ts", "errors/os.ts", "formats/torch/zip.ts", "readers/kinds.ts", "kernels/cpu/x.ts"]
      .map((f) => layerOf(f)),
    [0, 0, 1, 2, 3],
  );
  assert.deepEqual(
    ["gpu/device.ts", "merge/lora.ts", "pipelines/run.ts", "cli/run.ts", "cli.ts", "mod.ts"]
      .map((f) => layerOf(f)),
    [4, 5, 6, 7, 7, 7],
  );
  assert.equal(layerOf("tests/architecture_test.ts"), undefined);
  assert.equal(layerOf("newfolder/x.ts"), undefined);
  assert.equal(LAYERS.length, 8);
});

Deno.test("findLongFiles() reports 501 lines, not 500", () => {
  assert.equal(countLines("a\nb\n"), 2);
  assert.equal(countLines("a\nb"), 2);
  assert.equal(countLines(""), 0);
  const lines = new Map([["ok.ts", 500], ["long.ts", 501], ["longer.ts", 900]]);
  assert.deepEqual(findLongFiles(lines), [
    "longer.ts: 900 lines (at most 500)",
    "long.ts: 501 lines (at most 500)",
  ]);
});

Deno.test("readImportGraph() sees static, type-only, dynamic and worker imports", async () => {
  await withTempDir(async (dir) => {
    const write = (name: string, text: string) => Deno.writeTextFile(join(dir, name), text);
    await write("a.ts", `import type { B } from "./b.ts";\nexport const a: B = 1;\n`);
    await write("b.ts", `export type B = number;\nexport const load = () => import("./c.ts");\n`);
    await write(
      "c.ts",
      `import { d } from "./d.ts";\n` +
        `new Worker(new URL("./a.ts", import.meta.url), { type: "module" });\nexport { d };\n`,
    );
    await write("d.ts", `export const d = 1;\n`);
    const g = await readImportGraph(["a.ts", "b.ts", "c.ts", "d.ts"], dir, null);
    const edges = [...g.values()].flat().map((e) => `${e.from} -> ${e.to} ${e.kind}`).sort();
    assert.deepEqual(edges, [
      "a.ts -> b.ts type",
      "b.ts -> c.ts dynamic",
      "c.ts -> a.ts worker",
      "c.ts -> d.ts static",
    ]);
    assert.deepEqual(findCycles(g), [["a.ts", "b.ts", "c.ts", "a.ts"]]);
  });
});

Deno.test("workerEntries() reads the .ts files a module starts as workers, nothing else", () => {
  const text = [
    `new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });`,
    `const w = new Worker(\n  new URL('../x/_hash.ts', import.meta.url));`,
    `const doc = new URL("./optimizer.ts", import.meta.url).pathname;`,
    `new Worker(new URL("https://e.com/a.ts"));`,
  ].join("\n");
  assert.deepEqual(workerEntries(text), ["./worker.ts", "../x/_hash.ts"]);
});

// docs/architecture.md: the map a newcomer reads must match the code.
const doc = await Deno.readTextFile(join(REPO_ROOT, "docs/architecture.md"));

/**
 * Every path-like `code span` of a markdown text: `formats/dcp.ts`, `kernels/cpu/`, `mod.ts`, and
 * bare source names (`kernel.ts`) in a list after their folder. Output names (`config.json`) and
 * placeholders (`_<name>.ts`) are not paths.
 */
function namedPaths(text: string): string[] {
  return [...text.matchAll(/`([a-z_][\w.*-]*(?:\/[\w.*-]*)*)`/g)].map((m) => m[1]!)
    .filter((p) => p.includes("/") || /\.(ts|jsonc|py)$/.test(p));
}

/** Every file and folder under the root (relative, folders with a trailing `/`). */
async function repoPaths(): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for await (const e of Deno.readDir(join(REPO_ROOT, dir))) {
      if (e.name.startsWith(".") || e.name === "node_modules") continue;
      const rel = `${dir}${e.name}`;
      if (e.isDirectory) {
        out.push(`${rel}/`);
        await walk(`${rel}/`);
      } else out.push(rel);
    }
  };
  await walk("");
  return out;
}

/**
 * Whether `pattern` (a path from the root, a folder ending in `/`, a glob with `*`, or a bare file
 * name, which may be in any folder) names one of `paths`.
 */
function names(pattern: string, paths: readonly string[]): boolean {
  const re = new RegExp(
    (pattern.includes("/") ? "^" : "(^|/)") +
      pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*") + "$",
  );
  return paths.some((p) => re.test(p));
}

Deno.test("namedPaths() and names() read files, folders and globs out of markdown", () => {
  const text = "see `formats/dcp.ts`, `kernels/cpu/`, `mod.ts`, `formats/_dcp_*.ts`, `W + s`, " +
    "`@ckpt/pipelines/formats`, `module.`, `config.json`, `_<name>.ts`, `ckpt merge`, `kernel.ts`";
  const found = namedPaths(text);
  assert.deepEqual(found, [
    "formats/dcp.ts",
    "kernels/cpu/",
    "mod.ts",
    "formats/_dcp_*.ts",
    "kernel.ts",
  ]);
  const paths = [
    "formats/dcp.ts",
    "formats/_dcp_records.ts",
    "kernels/cpu/",
    "kernels/cpu/kernel.ts",
    "mod.ts",
  ];
  assert.deepEqual(found.map((p) => names(p, paths)), [true, true, true, true, true]);
  assert.equal(names("formats/_dcp_*.ts", ["formats/dcp.ts"]), false);
  assert.equal(names("formats/gone.ts", paths), false);
  assert.equal(names("kernels/", paths), false);
  assert.equal(names("dcp.ts", ["formats/xdcp.ts", "formats/dcp.ts.bak"]), false);
});

Deno.test("every file and folder docs/architecture.md names exists", async () => {
  const paths = await repoPaths();
  const named = namedPaths(doc);
  assert.ok(named.length > 60, `only ${named.length} paths named`);
  assert.deepEqual(named.filter((p) => !names(p, paths)), []);
});

Deno.test("docs/architecture.md names every source folder", () => {
  const folders = [...new Set(files.map((f) => f.split("/").slice(0, -1).join("/")))]
    .filter((f) => f !== "");
  const named = new Set(namedPaths(doc));
  const missing = folders.filter((f) =>
    !named.has(`${f}/`) && !named.has(f) && ![...named].some((p) => p.startsWith(`${f}/`))
  );
  assert.deepEqual(missing, []);
});

Deno.test("docs/architecture.md's layer table is the one the test enforces", () => {
  const rows = [...doc.matchAll(/^\|\s*(\d+)\s*\|([^|]+)\|/gm)].map((m) =>
    [...m[2]!.matchAll(/`([^`]+)`/g)].map((n) => n[1]!.replace(/\/$/, "")).sort()
  );
  assert.deepEqual(rows, LAYERS.map((l) => [...l].sort()));
});

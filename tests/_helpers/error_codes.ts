/**
 * Collects every `CkptError` code the library throws (scanning the sources) for the README's
 * "Error codes" table, and keeps that table current:
 *
 * ```sh
 * deno run -A tests/_helpers/error_codes.ts --write && deno fmt README.md   # regenerate the table
 * ```
 * @module
 */
import { join, relative } from "node:path";
import { REPO_ROOT } from "./peer.ts";

/** One error code: where it is raised and the first message template found. */
export interface ErrorCodeInfo {
  code: string;
  files: string[];
  message: string;
}

const ROOTS = ["errors.ts", "cli.ts", "formats", "readers", "merge", "gpu", "pipelines", "cli"];

async function sources(path: string): Promise<string[]> {
  const st = await Deno.stat(path);
  if (st.isFile) return path.endsWith(".ts") ? [path] : [];
  const out: string[] = [];
  for await (const e of Deno.readDir(path)) out.push(...await sources(join(path, e.name)));
  return out.sort();
}

/** Every code in `new CkptError("CODE", "message"...)` under the library folders. */
export async function collectErrorCodes(root: string = REPO_ROOT): Promise<ErrorCodeInfo[]> {
  const codes = new Map<string, ErrorCodeInfo>();
  for (const r of ROOTS) {
    for (const file of await sources(join(root, r))) {
      const text = await Deno.readTextFile(file);
      const re = /CkptError\(\s*"([A-Z0-9_]+)",\s*(`(?:[^`\\]|\\.)*`|"(?:[^"\\]|\\.)*")/g;
      for (const m of text.matchAll(re)) {
        const code = m[1]!;
        if (code === "SAFETENSORS_HEADER" && file.endsWith("errors.ts")) continue; // a doc example
        const message = m[2]!.slice(1, -1).replace(/\$\{[^`]*?\}/g, "…").replace(/\s+/g, " ");
        const info = codes.get(code) ?? { code, files: [], message };
        const rel = relative(root, file);
        if (!info.files.includes(rel)) info.files.push(rel);
        codes.set(code, info);
      }
    }
  }
  return [...codes.values()].sort((a, b) => a.code < b.code ? -1 : 1);
}

/** The markdown rows of the table. */
export function errorTable(codes: ErrorCodeInfo[]): string {
  return codes.map((c) => {
    let msg = c.message.replaceAll("|", "\\|");
    if (msg.length > 110) msg = `${msg.slice(0, 107)}...`;
    const where = c.files.map((f) => `\`${f}\``).join(", ");
    return `| \`${c.code}\` | ${where} | ${msg} |`;
  }).join("\n");
}

const HEADER = /^\| code +\| raised by +\| meaning +\|\n\|[-| ]+\|\n/m;
const END = "\n\n## Benchmarks";

/** README text with the table rows between the header and the Benchmarks section replaced. */
export function withTable(readme: string, table: string): string {
  const m = HEADER.exec(readme);
  const b = m ? readme.indexOf(END, m.index) : -1;
  if (!m || b < 0) throw new Error("README has no error-code table");
  return readme.slice(0, m.index) +
    "| code | raised by | meaning |\n| ---- | --------- | ------- |\n" +
    table + readme.slice(b);
}

if (import.meta.main) {
  const table = errorTable(await collectErrorCodes());
  if (Deno.args.includes("--write")) {
    const path = join(REPO_ROOT, "README.md");
    await Deno.writeTextFile(path, withTable(await Deno.readTextFile(path), table));
  } else console.log(table);
}

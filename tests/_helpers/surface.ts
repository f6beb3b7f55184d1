/**
 * The names a module exports, with their kind, read by `deno doc --json` (types included), for the
 * public-surface test. Printing them writes the committed list after a deliberate change:
 *
 * ```sh
 * deno run -A tests/_helpers/surface.ts > tests/mod_exports.txt
 * ```
 * @module
 */
import { join } from "node:path";
import { REPO_ROOT } from "./peer.ts";

/** The committed list of the names `mod.ts` exports. */
export const SURFACE_FILE = "tests/mod_exports.txt";

interface DocSymbol {
  name: string;
  declarations: { kind: string }[];
}

/**
 * `"kind name"` for every name `entry` (relative to the repository root) exports, sorted by name;
 * a name declared more than once (a function and a namespace) lists its kinds joined by `+`.
 */
export async function exportedNames(entry: string, root: string = REPO_ROOT): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", join(root, entry)],
    cwd: root,
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  const doc = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    nodes: Record<string, { symbols?: DocSymbol[] }>;
  };
  const symbols = Object.values(doc.nodes)[0]?.symbols ?? [];
  return symbols
    .map((s) => `${[...new Set(s.declarations.map((d) => d.kind))].sort().join("+")} ${s.name}`)
    .sort((a, b) => a.split(" ")[1]!.localeCompare(b.split(" ")[1]!) || a.localeCompare(b));
}

/** The committed list, one `"kind name"` per line (blank lines and `#` comments left out). */
export async function committedNames(root: string = REPO_ROOT): Promise<string[]> {
  const text = await Deno.readTextFile(join(root, SURFACE_FILE));
  return text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
}

if (import.meta.main) {
  console.log("# The names mod.ts exports (kind name). Changing mod.ts's surface is deliberate:");
  console.log("# regenerate with deno run -A tests/_helpers/surface.ts > tests/mod_exports.txt");
  for (const line of await exportedNames("mod.ts")) console.log(line);
}

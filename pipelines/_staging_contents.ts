/**
 * What a staging folder must hold before it may become the output: exactly the files the stages
 * reported, with the sizes they reported. Anything else, of any type (a file, a symlink, a FIFO,
 * an empty folder), is `STAGING_UNREPORTED`; a reported file that is missing, not a regular file
 * or of another size is `STAGING_MISMATCH`. The manifest then lists the reported files, so it
 * can never list what a stage did not write, nor miss what it did.
 * @module
 */
import { dirname, join } from "node:path";
import { CkptError } from "../errors.ts";
import { fsStep } from "./_faults.ts";

/** Name of the manifest file (kept here so the staging modules need nothing from manifest.ts). */
export const MANIFEST_NAME = "ckpt-manifest.json";

/** One file a stage reported writing: path relative to the folder, size when reported. */
export interface ReportedFile {
  path: string;
  bytes: number | undefined;
  stage: string;
}

/**
 * Checks `folder` holds exactly the reported `files` (the manifest and the top-level names in
 * `ignore` excepted); resolves to their paths, `/`-separated and sorted.
 */
export async function checkContents(
  folder: string,
  files: readonly ReportedFile[],
  ignore: ReadonlySet<string> = new Set(),
): Promise<string[]> {
  const reported = new Map<string, ReportedFile>();
  for (const f of files) reported.set(checkRelPath(f, folder), f);
  reported.delete(MANIFEST_NAME);
  const folders = new Set<string>();
  for (const p of reported.keys()) {
    for (let d = dirname(p); d !== "."; d = dirname(d)) folders.add(d);
  }
  await checkEntries(folder, "", reported, folders, ignore);
  for (const [rel, f] of reported) {
    const abs = join(folder, rel);
    fsStep("stat", abs);
    const st = await Deno.lstat(abs).catch(() => undefined);
    if (!st?.isFile || (f.bytes !== undefined && st.size !== f.bytes)) {
      throw new CkptError(
        "STAGING_MISMATCH",
        `Cannot finish the output: stage ${f.stage} reported writing "${rel}"${
          f.bytes === undefined ? "" : ` (${f.bytes} bytes)`
        }, but it ${
          st === undefined
            ? "is not there"
            : !st.isFile
            ? "is not a regular file"
            : `has ${st.size} bytes`
        }`,
        { file: abs, details: { stage: f.stage, reported: f.bytes ?? null, found: st?.size } },
      );
    }
  }
  return [...reported.keys()].sort();
}

/** Every entry under `rel` must be a reported file or a folder holding one. */
async function checkEntries(
  folder: string,
  rel: string,
  reported: ReadonlyMap<string, ReportedFile>,
  folders: ReadonlySet<string>,
  ignore: ReadonlySet<string> = new Set(),
): Promise<void> {
  const dir = join(folder, rel);
  fsStep("readdir", dir);
  const entries: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  for (const e of entries) {
    const p = rel === "" ? e.name : `${rel}/${e.name}`;
    if (p === MANIFEST_NAME || ignore.has(p)) continue; // the manifest: written after this check
    if (e.isDirectory && folders.has(p)) await checkEntries(folder, p, reported, folders);
    else if (reported.has(p)) continue; // a reported symlink, folder or FIFO: STAGING_MISMATCH below
    else {
      const kind = e.isSymlink ? "symlink" : e.isDirectory ? "folder" : e.isFile ? "file" : "entry";
      throw new CkptError(
        "STAGING_UNREPORTED",
        `Cannot finish the output: the ${kind} "${p}" in the staging folder was written, but no ` +
          `stage reported it (a stage must list every file it writes in ctx.report's files)`,
        { file: join(folder, p), details: { path: p, kind } },
      );
    }
  }
}

/** A reported path, checked to stay inside the folder; `/`-separated, relative. */
function checkRelPath(f: ReportedFile, folder: string): string {
  const p = f.path.replaceAll("\\", "/").replace(/^\.\//, "");
  if (p === "" || p.startsWith("/") || p.split("/").some((s) => s === ".." || s === "")) {
    throw new CkptError(
      "STAGING_MISMATCH",
      `Cannot finish the output: stage ${f.stage} reported the file "${f.path}", which is not a ` +
        `plain relative path inside the output folder`,
      { file: folder, details: { stage: f.stage, path: f.path } },
    );
  }
  return p;
}

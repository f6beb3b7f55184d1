/**
 * The staging folder a pipeline writes into: `.<name>.ckpt-staging-<pid>-<id>` beside the output,
 * renamed into place only when every stage succeeded ({@linkcode StagingFolder.commit}), removed
 * on failure ({@linkcode StagingFolder.discard}). Leftovers of runs whose process died are cleaned
 * up before a new run ({@linkcode removeStaleStaging}).
 * @module
 */
import { basename, dirname, join } from "node:path";
import { CkptError } from "../errors.ts";

/** How long a discard waits for an abandoned stage to notice an abort before removing again. */
const STRAGGLER_MS = 2000;

/** True when `path` exists (a dangling link counts). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

function pidAlive(pid: number): boolean {
  if (Deno.build.os !== "linux") return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Cleans up after runs for `name` in `parent` whose process no longer exists: staging folders are
 * removed; an old output set aside by an interrupted `--overwrite` is put back when the output is
 * missing (the replacement never landed), else removed.
 */
export async function removeStaleStaging(parent: string, name: string): Promise<void> {
  const prefix = `.${name}.ckpt-`;
  const entries: string[] = [];
  try {
    for await (const e of Deno.readDir(parent)) if (e.name.startsWith(prefix)) entries.push(e.name);
  } catch {
    return; // no parent yet
  }
  for (const entry of entries.sort()) {
    const m = entry.slice(prefix.length).match(/^(staging|old)-(\d+)-/);
    if (!m || Number(m[2]) === Deno.pid || pidAlive(Number(m[2]))) continue;
    const path = join(parent, entry);
    if (m[1] === "old" && !(await exists(join(parent, name)))) {
      await Deno.rename(path, join(parent, name)).catch(() => {});
    } else {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    }
  }
}

/** The folder a run writes into, beside its output. */
export class StagingFolder {
  /** Absolute path of the staging folder (in a dry run: where it would be; not created). */
  readonly path: string;
  readonly #output: string;
  readonly #id: string;
  readonly #dryRun: boolean;
  /** Topmost parent folder this run created, removed again on discard. */
  #createdParent: string | undefined;
  #settled = false;

  private constructor(output: string, dryRun: boolean) {
    this.#output = output;
    this.#dryRun = dryRun;
    this.#id = `${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    this.path = join(dirname(output), `.${basename(output)}.ckpt-staging-${this.#id}`);
  }

  /**
   * Creates the staging folder for `output` (and its missing parents, remembered so a failure
   * removes them). In a dry run only the path is chosen.
   */
  static async create(output: string, options: { dryRun: boolean }): Promise<StagingFolder> {
    const staging = new StagingFolder(output, options.dryRun);
    if (options.dryRun) return staging;
    const parent = dirname(output);
    let top: string | undefined;
    for (let p = parent; !(await exists(p)); p = dirname(p)) top = p;
    await Deno.mkdir(parent, { recursive: true });
    staging.#createdParent = top;
    try {
      await Deno.mkdir(staging.path);
    } catch (err) {
      await staging.discard(Promise.resolve());
      throw err;
    }
    return staging;
  }

  /**
   * Renames the finished folder to the output. An existing output is replaced only with
   * `overwrite` (old renamed aside, new renamed in, old deleted); else `OUTPUT_EXISTS`.
   */
  async commit(overwrite: boolean): Promise<void> {
    const output = this.#output;
    if (!(await exists(output))) {
      try {
        await Deno.rename(this.path, output);
        this.#settled = true;
        return;
      } catch (err) {
        // A concurrent writer may have created it between the check and the rename.
        if (!(await exists(output))) throw err;
      }
    }
    if (!overwrite) {
      throw new CkptError(
        "OUTPUT_EXISTS",
        `Cannot write output "${output}": it appeared while the pipeline ran`,
        { file: output },
      );
    }
    const old = join(dirname(output), `.${basename(output)}.ckpt-old-${this.#id}`);
    await Deno.rename(output, old);
    try {
      await Deno.rename(this.path, output);
    } catch (err) {
      await Deno.rename(old, output).catch(() => {});
      throw err;
    }
    this.#settled = true;
    await Deno.remove(old, { recursive: true }).catch(() => {});
  }

  /**
   * Removes the folder (and the parents this run created) unless it was committed. `inFlight` is
   * the stage that may still write after an abort: it gets a moment, then the folder is removed
   * again.
   */
  async discard(inFlight: Promise<void>): Promise<void> {
    if (this.#settled || this.#dryRun) return;
    this.#settled = true;
    await Deno.remove(this.path, { recursive: true }).catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const settled = await Promise.race([
      inFlight.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), STRAGGLER_MS))),
    ]);
    clearTimeout(timer);
    if (settled || await exists(this.path)) {
      await Deno.remove(this.path, { recursive: true }).catch(() => {});
    }
    if (this.#createdParent !== undefined) {
      await Deno.remove(this.#createdParent, { recursive: true }).catch(() => {});
    }
  }
}

/**
 * Private: what a preflight saw of the file system (each path it looked at, present or not, with
 * its device, inode, size, modification and change times), so the stage's run can tell, by `stat`
 * alone, whether what its preflight read still holds (writeTokenizer's plan, writeOptim's loaded
 * inputs).
 * @module
 */

/**
 * One path's state: `absent`, or `dev:ino:size:mtime:ctime` (the change time shows a rewrite
 * that kept the size and set the modification time back).
 */
function signature(info: Deno.FileInfo | undefined): string {
  if (info === undefined) return "absent";
  return `${info.dev}:${info.ino}:${info.size}:${info.mtime?.getTime()}:${info.ctime?.getTime()}`;
}

/** The state of one path now (`absent` when missing; an error when it cannot be looked at). */
async function stateOf(path: string): Promise<string> {
  try {
    return signature(await Deno.stat(path));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return "absent";
    }
    return `error ${err instanceof Error ? err.name : String(err)}`;
  }
}

/** The paths a plan looked at, and their state when it did. */
export class FileWitness {
  readonly #seen = new Map<string, string>();

  /** Records `path` as `info` (undefined: absent); the first record of a path stays. */
  saw(path: string, info: Deno.FileInfo | undefined): void {
    if (!this.#seen.has(path)) this.#seen.set(path, signature(info));
  }

  /**
   * Looks at `path` (following links) and records its state; never throws (a path that cannot be
   * looked at is recorded as such, and its reader reports the coded error).
   */
  async stat(path: string): Promise<void> {
    if (!this.#seen.has(path)) this.#seen.set(path, await stateOf(path));
  }

  /** True when every path recorded still has the same state (one `stat` each, no reads). */
  async unchanged(): Promise<boolean> {
    const paths = [...this.#seen];
    const now = await Promise.all(paths.map(([p]) => stateOf(p)));
    return paths.every(([, was], i) => now[i] === was);
  }
}

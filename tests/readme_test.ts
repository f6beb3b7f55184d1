import assert from "node:assert/strict";
import { dirname, join, normalize } from "node:path";
import { REPO_ROOT } from "./_helpers/peer.ts";

const readme = await Deno.readTextFile(join(REPO_ROOT, "README.md"));
const DOCS = [
  "cli",
  "config",
  "stages",
  "guarantees",
  "clusters",
  "architecture",
  "errors",
  "benchmarks",
  "compatibility",
  "testing",
];

Deno.test("README starts with what ckpt is, then the demo and test commands", () => {
  const head = readme.slice(0, 1500);
  assert.match(head, /^# ckpt/);
  assert.ok(head.indexOf("deno task demo") < head.indexOf("deno task test"));
  assert.match(head, /npm install -g deno@2\.9\.6/);
});

Deno.test("README is a front door of at most 200 lines that links every docs page", () => {
  const lines = readme.split("\n").length - (readme.endsWith("\n") ? 1 : 0);
  assert.ok(lines <= 200, `README.md has ${lines} lines`);
  for (const page of DOCS) {
    assert.ok(readme.includes(`](docs/${page}.md)`), `links docs/${page}.md`);
  }
});

Deno.test("every relative link in README.md and docs/ points at a file that exists", async () => {
  const files = ["README.md", ...DOCS.map((p) => `docs/${p}.md`)];
  const broken: string[] = [];
  let links = 0;
  for (const file of files) {
    const text = await Deno.readTextFile(join(REPO_ROOT, file));
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!.split("#")[0]!;
      if (target === "" || /^[a-z]+:/.test(target)) continue;
      links++;
      const path = normalize(join(REPO_ROOT, dirname(file), target));
      if (!await Deno.stat(path).then(() => true, () => false)) broken.push(`${file}: ${m[1]}`);
    }
  }
  assert.ok(links >= DOCS.length, `found only ${links} relative links`);
  assert.deepEqual(broken, []);
});

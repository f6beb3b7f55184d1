import assert from "node:assert/strict";
import { join } from "node:path";
import { isCkptError } from "../../errors.ts";
import {
  loadConfig,
  parseConfig,
  parseJsonc,
  parseVarArgs,
  validateConfig,
} from "../../pipelines/config.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { FAKE_STAGES } from "./_fake_stages.ts";

const opts = { baseDir: "/base", stages: FAKE_STAGES, env: {} };

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (isCkptError(err)) return err.code;
    throw err;
  }
  return undefined;
}

Deno.test("`parseJsonc()` strips comments and trailing commas but not string contents", () => {
  const v = parseJsonc(`{
    // line comment
    "a": "http://x/*not a comment*/", /* block
    comment */ "b": [1, 2, ],
    "c": "a,}", // trailing
  }`);
  assert.deepEqual(v, { a: "http://x/*not a comment*/", b: [1, 2], c: "a,}" });
});

Deno.test("`parseJsonc()` reports the line of a syntax error", () => {
  try {
    parseJsonc('{\n  "a": 1,\n  "b": oops\n}', "x.jsonc");
    assert.fail("no error");
  } catch (err) {
    assert.ok(isCkptError(err, "CONFIG_PARSE"));
    assert.match(err.message, /line 3/);
  }
});

Deno.test("`parseConfig()` substitutes vars and resolves the output against baseDir", () => {
  const cfg = parseConfig(
    `{ "vars": { "run": "runs/a", "out": "\${run}/FINAL", "n": 3 },
       "output": "\${out}",
       "stages": [{ "use": "writeText", "name": "\${run}/x.txt", "repeat": "\${n}" }] }`,
    opts,
  );
  assert.equal(cfg.output, "/base/runs/a/FINAL");
  assert.deepEqual(cfg.stages[0]!.options, { name: "runs/a/x.txt", text: "hello", repeat: 3 });
  assert.equal(cfg.vars.out, "runs/a/FINAL");
});

Deno.test("`parseConfig()` gives --var precedence over CKPT_VAR_ over config vars", () => {
  const text =
    `{ "vars": { "a": "config", "b": "config", "c": "config" }, "output": "/o/\${a}-\${b}-\${c}",
    "stages": [{ "use": "writeText", "name": "n" }] }`;
  const cfg = parseConfig(text, {
    ...opts,
    vars: { a: "cli" },
    env: { CKPT_VAR_a: "env", CKPT_VAR_b: "env" },
  });
  assert.equal(cfg.output, "/o/cli-env-config");
});

Deno.test("`parseConfig()` reads ${env:NAME} and keeps $${ literal", () => {
  const cfg = parseConfig(
    `{ "output": "/o/\${env:HOME_X}", "stages": [{ "use": "writeText", "name": "$\${x}" }] }`,
    { ...opts, env: { HOME_X: "h" } },
  );
  assert.equal(cfg.output, "/o/h");
  assert.equal((cfg.stages[0]!.options as { name: string }).name, "${x}");
});

Deno.test("`parseConfig()` rejects an undefined variable with its JSON path", () => {
  try {
    parseConfig(`{ "output": "/o", "stages": [{ "use": "writeText", "name": "\${nope}" }] }`, opts);
    assert.fail("no error");
  } catch (err) {
    assert.ok(isCkptError(err, "CONFIG_VAR_UNDEFINED"));
    assert.equal(err.details?.path, "stages[0].name");
  }
});

Deno.test("`parseConfig()` rejects a variable cycle", () => {
  assert.equal(
    code(() =>
      parseConfig(
        `{ "vars": { "a": "\${b}", "b": "\${a}" }, "output": "\${a}", "stages": [{ "use": "fail" }] }`,
        opts,
      )
    ),
    "CONFIG_VAR_CYCLE",
  );
});

Deno.test("`validateConfig()` rejects unknown top-level keys", () => {
  try {
    validateConfig({ output: "/o", stages: [{ use: "fail" }], outptu: "x" }, opts);
    assert.fail("no error");
  } catch (err) {
    assert.ok(isCkptError(err, "CONFIG_INVALID"));
    assert.match(err.message, /unknown key "outptu".*did you mean "output"/);
  }
});

Deno.test("`validateConfig()` rejects an unknown stage", () => {
  assert.equal(
    code(() => validateConfig({ output: "/o", stages: [{ use: "nope" }] }, opts)),
    "CONFIG_UNKNOWN_STAGE",
  );
});

Deno.test("`validateConfig()` gives path, value found and expected for wrong option types", () => {
  try {
    validateConfig({
      output: "/o",
      stages: [{ use: "fail" }, { use: "writeText", name: "a", repeat: "many" }],
    }, opts);
    assert.fail("no error");
  } catch (err) {
    assert.ok(isCkptError(err, "CONFIG_INVALID"));
    assert.equal(err.details?.path, "stages[1].repeat");
    assert.equal(err.details?.found, '"many" (string)');
    assert.equal(err.details?.expected, "number");
  }
});

Deno.test("`validateConfig()` rejects unknown stage options", () => {
  try {
    validateConfig({ output: "/o", stages: [{ use: "writeText", name: "a", nmae: "b" }] }, opts);
    assert.fail("no error");
  } catch (err) {
    assert.ok(isCkptError(err, "CONFIG_INVALID"));
    assert.equal(err.details?.path, "stages[0]");
    assert.equal(err.details?.found, 'unknown key "nmae"');
    assert.match(err.message, /expected one of name, text, from, repeat \(did you mean "name"\?\)/);
  }
});

Deno.test("`validateConfig()` rejects a missing output and empty stages", () => {
  assert.equal(code(() => validateConfig({ stages: [{ use: "fail" }] }, opts)), "CONFIG_INVALID");
  assert.equal(code(() => validateConfig({ output: "o", stages: [] }, opts)), "CONFIG_INVALID");
});

Deno.test("`loadConfig()` resolves paths relative to the config file", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "cfg"));
    await Deno.writeTextFile(
      join(dir, "cfg", "p.jsonc"),
      `// a pipeline\n{ "output": "../out", "stages": [{ "use": "writeText", "name": "a" },] }`,
    );
    const cfg = await loadConfig(join(dir, "cfg", "p.jsonc"), { stages: FAKE_STAGES, env: {} });
    assert.equal(cfg.output, join(dir, "out"));
    assert.equal(cfg.baseDir, join(dir, "cfg"));
    await assert.rejects(
      () => loadConfig(join(dir, "missing.jsonc"), { stages: FAKE_STAGES }),
      (e: unknown) => isCkptError(e, "CONFIG_READ"),
    );
  });
});

Deno.test("`parseVarArgs()` splits at the first = and rejects pairs without one", () => {
  assert.deepEqual(parseVarArgs(["a=b=c", "x="]), { a: "b=c", x: "" });
  assert.equal(code(() => parseVarArgs(["novalue"])), "CONFIG_VAR_SYNTAX");
});

Deno.test("`parseJsonc()` locates an error after true/false/null literals", () => {
  try {
    parseJsonc('{\n  "a": true,\n  "b": null,\n  "c": 1.5e3 x\n}');
    assert.fail("no error");
  } catch (err) {
    assert.ok(isCkptError(err, "CONFIG_PARSE"));
    assert.match(err.message, /line 4, column 14/);
  }
});

Deno.test("`validateConfig()` bounds a ${var} expansion that grows exponentially", () => {
  const vars: Record<string, string> = { v0: "x".repeat(16) };
  for (let i = 1; i <= 60; i++) vars[`v${i}`] = `\${v${i - 1}}\${v${i - 1}}`;
  const t0 = performance.now();
  assert.equal(
    code(() => validateConfig({ vars, output: "/o/${v60}", stages: [{ use: "fail" }] }, opts)),
    "CONFIG_VAR_TOO_LARGE",
  );
  assert.ok(performance.now() - t0 < 2000, "fails fast, without building the string");
  // Below the limit is fine (every var is resolved, used or not: only v0..v12 here).
  const small = Object.fromEntries(Object.entries(vars).filter(([k]) => Number(k.slice(1)) <= 12));
  const ok = validateConfig({ vars: small, output: "/o/${v12}", stages: [{ use: "fail" }] }, opts);
  assert.equal(ok.output.length, "/o/".length + 16 * 2 ** 12);
});

import assert from "node:assert/strict";
import { globMatcher, parseWatchSettings } from "../../../pipelines/watch/config.ts";

Deno.test("`parseWatchSettings()` applies defaults and overrides", () => {
  const s = parseWatchSettings(undefined);
  assert.deepEqual(s, {
    pattern: ["step-*", "FINAL"],
    complete: ["signals"],
    quietSeconds: 30,
    keep: undefined,
    maxTries: 3,
    verify: true,
  });
  const o = parseWatchSettings({ pattern: "ckpt-*", keep: 5 }, {
    keep: 2,
    quietSeconds: undefined,
  });
  assert.deepEqual(o.pattern, ["ckpt-*"]);
  assert.equal(o.keep, 2);
  assert.equal(o.quietSeconds, 30);
});

Deno.test("`parseWatchSettings()` rejects unknown keys and bad values with WATCH_CONFIG", () => {
  for (const bad of [{ patern: "x" }, { keep: 0 }, { maxTries: 1.5 }, { quietSeconds: -1 }, []]) {
    assert.throws(
      () => parseWatchSettings(bad),
      (e: unknown) => (e as { code?: string }).code === "WATCH_CONFIG",
    );
  }
});

Deno.test("`globMatcher()` matches one path segment", () => {
  assert.ok(globMatcher("step-*").test("step-64"));
  assert.ok(!globMatcher("step-*").test("step-6/x"));
  assert.ok(globMatcher("step-?").test("step-6"));
  assert.ok(globMatcher("[Ff]INAL").test("fINAL"));
  assert.ok(!globMatcher("[Ff]INAL").test("final"));
  assert.ok(!globMatcher("[!F]INAL").test("FINAL"));
  assert.ok(globMatcher("a.b+(c)").test("a.b+(c)"));
  assert.ok(!globMatcher("a.b").test("axb"));
});

/**
 * The HTML pages ckpt writes (`ckpt diff --html`, `ckpt-report.html`), opened in headless Chromium
 * (Debian's package; these tests fail, never skip, without it): no console errors, one chart bar per
 * layer and module, a header click sorts the table. Screenshots are kept under `.ci-artifacts/`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { artifactPath, type ChromiumPage, openChromium } from "../_helpers/chromium.ts";
import { REPO_ROOT } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { ckpt, mergeArgs } from "./_cli.ts";

const MODULES = ["q", "k", "v", "o", "gate", "up", "down"];

/** Nothing in the page can reach the network: no external scripts, styles, fonts or images. */
function assertSelfContained(html: string): void {
  assert.doesNotMatch(html, /<script[^>]+src=/i);
  assert.doesNotMatch(html, /<link\b/i);
  assert.doesNotMatch(html, /@import|@font-face|url\(/i);
  assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//i);
  assert.match(html, /Content-Security-Policy" content="default-src 'none'/);
}

/** The chart's bars as `layer/module` pairs. */
function bars(page: ChromiumPage): Promise<string[]> {
  return page.evaluate<string[]>(
    `[...document.querySelectorAll("#chart rect.bar")].map((r) => r.dataset.layer + "/" + r.dataset.module)`,
  );
}

/** Clicks a table header with the mouse, then returns the first row's cells. */
async function clickHeader(page: ChromiumPage, key: string): Promise<string[]> {
  const box = await page.evaluate<{ x: number; y: number }>(`(() => {
    const th = document.querySelector('#tensors th[data-key="${key}"]');
    th.scrollIntoView({ block: "center", inline: "center" });
    const r = th.getBoundingClientRect();
    return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
  })()`);
  await page.click(box.x, box.y);
  return await page.evaluate<string[]>(
    `[...document.querySelector("#tensors tbody tr").cells].map((c) => c.textContent)`,
  );
}

async function keepScreenshot(page: ChromiumPage, name: string): Promise<void> {
  await page.evaluate(`window.scrollTo(0, 0)`);
  const path = artifactPath(REPO_ROOT, name);
  await Deno.mkdir(join(REPO_ROOT, ".ci-artifacts"), { recursive: true });
  await Deno.writeFile(path, await page.screenshot());
  console.log(`screenshot: ${path}`);
}

Deno.test("ckpt diff --html writes a page Chromium renders: no errors, a bar per layer and module, a sortable table", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(dir, { size: "tiny" });
    const merged = join(dir, "merged");
    const m = await ckpt(mergeArgs(run, merged, "--log", "quiet"));
    assert.equal(m.code, 0, m.stderr);
    const html = join(dir, "diff.html");
    const r = await ckpt(["diff", run.base, merged, "--json", "--html", html]);
    assert.equal(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout) as { tensors: { name: string; relNorm: number }[] };
    const text = await Deno.readTextFile(html);
    assertSelfContained(text);

    await using page = await openChromium();
    await page.navigate(`file://${html}`);
    assert.deepEqual(page.seen.errors, []);
    const drawn = await bars(page);
    const want = [0, 1].flatMap((l) => MODULES.map((m) => `${l}/${m}`));
    assert.deepEqual(drawn.toSorted(), want.toSorted(), "one bar per layer and module");
    // each bar carries its tensor's ||A-B||/||A||
    const values = await page.evaluate<[string, number][]>(
      `[...document.querySelectorAll("#chart rect.bar")].map((r) => [r.querySelector("title").textContent.split(":")[0], Number(r.dataset.value)])`,
    );
    for (const [name, value] of values) {
      assert.equal(value, report.tensors.find((t) => t.name === name)!.relNorm, name);
    }
    const rows = await page.evaluate<number>(
      `document.querySelectorAll("#tensors tbody tr").length`,
    );
    assert.equal(rows, report.tensors.length);

    // one click: largest relative change first
    const most = report.tensors.toSorted((a, b) => b.relNorm - a.relNorm)[0]!;
    const first = await clickHeader(page, "relNorm");
    assert.equal(first[0], most.name);
    // a second click: smallest first (an untouched tensor, 0)
    const least = await clickHeader(page, "relNorm");
    assert.equal(least[6], "0");
    // a text column sorts A to Z
    const byName = await clickHeader(page, "name");
    assert.equal(
      byName[0],
      report.tensors.map((t) => t.name).toSorted((a, b) => a.localeCompare(b))[0],
    );
    assert.deepEqual(page.seen.errors, []);
    await keepScreenshot(page, "diff-report.png");
  });
});

Deno.test("ckpt merge --report writes ckpt-report.html into the output, listed in the manifest, with the merge's figures", async () => {
  await withTempDir(async (dir) => {
    const run = await makeDemoRun(dir, { size: "tiny" });
    const out = join(dir, "merged");
    const m = await ckpt(mergeArgs(run, out, "--report", "--log", "quiet"));
    assert.equal(m.code, 0, m.stderr);
    const manifest = JSON.parse(await Deno.readTextFile(join(out, "ckpt-manifest.json")));
    assert.ok(manifest.files.some((f: { path: string }) => f.path === "ckpt-report.html"));
    const changes = manifest.stages.find((s: { name: string }) => s.name === "mergeLora").report
      .moduleChanges as { module: string; relNorm: number }[];
    assert.equal(changes.length, 14);
    const verify = await ckpt(["verify", out]);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
    const html = join(out, "ckpt-report.html");
    assertSelfContained(await Deno.readTextFile(html));

    await using page = await openChromium();
    await page.navigate(`file://${html}`);
    assert.deepEqual(page.seen.errors, []);
    const want = [0, 1].flatMap((l) => MODULES.map((m) => `${l}/${m}`));
    assert.deepEqual((await bars(page)).toSorted(), want.toSorted());
    const first = await clickHeader(page, "relNorm");
    assert.equal(first[0], changes.toSorted((a, b) => b.relNorm - a.relNorm)[0]!.module);
    assert.deepEqual(page.seen.errors, []);
    await keepScreenshot(page, "merge-report.png");
  });
});

Deno.test("a page's console errors are caught: a broken script fails the check", async () => {
  await withTempDir(async (dir) => {
    const html = join(dir, "broken.html");
    await Deno.writeTextFile(
      html,
      `<!DOCTYPE html><script>console.error("boom"); undefinedFn();</script>`,
    );
    await using page = await openChromium();
    await page.navigate(`file://${html}`);
    assert.equal(page.seen.errors.length, 2, page.seen.errors.join("\n"));
  });
});

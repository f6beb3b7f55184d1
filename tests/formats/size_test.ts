import assert from "node:assert/strict";
import { isCkptError } from "../../errors.ts";
import { formatSize, parseSize } from "../../formats/size.ts";

Deno.test("`parseSize()` reads decimal units as huggingface_hub does and binary units as powers of 2", () => {
  const cases: [string | number, number][] = [
    ["5GB", 5_000_000_000],
    ["50GB", 50_000_000_000],
    ["500MB", 500_000_000],
    ["10KB", 10_000],
    ["1TB", 1e12],
    ["5gb", 5_000_000_000],
    [" 2 GB ", 2_000_000_000],
    ["1.5GB", 1_500_000_000],
    ["2GiB", 2 * 2 ** 30],
    ["3MiB", 3 * 2 ** 20],
    ["1KiB", 1024],
    ["1TiB", 2 ** 40],
    ["4096", 4096],
    ["100B", 100],
    [4096, 4096],
    [0, 0],
  ];
  for (const [input, want] of cases) assert.equal(parseSize(input), want, String(input));
});

Deno.test("`parseSize()` rejects malformed sizes with SIZE_INVALID", () => {
  for (
    const bad of ["", "GB", "5XB", "-1GB", "1e3", "five", "5 G B", 1.5, -1, NaN, "99999999999TB"]
  ) {
    assert.throws(() => parseSize(bad), (e) => isCkptError(e, "SIZE_INVALID"), String(bad));
  }
});

Deno.test("`formatSize()` prints decimal units", () => {
  assert.equal(formatSize(999), "999 B");
  assert.equal(formatSize(1_500_000_000), "1.50 GB");
  assert.equal(formatSize(2048), "2.05 KB");
});

/**
 * Sampling for `deno task mutate --sample=N`: a deterministic choice of N mutants per target
 * (the same seed and the same source give the same sample, and a mutant's place in it does not
 * depend on the other mutants), and the score's 95 % interval.
 * @module
 */

/** FNV-1a, 32 bits: a fixed hash, so that a seed means the same sample on every machine. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/**
 * The `n` items whose `key` ranks lowest under a hash seeded with `seed`, in their original order
 * (all of them when there are no more than `n`). A key's rank depends only on the key and the
 * seed, so adding or removing a mutant elsewhere moves at most one other in or out.
 *
 * @example Sampling is deterministic and keeps the order
 * ```ts
 * import assert from "node:assert/strict";
 * const items = ["a", "b", "c", "d", "e"].map((key) => ({ key }));
 * const s = sampleByKey(items, 2, 1);
 * assert.equal(s.length, 2);
 * assert.deepEqual(sampleByKey(items, 2, 1), s);
 * assert.ok(items.indexOf(s[0]!) < items.indexOf(s[1]!));
 * ```
 */
export function sampleByKey<T extends { key: string }>(items: T[], n: number, seed: number): T[] {
  if (items.length <= n) return [...items];
  const rank = (t: T) => fnv1a(`${seed}\0${t.key}`);
  const chosen = new Set(
    [...items].sort((a, b) => rank(a) - rank(b) || a.key.localeCompare(b.key)).slice(0, n),
  );
  return items.filter((t) => chosen.has(t));
}

/** A proportion with its 95 % interval, all in [0, 1]. */
export interface Estimate {
  /** The point estimate. */
  p: number;
  /** Lower bound of the 95 % interval. */
  low: number;
  /** Upper bound of the 95 % interval. */
  high: number;
}

const Z = 1.959963984540054; // the normal distribution's 97.5th percentile

/** The Wilson interval of a proportion `p` from `n` draws, the variance scaled by `fpc`. */
function wilsonCore(p: number, n: number, fpc: number): Estimate {
  const z2 = Z * Z * fpc;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = Math.sqrt(z2) * Math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n);
  return { p, low: Math.max(0, centre - half), high: Math.min(1, centre + half) };
}

/**
 * `k` successes in a random sample of `n` out of `population`: the proportion with its 95 %
 * Wilson score interval, narrowed by the finite population correction (no width at all when the
 * sample is the whole population). `n = 0` gives the whole range.
 *
 * @example 19 of 20 sampled mutants killed
 * ```ts
 * import assert from "node:assert/strict";
 * const e = wilson(19, 20, Infinity); // the textbook Wilson interval
 * assert.equal(e.p, 0.95);
 * assert.equal(e.low.toFixed(4), "0.7639");
 * assert.equal(e.high.toFixed(4), "0.9911");
 * assert.deepEqual(wilson(19, 20, 20), { p: 0.95, low: 0.95, high: 0.95 });
 * ```
 */
export function wilson(k: number, n: number, population: number): Estimate {
  if (n === 0) return { p: 0, low: 0, high: 1 };
  return wilsonCore(k / n, n, finite(n, population));
}

/** The finite population correction for `n` drawn from `population` (0 when drawn whole). */
function finite(n: number, population: number): number {
  if (population === Infinity) return 1;
  return population > 1 ? Math.max(0, (population - n) / (population - 1)) : 0;
}

/** One stratum of a stratified sample: `k` of `n` sampled, standing for `weight` units. */
export interface Stratum {
  k: number;
  n: number;
  weight: number;
}

/**
 * The proportion over several strata sampled apart (targets with different sample fractions):
 * each stratum's proportion weighted by the units it stands for, with a 95 % Wilson interval at
 * the effective sample size (the size whose binomial variance equals the stratified estimate's;
 * where every stratum is all killed or all survived, the size that variance would have at a common
 * proportion). One stratum gives exactly {@linkcode wilson}'s interval; strata sampled whole
 * add no uncertainty.
 *
 * @example Two targets, one sampled whole
 * ```ts
 * import assert from "node:assert/strict";
 * const e = stratified([{ k: 10, n: 10, weight: 10 }, { k: 18, n: 20, weight: 90 }]);
 * assert.ok(Math.abs(e.p - 0.91) < 1e-12);
 * assert.ok(e.low < 0.91 && e.high > 0.91 && e.high <= 1);
 * ```
 */
export function stratified(strata: Stratum[]): Estimate {
  const used = strata.filter((s) => s.n > 0 && s.weight > 0);
  const total = used.reduce((a, s) => a + s.weight, 0);
  if (total === 0) return { p: 0, low: 0, high: 1 };
  let p = 0;
  let variance = 0; // of the weighted estimate
  let design = 0; // the same at a common proportion, per p(1 - p)
  for (const s of used) {
    const w = s.weight / total;
    const ps = s.k / s.n;
    const f = finite(s.n, s.weight);
    p += w * ps;
    variance += w * w * ps * (1 - ps) / s.n * f;
    design += w * w / s.n * f;
  }
  if (design === 0) return { p, low: p, high: p };
  const nEff = variance > 0 ? p * (1 - p) / variance : 1 / design;
  return wilsonCore(p, nEff, 1);
}

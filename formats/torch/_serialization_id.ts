/**
 * torch 2.6's `.data/serialization_id`, reproduced: 20 digits of a combined hash of the record
 * names (libstdc++ `std::hash<std::string>` folded with `c10::hash_combine` in the iteration order
 * of the writer's `std::unordered_set`) followed by 20 digits of the CRC-32s of the non-empty records
 * folded the same way. Matches the ids in the torch-written fixtures bit for bit.
 * @module
 */

const M64 = (1n << 64n) - 1n;
const MUL = (0xc6a4a793n << 32n) + 0x5bd1e995n;
const shiftMix = (v: bigint): bigint => v ^ (v >> 47n);

/** libstdc++ `_Hash_bytes(ptr, len, 0xc70f6907)`: what `std::hash<std::string>` returns on 64-bit Linux. */
export function stdHashBytes(b: Uint8Array, seed = 0xc70f6907n): bigint {
  let h = (seed ^ ((BigInt(b.length) * MUL) & M64)) & M64;
  const aligned = b.length & ~7;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let p = 0; p < aligned; p += 8) {
    h ^= (shiftMix((dv.getBigUint64(p, true) * MUL) & M64) * MUL) & M64;
    h = (h * MUL) & M64;
  }
  if (b.length & 7) {
    let d = 0n;
    for (let i = b.length - 1; i >= aligned; i--) d = (d << 8n) + BigInt(b[i]!);
    h ^= d;
    h = (h * MUL) & M64;
  }
  return shiftMix((shiftMix(h) * MUL) & M64);
}

/** `c10::hash_combine(seed, value)` on 64-bit values. */
export function hashCombine(seed: bigint, value: bigint): bigint {
  return (seed ^ ((value + 0x9e3779b9n + ((seed << 6n) & M64) + (seed >> 2n)) & M64)) & M64;
}

const FAST_BKT = [2, 2, 2, 3, 5, 5, 7, 7, 11, 11, 11, 11, 13, 13];
// libstdc++ __prime_list (the part reachable by unordered_set sizes ckpt writes)
const PRIMES = [
  13,
  17,
  19,
  23,
  29,
  31,
  37,
  41,
  43,
  47,
  53,
  59,
  61,
  67,
  71,
  73,
  79,
  83,
  89,
  97,
  103,
  109,
  113,
  127,
  137,
  139,
  149,
  157,
  167,
  179,
  193,
  199,
  211,
  227,
  241,
  257,
  277,
  293,
  313,
  337,
  359,
  383,
  409,
  439,
  467,
  503,
  541,
  577,
  619,
  661,
  709,
  761,
  823,
  887,
  953,
  1031,
  1109,
  1193,
  1289,
  1381,
  1493,
  1613,
  1741,
  1879,
  2029,
  2179,
  2357,
  2549,
  2753,
  2971,
  3209,
  3469,
  3739,
  4027,
  4349,
  4703,
  5087,
  5503,
  5953,
  6427,
  6949,
  7517,
  8123,
  8783,
  9497,
  10273,
  11113,
  12011,
  12983,
  14033,
  15173,
  16411,
  17749,
  19183,
  20753,
  22447,
  24281,
  26267,
  28411,
  30727,
  33223,
  35933,
  38873,
  42043,
  45481,
  49201,
  53201,
  57557,
  62233,
  67307,
  72817,
  78779,
  85229,
  92203,
  99733,
  107897,
  116731,
  126271,
  136607,
  147793,
  159871,
  172933,
  187091,
  202409,
  218971,
  236897,
  256279,
  277261,
  299951,
  324503,
  351061,
  379787,
  410857,
  444487,
  480881,
  520241,
  562841,
  608903,
  658753,
  712697,
  771049,
  834181,
  902483,
  976369,
];

/**
 * The iteration order of a libstdc++ `std::unordered_set<std::string>` after inserting `hashes`
 * (their `std::hash` values) in order: a singly linked list where a new element goes in front of
 * its bucket's first element, or at the list head when its bucket is empty, with the prime rehash
 * policy (first 13 buckets, then the next listed prime at least twice the count).
 */
export function unorderedSetOrder(hashes: readonly bigint[]): number[] {
  let nb = 1;
  let nextResize = 0;
  let head = -1;
  const next = new Int32Array(hashes.length).fill(-1);
  let before = new Map<number, number>(); // bucket -> node before its first node (-2 = list head)
  const bucket = (i: number) => Number(hashes[i]! % BigInt(nb));
  const link = (i: number): void => {
    const b = bucket(i);
    const prev = before.get(b);
    if (prev !== undefined) {
      if (prev === -2) {
        next[i] = head;
        head = i;
      } else {
        next[i] = next[prev]!;
        next[prev] = i;
      }
      return;
    }
    next[i] = head;
    head = i;
    if (next[i]! >= 0) before.set(bucket(next[i]!), i);
    before.set(b, -2);
  };
  const nextBkt = (n: number): number => {
    if (n < FAST_BKT.length) {
      if (n === 0) return 1;
      nextResize = FAST_BKT[n]!;
      return FAST_BKT[n]!;
    }
    const p = PRIMES.find((x) => x >= n);
    if (p === undefined) throw new RangeError(`Cannot size a hash table for ${n} records`);
    nextResize = p;
    return p;
  };
  for (let i = 0; i < hashes.length; i++) {
    if (i + 1 > nextResize) {
      const minBkts = Math.max(i + 1, nextResize ? 0 : 11);
      if (minBkts >= nb) {
        nb = nextBkt(Math.max(minBkts + 1, nb * 2));
        const order: number[] = [];
        for (let n = head; n >= 0; n = next[n]!) order.push(n);
        head = -1;
        before = new Map();
        for (const n of order) link(n);
      } else nextResize = nb;
    }
    link(i);
  }
  const out: number[] = [];
  for (let n = head; n >= 0; n = next[n]!) out.push(n);
  return out;
}

/**
 * The serialization id torch 2.6 writes for records `names` (without the archive prefix, in write
 * order) and the CRC-32s of the non-empty ones (in write order).
 */
export function torchSerializationId(names: readonly string[], crcs: readonly number[]): string {
  const enc = new TextEncoder();
  const hashes = names.map((n) => stdHashBytes(enc.encode(n)));
  let nameHash = 0n;
  if (names.length <= 976369) {
    for (const i of unorderedSetOrder(hashes)) nameHash = hashCombine(nameHash, hashes[i]!);
  }
  let crcHash = 0n;
  for (const c of crcs) crcHash = hashCombine(crcHash, BigInt(c >>> 0));
  return nameHash.toString().padStart(20, "0") + crcHash.toString().padStart(20, "0");
}

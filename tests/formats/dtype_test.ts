import assert from "node:assert/strict";
import {
  bf16ToF32,
  decodeF32,
  dtypeFromTorch,
  DTYPES,
  encodeF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  f32ToF8e4m3,
  f32ToF8e5m2,
  f8e4m3ToF32,
  f8e5m2ToF32,
  parseDType,
} from "../../formats/dtype.ts";
import { isCkptError } from "../../errors.ts";

const f = new Float32Array(1);
const u = new Uint32Array(f.buffer);
function fromBits(bits: number): number {
  u[0] = bits;
  return f[0]!;
}
function bitsOf(x: number): number {
  f[0] = x;
  return u[0]!;
}

/** Independent RNE reference: nearest of two candidates by exact double arithmetic. */
function nearestEven(x: number, lo: number, hi: number, loBits: number, hiBits: number): number {
  const dl = x - lo;
  const dh = hi - x;
  if (dl < dh) return loBits;
  if (dh < dl) return hiBits;
  return (loBits & 1) === 0 ? loBits : hiBits;
}

Deno.test("`bf16ToF32()` decodes every one of the 65,536 patterns exactly", () => {
  const dv = new DataView(new ArrayBuffer(4));
  for (let h = 0; h < 65536; h++) {
    dv.setUint16(0, h); // big-endian: the bf16 bits are the high half of the f32
    dv.setUint16(2, 0);
    const want = dv.getFloat32(0);
    const got = bf16ToF32(h);
    if (Number.isNaN(want)) assert.ok(Number.isNaN(got), `0x${h.toString(16)}`);
    else assert.ok(Object.is(got, want), `0x${h.toString(16)}`);
  }
});

Deno.test("`f16ToF32()` decodes every one of the 65,536 patterns exactly", () => {
  const dv = new DataView(new ArrayBuffer(2));
  for (let h = 0; h < 65536; h++) {
    dv.setUint16(0, h, true);
    const want = dv.getFloat16(0, true);
    const got = f16ToF32(h);
    if (Number.isNaN(want)) assert.ok(Number.isNaN(got), `0x${h.toString(16)}`);
    else assert.ok(Object.is(got, want), `0x${h.toString(16)}`);
  }
});

Deno.test("`f32ToBf16()` and `f32ToF16()` round-trip every non-NaN pattern", () => {
  for (let h = 0; h < 65536; h++) {
    const b = bf16ToF32(h);
    if (!Number.isNaN(b)) assert.equal(f32ToBf16(b), h, `bf16 0x${h.toString(16)}`);
    const x = f16ToF32(h);
    if (!Number.isNaN(x)) assert.equal(f32ToF16(x), h, `f16 0x${h.toString(16)}`);
  }
});

Deno.test("`f32ToBf16()` rounds every tie to even and its f32 neighbours to nearest", () => {
  for (let h = 0; h < 0x7f80; h++) {
    for (const sign of [0, 0x8000]) {
      const lo = h | sign;
      const hi = (h + 1) | sign;
      const vlo = bf16ToF32(lo);
      const vhi = bf16ToF32(hi);
      const tieBits = ((lo << 16) | 0x8000) >>> 0; // exactly halfway in f32
      for (const bits of [tieBits - 1, tieBits, tieBits + 1]) {
        const x = fromBits(bits);
        const want = hi === (0x7f80 | sign)
          ? nearestEven(Math.abs(x), Math.abs(vlo), 2 ** 128, lo, hi)
          : nearestEven(Math.abs(x), Math.abs(vlo), Math.abs(vhi), lo, hi);
        assert.equal(f32ToBf16(x), want, `bits 0x${bits.toString(16)}`);
      }
    }
  }
});

Deno.test("`f32ToF16()` rounds every tie to even and its f32 neighbours to nearest", () => {
  for (let h = 0; h < 0x7c00; h++) {
    for (const sign of [0, 0x8000]) {
      const lo = f16ToF32(h | sign);
      const hi = h === 0x7bff ? (sign ? -65536 : 65536) : f16ToF32((h + 1) | sign);
      const tie = (lo + hi) / 2; // exact in f32 (one more bit than f16)
      assert.equal(Math.fround(tie), tie);
      const tb = bitsOf(tie);
      for (const bits of [tb - 1, tb, tb + 1]) {
        const x = fromBits(bits);
        // Math.f16round is an independent RNE reference for f32 inputs.
        const want = Math.f16round(x);
        const got = f16ToF32(f32ToF16(x));
        assert.ok(Object.is(got, want), `x=${x} got ${got} want ${want}`);
      }
    }
  }
});

Deno.test("`f32ToF16()` agrees with Math.f16round on a million random f32 patterns", () => {
  let seed = 12345;
  const next = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0);
  for (let i = 0; i < 1_000_000; i++) {
    const x = fromBits(next());
    if (Number.isNaN(x)) continue;
    assert.ok(Object.is(f16ToF32(f32ToF16(x)), Math.f16round(x)), `x=${x}`);
  }
});

Deno.test("NaN, Inf and overflow follow torch's CPU casts", () => {
  // Bits checked against torch 2.6 (tests/fixtures/safetensors/generate.py writes the same cases).
  assert.equal(f32ToBf16(NaN), 0xffff);
  assert.equal(f32ToBf16(fromBits(0xffc00000)), 0xffff);
  assert.equal(f32ToBf16(Infinity), 0x7f80);
  assert.equal(f32ToBf16(-3.4028234663852886e38), 0xff80); // rounds up to -Inf
  assert.equal(f32ToF16(fromBits(0x7fc00000)), 0x7e00);
  assert.equal(f32ToF16(fromBits(0xffc00000)), 0xfe00);
  assert.equal(f32ToF16(fromBits(0x7fa00000)), 0x7f00);
  assert.equal(f32ToF16(fromBits(0x7f800001)), 0x7e00);
  assert.equal(f32ToF16(65519.99), 0x7bff);
  assert.equal(f32ToF16(65520), 0x7c00);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  assert.equal(f32ToF16(2 ** -25), 0x0000); // tie between 0 and the smallest subnormal
  assert.equal(f32ToF16(Math.fround(2 ** -25 * 1.0000001)), 0x0001);
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002); // tie 1.5 ulp -> even (2)
  assert.equal(f32ToF16(-0), 0x8000);
  // float8_e4m3fn: 464 is a tie -> 448; 470 rounds to 480 which is NaN; Inf and NaN -> NaN.
  assert.equal(f32ToF8e4m3(448), 0x7e);
  assert.equal(f32ToF8e4m3(464), 0x7e);
  assert.equal(f32ToF8e4m3(470), 0x7f);
  assert.equal(f32ToF8e4m3(480), 0x7f);
  assert.equal(f32ToF8e4m3(-Infinity), 0xff);
  assert.equal(f32ToF8e4m3(NaN), 0x7f);
  assert.equal(f32ToF8e4m3(2 ** -10), 0x00); // half the smallest subnormal: tie -> 0
  assert.equal(f32ToF8e4m3(3 * 2 ** -10), 0x02);
  // float8_e5m2: 61440 is a tie between 57344 (odd) and Inf -> Inf.
  assert.equal(f32ToF8e5m2(57344), 0x7b);
  assert.equal(f32ToF8e5m2(61439), 0x7b);
  assert.equal(f32ToF8e5m2(61440), 0x7c);
  assert.equal(f32ToF8e5m2(NaN), 0x7f);
  assert.equal(f32ToF8e5m2(fromBits(0xffc00000)), 0xff);
});

function f8Reference(bits: number, e4m3: boolean): number {
  const ebits = e4m3 ? 4 : 5;
  const mbits = e4m3 ? 3 : 2;
  const bias = e4m3 ? 7 : 15;
  const s = bits & 0x80 ? -1 : 1;
  const e = (bits >> mbits) & ((1 << ebits) - 1);
  const m = bits & ((1 << mbits) - 1);
  if (e4m3 && (bits & 0x7f) === 0x7f) return NaN;
  if (!e4m3 && e === 31) return m === 0 ? s * Infinity : NaN;
  return e === 0 ? s * m * 2 ** (1 - bias - mbits) : s * 2 ** (e - bias) * (1 + m / 2 ** mbits);
}

for (
  const [name, dec, enc, e4m3] of [
    ["F8_E4M3", f8e4m3ToF32, f32ToF8e4m3, true],
    ["F8_E5M2", f8e5m2ToF32, f32ToF8e5m2, false],
  ] as const
) {
  Deno.test(`${name}: every pattern decodes, round-trips, and every tie rounds to even`, () => {
    for (let b = 0; b < 256; b++) {
      const want = f8Reference(b, e4m3);
      const got = dec(b);
      if (Number.isNaN(want)) {
        assert.ok(Number.isNaN(got));
        continue;
      }
      assert.ok(Object.is(got, want), `0x${b.toString(16)}`);
      assert.equal(enc(got), b);
    }
    for (let b = 0; b < 0x7f; b++) {
      for (const sign of [0, 0x80]) {
        const lo = dec(b | sign);
        const hiRaw = dec((b + 1) | sign);
        if (!Number.isFinite(hiRaw)) continue; // the last finite step is covered above
        const tie = (lo + hiRaw) / 2;
        const tb = bitsOf(tie);
        for (const bits of [tb - 1, tb, tb + 1]) {
          const x = fromBits(bits);
          const want = nearestEven(
            Math.abs(x),
            Math.abs(lo),
            Math.abs(hiRaw),
            b | sign,
            (b + 1) | sign,
          );
          assert.equal(enc(x), want, `${name} x=${x}`);
        }
      }
    }
  });
}

Deno.test("`decodeF32()` and `encodeF32()` match the scalar functions for every float dtype", () => {
  const n = 4099;
  let seed = 7;
  const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
  const src = new Float32Array(n);
  const srcBits = new Uint32Array(src.buffer);
  for (let i = 0; i < n; i++) srcBits[i] = next();
  src[0] = NaN;
  src[1] = Infinity;
  src[2] = -0;
  src[3] = 1e-40;
  const scalar = {
    BF16: [f32ToBf16, bf16ToF32],
    F16: [f32ToF16, f16ToF32],
    F8_E4M3: [f32ToF8e4m3, f8e4m3ToF32],
    F8_E5M2: [f32ToF8e5m2, f8e5m2ToF32],
  } as const;
  for (const [dtype, [enc, dec]] of Object.entries(scalar)) {
    const size = DTYPES[dtype as keyof typeof scalar].size;
    const bytes = encodeF32(dtype as keyof typeof scalar, src);
    assert.equal(bytes.length, n * size);
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    for (let i = 0; i < n; i++) {
      const b = size === 2 ? dv.getUint16(i * 2, true) : dv.getUint8(i);
      assert.equal(b, enc(src[i]!), `${dtype} encode ${i}`);
    }
    const back = decodeF32(dtype as keyof typeof scalar, bytes);
    for (let i = 0; i < n; i++) {
      const b = size === 2 ? dv.getUint16(i * 2, true) : dv.getUint8(i);
      assert.ok(
        Object.is(back[i], Math.fround(dec(b))) || Number.isNaN(back[i]!),
        `${dtype} decode ${i}`,
      );
    }
  }
  const f64 = decodeF32("F64", new Uint8Array(new Float64Array([1 + 2 ** -30, -2.5, NaN]).buffer));
  assert.deepEqual([...f64], [1, -2.5, NaN]);
  const f64b = encodeF32("F64", new Float32Array([1.5, -0]));
  assert.deepEqual([...new Float64Array(f64b.buffer)], [1.5, -0]);
  const f32 = encodeF32("F32", src);
  assert.deepEqual(new Uint8Array(f32), new Uint8Array(src.buffer));
});

Deno.test("`decodeF32()` handles unaligned input and writes into a given array", () => {
  const raw = new Uint8Array(9);
  raw.set(new Uint8Array(new Uint16Array([0x3f80, 0x4000, 0xc040, 0x0001]).buffer), 1);
  const out = new Float32Array(10).fill(99);
  const got = decodeF32("BF16", raw.subarray(1), out);
  assert.equal(got.length, 4);
  assert.equal(got.buffer, out.buffer);
  assert.deepEqual([...got.subarray(0, 3)], [1, 2, -3]);
  assert.equal(out[4], 99);
  const fp16 = decodeF32("F16", raw.subarray(1));
  assert.equal(fp16[0], f16ToF32(0x3f80));
  // Encoding into an unaligned output buffer.
  const dst = new Uint8Array(11);
  encodeF32("F16", new Float32Array([1, -2]), dst.subarray(1));
  assert.deepEqual([...dst.subarray(1, 5)], [0x00, 0x3c, 0x00, 0xc0]);
});

Deno.test("`decodeF32()` fills an array of exactly the values' length, and refuses one element shorter", () => {
  const bytes = new Uint8Array(new Uint16Array([0x3f80, 0x4000]).buffer);
  assert.deepEqual([...decodeF32("BF16", bytes, new Float32Array(2))], [1, 2]);
  assert.throws(
    () => decodeF32("BF16", bytes, new Float32Array(1)),
    (e: unknown) => isCkptError(e, "TENSOR_SIZE"),
  );
});

Deno.test("`decodeF32()` rejects integer dtypes and ragged byte counts", () => {
  assert.throws(
    () => decodeF32("I32", new Uint8Array(4)),
    (e) => isCkptError(e, "DTYPE_NOT_FLOAT"),
  );
  assert.throws(
    () => encodeF32("U8", new Float32Array(1)),
    (e) => isCkptError(e, "DTYPE_NOT_FLOAT"),
  );
  assert.throws(() => decodeF32("F16", new Uint8Array(3)), (e) => isCkptError(e, "TENSOR_SIZE"));
  assert.throws(
    () => decodeF32("F32", new Uint8Array(8), new Float32Array(1)),
    (e) => isCkptError(e, "TENSOR_SIZE"),
  );
  assert.throws(
    () => encodeF32("BF16", new Float32Array(2), new Uint8Array(3)),
    (e) => isCkptError(e, "TENSOR_SIZE"),
  );
});

Deno.test("`encodeF32()` gives torch 2.6's exact bytes for every cast in the fixture", async () => {
  const { openSafetensors } = await import("../../formats/safetensors.ts");
  const path = new URL("../fixtures/safetensors/casts.safetensors", import.meta.url).pathname;
  await using sd = await openSafetensors(path);
  const input = decodeF32("F32", await sd.require("input").read());
  for (
    const [key, dtype] of [
      ["bf16", "BF16"],
      ["f16", "F16"],
      ["f8_e4m3", "F8_E4M3"],
      ["f8_e5m2", "F8_E5M2"],
    ] as const
  ) {
    const want = await sd.require(key).read();
    const got = encodeF32(dtype, input);
    let mismatches = 0;
    for (let i = 0; i < want.length; i++) if (want[i] !== got[i]) mismatches++;
    assert.equal(mismatches, 0, `${dtype}: ${mismatches} bytes differ from torch`);
    // Decoding torch's bytes gives the value torch decodes (the cast rounded once).
    const back = decodeF32(dtype, want);
    const again = encodeF32(dtype, back);
    assert.deepEqual(again, want);
  }
});

Deno.test("`decodeF32()` gives torch 2.6's exact f32 bits for every f8 pattern and NaNs", async () => {
  const { openSafetensors } = await import("../../formats/safetensors.ts");
  const path = new URL("../fixtures/safetensors/casts.safetensors", import.meta.url).pathname;
  await using sd = await openSafetensors(path);
  const all = new Uint8Array(256).map((_, i) => i);
  const cases = [
    ["f8_e4m3_decoded", "F8_E4M3", all],
    ["f8_e5m2_decoded", "F8_E5M2", all],
    [
      "bf16_nan_decoded",
      "BF16",
      new Uint8Array(new Uint16Array([0x7fc0, 0xffff, 0x7f81, 0xff80]).buffer),
    ],
    [
      "f16_nan_decoded",
      "F16",
      new Uint8Array(new Uint16Array([0x7e00, 0xffff, 0x7c01, 0xfc00]).buffer),
    ],
  ] as const;
  for (const [key, dtype, input] of cases) {
    const want = await sd.require(key).read();
    const got = decodeF32(dtype, input);
    assert.deepEqual(new Uint8Array(got.buffer, got.byteOffset, got.byteLength), want, key);
  }
});

Deno.test("`decodeF32()` and `encodeF32()` take exactly the float dtypes and refuse every integer one", () => {
  const floats = ["F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"];
  for (const [name, info] of Object.entries(DTYPES)) {
    assert.equal(info.float, floats.includes(name), name);
    const decode = () => decodeF32(info.name, new Uint8Array(info.size));
    const encode = () => encodeF32(info.name, new Float32Array(1));
    if (info.float) {
      assert.deepEqual([decode().length, encode().length], [1, info.size], name);
    } else {
      assert.throws(decode, (e) => isCkptError(e, "DTYPE_NOT_FLOAT"), name);
      assert.throws(encode, (e) => isCkptError(e, "DTYPE_NOT_FLOAT"), name);
    }
  }
});

Deno.test("`dtypeFromTorch()` maps torch names with or without `torch.`, and torch's aliases", () => {
  for (const info of Object.values(DTYPES)) {
    assert.equal(dtypeFromTorch(info.torch), info.name);
    assert.equal(dtypeFromTorch(info.torch.slice("torch.".length)), info.name);
  }
  assert.deepEqual(
    ["half", "torch.float", "double", "long", "int", "torch.short"].map(dtypeFromTorch),
    ["F16", "F32", "F64", "I64", "I32", "I16"],
  );
  assert.throws(() => dtypeFromTorch("torch.complex64"), (e) => isCkptError(e, "DTYPE_UNKNOWN"));
  assert.throws(
    () => dtypeFromTorch("torch.torch.float32"),
    (e) => isCkptError(e, "DTYPE_UNKNOWN"),
  );
});

Deno.test("`parseDType()` reads ckpt names in any case, short names, torch names, and refuses others", () => {
  assert.deepEqual(
    ["BF16", "bf16", " f16 ", "fp32", "FP64", "bfloat16", "torch.float16", "f8_e4m3", "i64"].map(
      parseDType,
    ),
    ["BF16", "BF16", "F16", "F32", "F64", "BF16", "F16", "F8_E4M3", "I64"],
  );
  assert.throws(() => parseDType("float128"), (e) => isCkptError(e, "DTYPE_UNKNOWN"));
});

Deno.test("`encodeF32()` writes every NaN payload, signalling ones included, as the scalar encoders do", () => {
  const bits = [0x7f800001, 0x7fc00000, 0x7fffffff, 0xff800001, 0xffc00000];
  const src = new Float32Array(new Uint32Array(bits).buffer);
  for (const dtype of ["BF16", "F16"] as const) {
    const scalar = dtype === "BF16" ? f32ToBf16 : f32ToF16;
    const got = new Uint16Array(encodeF32(dtype, src).buffer);
    assert.deepEqual([...got], [...src].map(scalar), dtype);
    // ...and none of them became an infinity.
    for (const h of got) assert.notEqual(h & 0x7fff, dtype === "BF16" ? 0x7f80 : 0x7c00, dtype);
  }
});

/**
 * Interop with real torch 2.6 (the torch26 peer) and, where users of the current stack meet the same
 * files, torch 2.13 (the hf peer): what ckpt writes, `torch.load(weights_only=True)` loads (also with
 * `mmap=True`) and compares equal, Python types included; AdamW/LambdaLR accept our optimizer.pt
 * and scheduler.pt and keep training; sharded pytorch_model.bin folders load. Byte-for-byte
 * equality with `torch.save` is torch 2.6's (2.7+ writes a newer record layout). Fails (never
 * skips) when a peer is missing.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadTorch } from "../../formats/torch/load.ts";
import { saveTorch, saveTorchStateDict } from "../../formats/torch/save.ts";
import { writeTorchSharded } from "../../formats/torch/state_dict.ts";
import {
  bytesSource,
  pyDict,
  pyFloat,
  pyTuple,
  type PyValue,
  tensorOfBytes,
  tensorsOf,
  torchSize,
  TorchStorage,
  TorchTensor,
} from "../../formats/torch/values.ts";
import { DTYPE_NAMES, DTYPES } from "../../formats/dtype.ts";
import { StateDict, tensorFromBytes } from "../../formats/state_dict.ts";
import { type PeerName, runPython, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { hex } from "../_helpers/hex.ts";
import { pyTree, TORCH_FIX, TORCH_SAVED } from "../_helpers/torch.ts";

/**
 * Loads each path with weights_only=True (and again with mmap=True: `mmap_same`); returns describe()
 * plus storage-sharing groups; re-saves the pairs of argv[2] with torch.save.
 */
const LOAD_ALL = `
import json, sys, collections
sys.dont_write_bytecode = True
sys.path.insert(0, ${JSON.stringify(TORCH_FIX)})
import torch
from jsonish import describe
out = {}
for p in json.loads(sys.argv[1]):
    # values_p4.pt is torch's own protocol-4 file, which torch's weights_only loader refuses (FRAME)
    v = torch.load(p, weights_only=not p.endswith('fixtures/torch/values_p4.pt'))
    d = describe(v)
    if not p.endswith('fixtures/torch/values_p4.pt'):
        d['mmap_same'] = describe(torch.load(p, weights_only=True, mmap=True)) == d
    groups = collections.defaultdict(list)
    def walk(x, path, seen):
        if isinstance(x, torch.Tensor):
            groups[x.untyped_storage().data_ptr() if x.untyped_storage().nbytes() else ('empty', path)].append(path)
            return
        if isinstance(x, (list, tuple)) or isinstance(x, dict):
            if not isinstance(x, tuple):
                if id(x) in seen: return
                seen.add(id(x))
            items = x.items() if isinstance(x, dict) else enumerate(x)
            for k, y in items:
                walk(y, (path + '.' if path else '') + str(k), seen)
    walk(v, '', set())
    d['shared'] = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    out[p] = d
resave = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
for p, q in resave.items():
    torch.save(torch.load(p, weights_only=True), q)
print(json.dumps(out))
`;

/** Both torch versions users run: 2.6 (the torch26 peer) and 2.13 (the hf peer). */
const PEERS: readonly PeerName[] = ["torch26", "hf"];
const TORCH_OF: Record<PeerName, string> = { torch26: "2.6", hf: "2.13" };

/** What LOAD_ALL reports per file. */
interface Loaded {
  tree: unknown;
  tensors: Record<string, string>;
  shared: string[][];
  /** Loading again with mmap=True gave the same (absent for files torch refuses weights_only). */
  mmap_same?: boolean;
}

/** Our own view of a value, in the same form the Python side produces. */
async function ours(
  v: PyValue,
): Promise<{ tree: unknown; tensors: Record<string, string>; shared: string[][] }> {
  const tree = pyTree(v);
  const tensors: Record<string, string> = {};
  const groups = new Map<TorchStorage, string[]>();
  for (const [path, t] of tensorsOf(v)) {
    if (!(path in tensors)) tensors[path] = hex(await t.read());
    if (t.storage.byteLength > 0) groups.set(t.storage, [...(groups.get(t.storage) ?? []), path]);
  }
  const shared = [...groups.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort();
  return { tree, tensors, shared };
}

function sortKeys(o: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

Deno.test("saveTorch() re-writes every torch-written fixture so that torch loads it equal", async () => {
  await withTempDir(async (dir) => {
    const names = [...TORCH_SAVED, "values_p4.pt"];
    const paths: string[] = [];
    for (const name of names) {
      await using f = await loadTorch(join(TORCH_FIX, name));
      const out = join(dir, name);
      await saveTorch(out, f.value);
      paths.push(join(TORCH_FIX, name), out);
    }
    await Deno.mkdir(join(dir, "torch"));
    const resave = Object.fromEntries(names.map((n) => [join(dir, n), join(dir, "torch", n)]));
    const got = await runPythonJson<Record<string, Loaded>>(
      LOAD_ALL,
      [JSON.stringify(paths), JSON.stringify(resave)],
    );
    for (const name of names) {
      if (name === "values_p4.pt") continue; // torch's original is protocol 4; ours is protocol 2
      const ours = await Deno.readFile(join(dir, name));
      assert.deepEqual(
        ours,
        await Deno.readFile(join(TORCH_FIX, name)),
        `${name}: same bytes as torch wrote`,
      );
      assert.deepEqual(
        ours,
        await Deno.readFile(join(dir, "torch", name)),
        `${name}: torch re-saves it identically`,
      );
    }
    for (const name of names) {
      const a = got[join(TORCH_FIX, name)]!;
      const b = got[join(dir, name)]!;
      assert.deepEqual(b.tree, a.tree, `${name}: tree`);
      assert.equal(JSON.stringify(b.tree), JSON.stringify(a.tree), `${name}: key order`);
      assert.deepEqual(sortKeys(b.tensors), sortKeys(a.tensors), `${name}: tensors`);
      assert.deepEqual(b.shared, a.shared, `${name}: storage sharing`);
      assert.equal(b.mmap_same, true, `${name}: mmap=True loads the same`);
    }
  });
});

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s;
  };
}

Deno.test("saveTorch() writes values torch 2.6 and 2.13 load (also with mmap=True) with their Python types and every dtype", async (t) => {
  await withTempDir(async (dir) => {
    const rnd = seeded(42);
    const tensors: [string, PyValue][] = [];
    for (const dt of DTYPE_NAMES) {
      const shape = [3, 5];
      const bytes = new Uint8Array(15 * DTYPES[dt].size).map(() => rnd() & 0xff);
      if (dt === "BOOL") bytes.forEach((_, i) => (bytes[i] = bytes[i]! & 1));
      if (dt === "F16" || dt === "BF16" || dt === "F32" || dt === "F64" || dt.startsWith("F8")) {
        // keep floats finite and non-NaN so == comparisons on the Python side are meaningful
        const v = new DataView(bytes.buffer);
        for (let i = 0; i < 15; i++) {
          if (dt === "F32") v.setFloat32(i * 4, (rnd() % 1000) / 7, true);
          else if (dt === "F64") v.setFloat64(i * 8, (rnd() % 1000) / 7, true);
          else if (dt === "F16" || dt === "BF16") v.setUint16(i * 2, 0x3c00 + (rnd() % 512), true);
          else bytes[i] = 0x30 + (rnd() % 32);
        }
      }
      tensors.push([dt, tensorOfBytes(dt, shape, bytes)]);
    }
    tensors.push([
      "zero_d",
      tensorOfBytes("F32", [], new Uint8Array(new Float32Array([2.5]).buffer)),
    ]);
    tensors.push(["empty", tensorOfBytes("BF16", [0, 4], new Uint8Array(0))]);
    // a view with an offset and strides into a shared storage
    const store = new TorchStorage(
      "I32",
      12,
      bytesSource(new Uint8Array(new Int32Array([...Array(12).keys()]).buffer)),
    );
    const base = new TorchTensor(store, [3, 4]);
    tensors.push(["base", base]);
    tensors.push(["t", new TorchTensor(store, [4, 3], { stride: [1, 4] })]);
    tensors.push(["col", new TorchTensor(store, [3], { stride: [4], storageOffset: 1 })]);
    const fbytes = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
    const fstore = new TorchStorage("F32", 6, bytesSource(fbytes));
    const param = { stride: [3, 1], storageOffset: 1, parameter: true, requiresGrad: true };
    tensors.push(["param", new TorchTensor(fstore, [2, 2], param)]);
    tensors.push(["frozen", new TorchTensor(fstore, [2], { stride: [3], parameter: true })]);
    const value = pyDict([
      ["tensors", pyDict(tensors, "OrderedDict")],
      ["ints", [
        0,
        255,
        256,
        65535,
        65536,
        -1,
        -2147483648,
        2147483647,
        2147483648,
        2 ** 53 - 1,
        2n ** 64n,
        -(2n ** 70n),
      ]],
      ["floats", [0.5, pyFloat(1), pyFloat(-0), NaN, Infinity, -Infinity, 1e-8, pyFloat(1e20)]],
      ["keys", pyDict([[0, "a"], [-5, "b"], ["0", "c"], [2n ** 64n, "d"]])],
      ["tuples", [
        pyTuple([]),
        pyTuple([1]),
        pyTuple([1, 2]),
        pyTuple([1, 2, 3]),
        pyTuple([1, 2, 3, 4, 5]),
      ]],
      ["size", torchSize([2, 3])],
      ["bytes", [new Uint8Array([0, 128, 255])]],
      ["misc", [null, true, false, "ünï ☃", ""]],
      ["nested", pyDict([["od", pyDict([["z", 1], ["a", 2]], "OrderedDict")], ["l", [[[]]]]])],
      ["same", base],
      ["many", [...Array(2500).keys()]],
    ]);
    const path = join(dir, "values.pt");
    await saveTorch(path, value);
    await Deno.mkdir(join(dir, "torch"));
    // Empty bytes: Python pickles b"" as builtins.bytes(), which torch's weights_only loader refuses;
    // ckpt writes _codecs.encode("", "latin1") instead, so that one value is not byte-compared.
    const empty = join(dir, "empty_bytes.pt");
    await saveTorch(empty, pyDict([["b", new Uint8Array(0)]]));
    const want = await ours(value);
    for (const peer of PEERS) {
      await t.step(`torch ${TORCH_OF[peer]}`, async () => {
        await Deno.mkdir(join(dir, `torch_${peer}`));
        const resaved = join(dir, `torch_${peer}`, "values.pt"); // the archive prefix is the file name
        const got = await runPythonJson<Record<string, Loaded>>(
          LOAD_ALL,
          [JSON.stringify([path, empty]), JSON.stringify({ [path]: resaved })],
          undefined,
          {
            peer,
          },
        );
        if (peer === "torch26") {
          // torch 2.7+ writes its own newer record layout, so only 2.6 re-saves our bytes exactly.
          assert.deepEqual(
            await Deno.readFile(resaved),
            await Deno.readFile(path),
            "torch re-saves what it loaded from our file byte for byte",
          );
        }
        assert.deepEqual(got[empty]!.tree, { b: { __bytes__: "" } });
        const b = got[path]!;
        assert.deepEqual(b.tree, want.tree);
        assert.equal(JSON.stringify(b.tree), JSON.stringify(want.tree));
        assert.deepEqual(sortKeys(b.tensors), sortKeys(want.tensors));
        assert.deepEqual(b.shared, want.shared);
        assert.equal(b.mmap_same, true, "mmap=True loads the same");
        assert.equal(got[empty]!.mmap_same, true);
      });
    }
  });
});

/** Python: loads our optimizer.pt and scheduler.pt (plain and mmap), re-saves them, resumes training. */
const RESUME = `
import json, os, sys, torch
d, resaved = sys.argv[1], sys.argv[2]
o = torch.load(d + '/optimizer.pt', weights_only=True)
s = torch.load(d + '/scheduler.pt', weights_only=True)
om = torch.load(d + '/optimizer.pt', weights_only=True, mmap=True)
sm = torch.load(d + '/scheduler.pt', weights_only=True, mmap=True)
def same(a, b):
    if type(a) is not type(b): return False
    if isinstance(a, torch.Tensor): return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict): return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
mmap_same = same(o, om) and same(s, sm)  # before load_state_dict, which may edit what it is given
os.mkdir(resaved)
torch.save(o, resaved + '/optimizer.pt')
torch.save(s, resaved + '/scheduler.pt')
assert type(o) is dict and o['class'] == 'AdamW' and type(o['state_dict']['state']) is dict
assert list(o['state_dict']['state'].keys()) == [0, 1, 2, 3]
g = o['state_dict']['param_groups'][0]
assert type(g['lr']) is float and type(g['params'][0]) is int and type(g['betas']) is tuple and g['foreach'] is None
net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
opt.load_state_dict(om['state_dict'])
sched.load_state_dict(sm)
net(torch.randn(5, 4)).pow(2).mean().backward()
opt.step(); sched.step()
print(json.dumps({'step': float(opt.state_dict()['state'][0]['step']), 'lr': opt.param_groups[0]['lr'],
                  'last_epoch': sched.last_epoch, 'exp_avg0': float(opt.state_dict()['state'][0]['exp_avg'][0, 1]),
                  'mmap_same': mmap_same}))
`;

Deno.test("saveTorch() writes a HALOs optimizer.pt and a LambdaLR scheduler.pt that torch 2.6 and 2.13 resume from", async (t) => {
  await withTempDir(async (dir) => {
    const f32 = (shape: number[], fill: (i: number) => number) => {
      const n = shape.reduce((a, b) => a * b, 1);
      return tensorOfBytes(
        "F32",
        shape,
        new Uint8Array(Float32Array.from({ length: n }, (_, i) => fill(i)).buffer),
      );
    };
    const shapes = [[3, 4], [3], [2, 3], [2]];
    const state = pyDict(shapes.map((s, i): [number, PyValue] => [
      i,
      pyDict([["step", f32([], () => 2)], ["exp_avg", f32(s, (j) => j / 100)], [
        "exp_avg_sq",
        f32(s, (j) => j / 1000),
      ]]),
    ]));
    const group = pyDict([
      ["lr", 0.0002],
      ["betas", pyTuple([0.9, 0.999])],
      ["eps", 1e-8],
      ["weight_decay", 0.01],
      ["amsgrad", false],
      ["foreach", null],
      ["maximize", false],
      ["capturable", false],
      ["differentiable", false],
      ["fused", null],
      ["initial_lr", 0.001],
      ["params", [0, 1, 2, 3]],
    ]);
    const optim = pyDict([["state_dict", pyDict([["state", state], ["param_groups", [group]]])], [
      "class",
      "AdamW",
    ]]);
    const sched = pyDict([
      ["base_lrs", [0.001]],
      ["last_epoch", 2],
      ["verbose", false],
      ["_step_count", 3],
      ["_get_lr_called_within_step", false],
      ["_last_lr", [0.0002]],
      ["lr_lambdas", [null]],
    ]);
    await saveTorch(join(dir, "optimizer.pt"), optim);
    await saveTorch(join(dir, "scheduler.pt"), sched);
    for (const peer of PEERS) {
      await t.step(`torch ${TORCH_OF[peer]}`, async () => {
        const resaved = join(dir, `torch_${peer}`);
        const result = await runPythonJson<Record<string, unknown>>(
          RESUME,
          [dir, resaved],
          undefined,
          { peer },
        );
        if (peer === "torch26") {
          for (const f of ["optimizer.pt", "scheduler.pt"]) {
            assert.deepEqual(
              await Deno.readFile(join(resaved, f)),
              await Deno.readFile(join(dir, f)),
              `${f}: bytes`,
            );
          }
        }
        assert.equal(result.mmap_same, true);
        assert.equal(result.step, 3);
        assert.equal(result.last_epoch, 3);
        assert.ok(Math.abs((result.lr as number) - 0.0004) < 1e-12); // lambda(3) = 4/10
        assert.equal(typeof result.exp_avg0, "number");
      });
    }
  });
});

/** Python: a pytorch_model.bin shard folder and a single file, loaded plain and with mmap=True. */
const LOAD_SHARDS = `
import json, sys, torch, os
d = sys.argv[1]
idx = json.load(open(os.path.join(d, 'pytorch_model.bin.index.json')))
out, mmap_same = {}, True
for name, f in idx['weight_map'].items():
    t = torch.load(os.path.join(d, f), weights_only=True)[name]
    m = torch.load(os.path.join(d, f), weights_only=True, mmap=True)[name]
    mmap_same = mmap_same and t.dtype == m.dtype and torch.equal(t, m)
    out[name] = [f, str(t.dtype), list(t.shape), t.flatten().view(torch.uint8)[0].item()]
single = torch.load(os.path.join(d, 'single', 'pytorch_model.bin'), weights_only=True)
single_m = torch.load(os.path.join(d, 'single', 'pytorch_model.bin'), weights_only=True, mmap=True)
mmap_same = mmap_same and list(single) == list(single_m) and all(torch.equal(v, single_m[k]) for k, v in single.items())
print(json.dumps({'map': out, 'total': idx['metadata']['total_size'], 'files': sorted(set(idx['weight_map'].values())),
                  'single_type': type(single).__name__, 'single_keys': list(single), 'mmap_same': mmap_same}))
`;

Deno.test("writeTorchSharded() writes pytorch_model shards and index that torch 2.6 and 2.13 (and json) load", async (t) => {
  await withTempDir(async (dir) => {
    const sd = new StateDict();
    for (let i = 0; i < 5; i++) {
      sd.set(`layers.${i}.weight`, tensorFromBytes("BF16", [4, 4], new Uint8Array(32).fill(i + 1)));
    }
    sd.set("big", tensorFromBytes("F32", [40], new Uint8Array(160).fill(9)));
    const { files } = await writeTorchSharded(dir, sd, { maxShardSize: 100 });
    const single = join(dir, "single");
    await Deno.mkdir(single);
    await saveTorchStateDict(join(single, "pytorch_model.bin"), sd);
    for (const peer of PEERS) {
      await t.step(`torch ${TORCH_OF[peer]}`, async () => {
        const got = await runPythonJson<Record<string, unknown>>(LOAD_SHARDS, [dir], undefined, {
          peer,
        });
        assert.deepEqual(got.files, files);
        assert.equal(got.total, 5 * 32 + 160);
        assert.equal(got.single_type, "OrderedDict");
        assert.deepEqual(got.single_keys, [...sd.keys()]);
        assert.equal(got.mmap_same, true);
        const map = got.map as Record<string, [string, string, number[], number]>;
        assert.deepEqual(map["big"], [files[1], "torch.float32", [40], 9]);
        assert.deepEqual(map["layers.3.weight"]!.slice(1), ["torch.bfloat16", [4, 4], 4]);
      });
    }
  });
});

Deno.test("saveTorch() matches torch.save byte for byte for 1 to 700 storages (serialization id hash order)", async () => {
  await withTempDir(async (dir) => {
    const counts = [1, 12, 13, 30, 60, 130, 260, 700];
    await runPython(
      `
import sys, torch, collections, os
d = sys.argv[1]
for n in map(int, sys.argv[2].split(',')):
    os.mkdir(os.path.join(d, str(n)))
    sd = collections.OrderedDict((f'layer.{i}.weight', torch.full((2,), float(i))) for i in range(n))
    torch.save(sd, os.path.join(d, str(n), 'model.bin'))
`,
      [dir, counts.join(",")],
    );
    for (const n of counts) {
      const src = join(dir, String(n), "model.bin");
      await using f = await loadTorch(src);
      const out = join(dir, `${n}-ours`, "model.bin");
      await Deno.mkdir(join(dir, `${n}-ours`));
      await saveTorch(out, f.value);
      assert.deepEqual(await Deno.readFile(out), await Deno.readFile(src), `${n} storages`);
    }
  });
});

/**
 * `deno task bench pickle`: the torch pickle codec alone, in memory: `pickleValue` and `unpickle`
 * on an optimizer-like tree (20,000 parameter states of dicts, lists and floats) and on a state
 * dict of 20,000 small tensors (the opcode mix of `data.pkl` in a big checkpoint). Prints the best
 * of `--rounds` (default 15) per case, in ms: the unpickler's opcode loop is the hot path here.
 * @module
 */
import { StorageHandle, unpickle } from "../formats/torch/unpickle.ts";
import { pickleValue } from "../formats/torch/pickle.ts";
import {
  bytesSource,
  pyDict,
  pyFloat,
  type PyTuple,
  pyTuple,
  type PyValue,
  tensorOfBytes,
} from "../formats/torch/values.ts";
import { markdownTable, option } from "./_util.ts";

function optimizerTree(): PyValue {
  const state: [number, PyValue][] = [];
  for (let i = 0; i < 20_000; i++) {
    state.push([
      i,
      pyDict([["step", pyFloat(i)], ["exp_avg", [i, i + 1, 0.5]], ["name", `p.${i}`]]),
    ]);
  }
  const params = Array.from({ length: 20_000 }, (_, i) => i);
  const group = pyDict([["lr", 0.001], ["betas", pyTuple([0.9, 0.999])], ["params", params]]);
  return pyDict([["state", pyDict(state)], ["param_groups", [group]]]);
}

function tensorStateDict(): PyValue {
  const entries: [string, PyValue][] = [];
  for (let i = 0; i < 20_000; i++) {
    entries.push([`model.layers.${i}.weight`, tensorOfBytes("BF16", [4, 4], new Uint8Array(32))]);
  }
  return pyDict(entries, "OrderedDict");
}

/** Storages for the tensors' persistent ids (32 zero bytes each). */
function persistentLoad(pid: PyValue): StorageHandle {
  const items = (pid as PyTuple).items;
  return new StorageHandle({
    key: String(items[2]),
    storageClass: "torch.BFloat16Storage",
    location: "cpu",
    numel: 16,
    dtype: "BF16",
    source: bytesSource(new Uint8Array(32)),
    file: "bench",
  });
}

const rounds = Number(option("rounds", "15"));
const rows: string[][] = [];
for (
  const [name, make] of [["optimizer tree", optimizerTree], [
    "20k-tensor state dict",
    tensorStateDict,
  ]] as const
) {
  const value = make();
  let bytes: Uint8Array = new Uint8Array();
  let bestPickle = Infinity;
  let bestUnpickle = Infinity;
  for (let r = 0; r < rounds; r++) {
    let t = performance.now();
    bytes = pickleValue(value);
    bestPickle = Math.min(bestPickle, performance.now() - t);
    t = performance.now();
    unpickle(bytes, { persistentLoad });
    bestUnpickle = Math.min(bestUnpickle, performance.now() - t);
  }
  rows.push([name, String(bytes.length), bestPickle.toFixed(1), bestUnpickle.toFixed(1)]);
}
console.log(
  markdownTable([`best of ${rounds}`, "pickle bytes", "pickleValue (ms)", "unpickle (ms)"], rows),
);

/**
 * The unpickler's last check of its result: no cycles, depth within `maxDepth`, no storage outside
 * a tensor, and the size of the value as a tree (shared references counted each time they appear)
 * within `maxExpanded`.
 * @module
 */
import { StorageHandle } from "./_storage_handle.ts";
import type { PickleState } from "./_unpickle_state.ts";
import { PyDict, PyRecord, PyTuple, type PyValue } from "./values.ts";

/** The values inside a container (dict keys and values, record parts); undefined for a leaf. */
function kidsOf(v: object): PyValue[] | undefined {
  if (Array.isArray(v)) return v;
  if (v instanceof PyTuple) return v.items;
  if (v instanceof PyDict) {
    const out: PyValue[] = [];
    for (const [k, x] of v.map) {
      out.push(k as PyValue);
      out.push(x);
    }
    if (v.attrs) out.push(v.attrs);
    return out;
  }
  if (v instanceof PyRecord) {
    const out: PyValue[] = [...v.args];
    if (v.state !== undefined) out.push(v.state);
    if (v.listItems) out.push(...v.listItems);
    if (v.dictItems) out.push(v.dictItems);
    return out;
  }
  return undefined;
}

/**
 * Iterative check of the result: no cycles, depth within `maxDepth`, and the size of the value
 * as a tree (shared references counted each time they appear) within `maxExpanded`.
 */
export function checkTree(m: PickleState, root: PyValue): void {
  const done = new Map<object, { d: number; n: number }>();
  const onPath = new Set<object>();
  type Frame = { node: object; kids: PyValue[]; i: number; d: number; n: number };
  const storageMisuse = () => m.err("PICKLE_MALFORMED", "a storage is used outside a tensor");
  const tooDeep = () =>
    m.err("PICKLE_LIMIT", `the value is nested deeper than ${m.maxDepth} levels`);
  const start = (v: PyValue): Frame | undefined => {
    if (v === null || typeof v !== "object") return undefined;
    if ((v as unknown) instanceof StorageHandle) throw storageMisuse();
    const kids = kidsOf(v);
    return kids ? { node: v, kids, i: 0, d: 0, n: 1 } : undefined;
  };
  const first = start(root);
  if (!first) return;
  const stack: Frame[] = [first];
  onPath.add(first.node);
  const grow = (f: Frame, n: number) => {
    f.n += n;
    if (f.n > m.maxExpanded) {
      throw m.err(
        "PICKLE_LIMIT",
        `the value expands to more than ${m.maxExpanded} items (shared references counted each time)`,
      );
    }
  };
  while (stack.length > 0) {
    const f = stack[stack.length - 1]!;
    if (f.i < f.kids.length) {
      const k = f.kids[f.i++]!;
      if (k === null || typeof k !== "object") {
        grow(f, 1);
        continue;
      }
      if ((k as unknown) instanceof StorageHandle) throw storageMisuse();
      if (onPath.has(k)) {
        throw m.err("PICKLE_MALFORMED", "the value contains itself (a cycle)");
      }
      const known = done.get(k);
      if (known !== undefined) {
        // A shared value is as deep here as a copy of it would be: its levels below count too.
        if (stack.length + known.d >= m.maxDepth) throw tooDeep();
        f.d = Math.max(f.d, known.d + 1);
        grow(f, known.n);
        continue;
      }
      const nf = start(k);
      if (!nf) {
        grow(f, 1);
        continue;
      }
      if (stack.length >= m.maxDepth) throw tooDeep();
      onPath.add(k);
      stack.push(nf);
    } else {
      stack.pop();
      onPath.delete(f.node);
      done.set(f.node, { d: f.d, n: f.n });
      const parent = stack[stack.length - 1];
      if (parent) {
        parent.d = Math.max(parent.d, f.d + 1);
        grow(parent, f.n);
      }
    }
  }
}

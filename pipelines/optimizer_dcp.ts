/**
 * The torch.distributed.checkpoint optimizer source of writeOptim: an FSDP/FSDP2 optimizer folder
 * (`.metadata` + `__<rank>_<n>.distcp`, e.g. accelerate's `optimizer_0/`) is rebuilt into a torch
 * `optimizer.state_dict()` (int keys numbered over the param groups, as torch writes them) with
 * {@linkcode readDcpOptimizer}; its parameter names let writeOptim check the state against the
 * model. Registered when this module is imported (writeOptim imports it).
 *
 * @example The source recognises DCP folders only
 * ```ts
 * import { DCP_OPTIMIZER_SOURCE } from "./optimizer_dcp.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/lora_w2/optim", import.meta.url).pathname;
 * assert.equal(await DCP_OPTIMIZER_SOURCE.detect(dir), true);
 * assert.equal(await DCP_OPTIMIZER_SOURCE.detect(new URL("./", import.meta.url).pathname), false);
 * ```
 * @module
 */
import { isDcpFolder } from "../formats/dcp.ts";
import { readDcpOptimizer } from "../formats/dcp_optim.ts";
import {
  type LoadedValue,
  type OptimizerSource,
  registerOptimizerSource,
} from "./optimizer_sources.ts";

/** Optimizer state from a torch.distributed.checkpoint folder. */
export const DCP_OPTIMIZER_SOURCE: OptimizerSource = {
  name: "dcp",
  detect: (path: string): Promise<boolean> => isDcpFolder(path),
  async load(path: string, options: { keys: "int" | "name" }): Promise<LoadedValue> {
    const r = await readDcpOptimizer(path, { keyed: options.keys });
    return { value: r.value, paramNames: r.paramNames, close: () => r.close() };
  },
};

registerOptimizerSource(DCP_OPTIMIZER_SOURCE);

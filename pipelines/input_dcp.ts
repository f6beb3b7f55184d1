/**
 * The `dcp` input kind of gatherShards: a torch.distributed.checkpoint folder (`.metadata` plus
 * `__<rank>_<n>.distcp` files), as FSDP `SHARDED_STATE_DICT`, FSDP2/DTensor and accelerate's
 * `pytorch_model_fsdp_0/` leave it. Registered when this module is imported (gatherShards imports
 * it, so the kind is always available). The optimizer side (writeOptim reading a DCP optimizer folder
 * through `readDcpOptimizer`) is registered by `pipelines/optimizer_dcp.ts`.
 *
 * @example Detecting a DCP folder
 * ```ts
 * import { DCP_INPUT_KIND } from "./input_dcp.ts";
 * import { detectInputKind } from "./input_kinds.ts";
 * import assert from "node:assert/strict";
 *
 * const dir = new URL("../tests/fixtures/dcp/bf16_w4/model", import.meta.url).pathname;
 * assert.equal(await DCP_INPUT_KIND.detect(dir), true);
 * assert.equal((await detectInputKind(dir)).name, "dcp");
 * ```
 * @module
 */
import { isDcpFolder, openDcpStateDict } from "../formats/dcp.ts";
import type { StateDict } from "../formats/state_dict.ts";
import { type InputKind, type InputOpenOptions, registerInputKind } from "./input_kinds.ts";

/** The torch.distributed.checkpoint input kind. */
export const DCP_INPUT_KIND: InputKind = {
  name: "dcp",
  summary:
    "torch.distributed.checkpoint folder (.metadata + __<rank>_<n>.distcp), FSDP/FSDP2/DTensor",
  // A folder with .metadata is unambiguous: ask before the file and shard-folder kinds.
  priority: 50,
  detect: (path: string): Promise<boolean> => isDcpFolder(path),
  open: (path: string, options: InputOpenOptions): Promise<StateDict> =>
    openDcpStateDict(path, options.signal ? { signal: options.signal } : {}),
};

registerInputKind(DCP_INPUT_KIND);

/** PEFT's `check_target_module_exists`, case by case (the rules real PEFT 0.21 follows in hf_targets_test). */
import assert from "node:assert/strict";
import { isCkptError } from "../../errors.ts";
import { parseLoraConfig } from "../../formats/peft_config.ts";
import { untargetedReason } from "../../formats/peft_targets.ts";

const Q0 = "model.layers.0.self_attn.q_proj";
const Q1 = "model.layers.1.self_attn.q_proj";
const V1 = "model.layers.1.self_attn.v_proj";
const DOWN1 = "model.layers.1.mlp.down_proj";
const HEAD = "lm_head";
const EMBED = "model.embed_tokens";

function reasons(cfg: Record<string, unknown>, modules: string[], embedding = false) {
  const c = parseLoraConfig({ peft_type: "LORA", ...cfg });
  return modules.map((m) => untargetedReason(c, m, embedding) ?? "adapted");
}

Deno.test("`untargetedReason()` follows target_modules: a list by name or dot suffix, a string as a full-match regex", () => {
  assert.deepEqual(reasons({ target_modules: ["q_proj"] }, [Q0, V1, HEAD]), [
    "adapted",
    "target_modules",
    "target_modules",
  ]);
  // a suffix matches on a dot boundary only
  assert.deepEqual(reasons({ target_modules: ["proj"] }, [Q0]), ["target_modules"]);
  assert.deepEqual(reasons({ target_modules: ["self_attn.q_proj"] }, [Q0]), ["adapted"]);
  assert.deepEqual(reasons({ target_modules: [Q1] }, [Q0, Q1]), ["target_modules", "adapted"]);
  // a string must match the whole name
  assert.deepEqual(reasons({ target_modules: "q_proj" }, [Q0]), ["target_modules"]);
  assert.deepEqual(reasons({ target_modules: ".*layers\\.1\\..*_proj" }, [Q0, Q1, DOWN1]), [
    "target_modules",
    "adapted",
    "adapted",
  ]);
  // Python's named groups
  assert.deepEqual(reasons({ target_modules: ".*\\.(?P<p>q|v)_proj" }, [Q0, DOWN1]), [
    "adapted",
    "target_modules",
  ]);
  // no target_modules: PEFT would take a default by model type, which is not checked
  assert.deepEqual(reasons({}, [Q0, HEAD]), ["adapted", "adapted"]);
});

Deno.test("`untargetedReason()`: all-linear takes every linear layer but lm_head, and no embedding", () => {
  assert.deepEqual(reasons({ target_modules: "all-linear" }, [Q0, DOWN1, HEAD]), [
    "adapted",
    "adapted",
    "target_modules",
  ]);
  assert.deepEqual(reasons({ target_modules: "all-linear" }, [EMBED], true), ["target_modules"]);
});

Deno.test("`untargetedReason()`: exclude_modules and modules_to_save come first", () => {
  const t = { target_modules: ["q_proj", "v_proj", "down_proj"] };
  assert.deepEqual(reasons({ ...t, exclude_modules: ["mlp.down_proj"] }, [Q1, DOWN1]), [
    "adapted",
    "exclude_modules",
  ]);
  assert.deepEqual(reasons({ ...t, exclude_modules: ".*layers\\.1\\..*" }, [Q0, Q1]), [
    "adapted",
    "exclude_modules",
  ]);
  // an exclude regex must match the whole name, like target_modules
  assert.deepEqual(reasons({ ...t, exclude_modules: "layers\\.1" }, [Q1]), ["adapted"]);
  assert.deepEqual(
    reasons({ target_modules: ["q_proj", "lm_head"], modules_to_save: ["lm_head"] }, [Q0, HEAD]),
    ["adapted", "modules_to_save"],
  );
});

Deno.test("`untargetedReason()`: layers_to_transform keeps suffix matches of the given layers", () => {
  const t = { target_modules: ["q_proj", "v_proj"] };
  assert.deepEqual(reasons({ ...t, layers_to_transform: [1] }, [Q0, Q1, V1]), [
    "layers_to_transform",
    "adapted",
    "adapted",
  ]);
  assert.deepEqual(reasons({ ...t, layers_to_transform: 0 }, [Q0, Q1]), [
    "adapted",
    "layers_to_transform",
  ]);
  assert.deepEqual(
    reasons({ ...t, layers_to_transform: [0], layers_pattern: "h" }, [
      Q0,
      "transformer.h.0.attn.q_proj",
    ]),
    ["layers_to_transform", "adapted"],
  );
  assert.deepEqual(
    reasons({ ...t, layers_to_transform: [0], layers_pattern: ["blocks", "layers"] }, [Q0]),
    [
      "adapted",
    ],
  );
  // no layer index in the name: not adapted; an exact full name is kept as is
  assert.deepEqual(reasons({ target_modules: ["q_proj"], layers_to_transform: [0] }, ["q_proj"]), [
    "adapted",
  ]);
  assert.deepEqual(reasons({ target_modules: ["head"], layers_to_transform: [0] }, ["x.head"]), [
    "layers_to_transform",
  ]);
  // an empty list transforms every layer
  assert.deepEqual(reasons({ ...t, layers_to_transform: [] }, [Q1]), ["adapted"]);
});

Deno.test("`untargetedReason()` refuses a pattern that does not compile, naming the field", () => {
  assert.throws(
    () => reasons({ target_modules: ["q_proj"], exclude_modules: "(" }, [Q0]),
    (e) => isCkptError(e, "PEFT_CONFIG") && /exclude_modules pattern "\("/.test(e.message),
  );
});

/**
 * What `deno task mutate` mutates: the safety-critical modules, each with the test files that may
 * kill its mutants (a mutant runs only the ones whose coverage reaches its line). Interop tests
 * (the torch peer) are left out for speed, and the fault-injection suite (`tests/faults/`: mounts
 * and process kills as root) because sandboxes run side by side; the unit tests must kill the
 * mutants on their own.
 * @module
 */

/** One group of source files and the tests that cover them. */
export interface MutationTarget {
  /** Short name, used on the command line (`deno task mutate unpickler`). */
  name: string;
  /** Source files, relative to the repository root. */
  files: string[];
  /** Test files, relative to the repository root. */
  tests: string[];
}

const TORCH_TESTS = [
  "tests/formats/torch/unpickle_test.ts",
  "tests/formats/torch/unpickle_edges_test.ts",
  "tests/formats/torch/hostile_test.ts",
  "tests/formats/torch/load_test.ts",
  "tests/formats/torch/zip_test.ts",
];

/** The modules `deno task mutate` measures, in the order it runs them. */
export const TARGETS: MutationTarget[] = [
  {
    name: "safetensors-header",
    files: ["formats/_safetensors_header.ts"],
    tests: [
      "tests/formats/safetensors_read_test.ts",
      "tests/formats/safetensors_write_test.ts",
      "tests/formats/safetensors_shards_test.ts",
    ],
  },
  {
    name: "zip-reader",
    files: ["formats/torch/zip.ts", "formats/torch/_zip_directory.ts"],
    tests: [...TORCH_TESTS, "tests/formats/torch/save_test.ts"],
  },
  {
    name: "unpickler",
    files: [
      "formats/torch/unpickle.ts",
      "formats/torch/_unpickle_calls.ts",
      "formats/torch/_unpickle_check.ts",
      "formats/torch/_unpickle_globals.ts",
      "formats/torch/_unpickle_ops_containers.ts",
      "formats/torch/_unpickle_ops_objects.ts",
      "formats/torch/_unpickle_ops_values.ts",
      "formats/torch/_unpickle_state.ts",
    ],
    tests: [...TORCH_TESTS, "tests/formats/dcp_test.ts"],
  },
  {
    name: "runner",
    files: [
      "pipelines/run.ts",
      "pipelines/_run_shared.ts",
      "pipelines/_staging.ts",
      "pipelines/_staging_contents.ts",
      "pipelines/_output_lock.ts",
      "pipelines/_stage_loop.ts",
      "pipelines/_output_hasher.ts",
      "pipelines/_context.ts",
    ],
    tests: [
      "tests/pipelines/run_test.ts",
      "tests/pipelines/staging_test.ts",
      "tests/pipelines/staging_folder_test.ts",
      "tests/pipelines/output_lock_test.ts",
      "tests/pipelines/stage_loop_test.ts",
      "tests/pipelines/run_context_test.ts",
      "tests/pipelines/run_part_test.ts",
      "tests/pipelines/bad_input_test.ts",
      "tests/pipelines/hash_stream_test.ts",
      "tests/pipelines/manifest_test.ts",
    ],
  },
  {
    name: "split",
    files: [
      "pipelines/split.ts",
      "pipelines/run_part.ts",
      "pipelines/finish_parts.ts",
      "pipelines/_split_receipts.ts",
    ],
    tests: ["tests/pipelines/split_test.ts", "tests/pipelines/run_part_test.ts"],
  },
  {
    name: "verify",
    files: ["pipelines/verify.ts", "pipelines/_folder_entries.ts"],
    tests: [
      "tests/pipelines/verify_test.ts",
      "tests/pipelines/verify_merge_test.ts",
      "tests/pipelines/folder_entries_test.ts",
      "tests/cli/verify_test.ts",
    ],
  },
  {
    name: "merge-kernels",
    files: [
      "kernels/reference.ts",
      "kernels/validate.ts",
      "kernels/cpu/_rows.ts",
      "kernels/cpu/backend.ts",
      "kernels/cpu/kernel.ts",
      "kernels/cpu/wasm_emit.ts",
      "kernels/cpu/worker.ts",
    ],
    tests: [
      "tests/kernels/reference_test.ts",
      "tests/kernels/cpu/backend_test.ts",
      "tests/kernels/cpu/backend_pipeline_test.ts",
      "tests/kernels/cpu/change_sums_test.ts",
    ],
  },
  {
    name: "dtype",
    files: ["formats/dtype.ts"],
    tests: ["tests/formats/dtype_test.ts", "tests/kernels/reference_test.ts"],
  },
];

/**
 * Every error code ckpt raises, each with one line saying what it means. The codes are stable
 * across releases: scripts and tests branch on them, never on the wording of a message. The error
 * reference `docs/errors.md` is generated from this table (`deno task docs`).
 *
 * @example Every code has its line
 * ```ts
 * import { ERROR_CODES, type ErrorCode } from "./codes.ts";
 * import assert from "node:assert/strict";
 *
 * const code: ErrorCode = "SAFETENSORS_TRUNCATED";
 * assert.match(ERROR_CODES[code], /shorter than its header says/);
 * ```
 * @module
 */

/** Each stable error code with its one-line meaning. */
export const ERROR_CODES = {
  // Files and sizes (formats/)
  FILE_OPEN: "A file or folder cannot be opened (missing, no permission, not a regular file).",
  FILE_CLOSED: "A read was attempted on a file or checkpoint that was already closed.",
  FILE_TRUNCATED:
    "A positional read ran past the end of a file, or the file shrank while it was open.",
  FILE_WRITE: "An output file cannot be created or written (disk full, no permission).",
  INPUT_MISSING: "A configured input file or folder does not exist or cannot be read.",
  SIZE_INVALID: 'A size is not a byte count or a size like "5GB", "500MB", "2GiB".',
  SHARD_SIZE: "maxShardSize is not a positive integer number of bytes.",
  TENSOR_MISSING: "A state dict has no tensor of the requested name.",
  TENSOR_SIZE: "Tensor bytes do not match the dtype and shape (wrong length to decode or wrap).",
  ROW_RANGE: "A row range asked of a tensor lies outside its rows.",
  DTYPE_UNKNOWN: "A torch dtype has no safetensors equivalent that ckpt supports.",
  DTYPE_NOT_FLOAT: "An operation that needs a floating-point dtype got an integer or bool dtype.",
  JSON_PARSE: "A JSON input (metrics, config, tokenizer files) is not valid JSON.",

  // File-system operations (errors/os.ts: the operation and path are in the message)
  FS_READ_ONLY: "The file system is read-only (EROFS): the output cannot be written there.",
  FS_PERMISSION: "No permission (EACCES), or not permitted (EPERM: an immutable file or folder).",
  FS_NO_SPACE: "The device is full or the disk quota is exceeded (ENOSPC, EDQUOT).",
  FS_NAME_TOO_LONG: "A file name or path is longer than the file system allows (ENAMETOOLONG).",
  FS_NOT_EMPTY: "A folder that had to be replaced or removed is not empty (ENOTEMPTY).",
  FS_EXISTS: "A file or folder that had to be created already exists (EEXIST).",
  FS_ERROR: "Any other operating-system error of a file operation (the errno is in the message).",

  // safetensors (formats/)
  SAFETENSORS_HEADER_TOO_SMALL: "The file is shorter than the 8-byte header length field.",
  SAFETENSORS_HEADER_LENGTH: "The header length runs past the end of the file.",
  SAFETENSORS_HEADER_TOO_LARGE:
    "The header is larger than the 100 MB limit safetensors sets (reading or writing).",
  SAFETENSORS_TOO_MANY_ENTRIES:
    "The header holds over 262,144 entries (tensors, metadata), the bound on parsing memory.",
  SAFETENSORS_HEADER_UTF8: "The header bytes are not valid UTF-8.",
  SAFETENSORS_HEADER_JSON: "The header is not JSON, or its JSON is not an object.",
  SAFETENSORS_DUPLICATE: "A tensor name appears twice in the header.",
  SAFETENSORS_ENTRY: "A tensor's header entry is not an object.",
  SAFETENSORS_DTYPE: "A tensor has a dtype that is unknown or that ckpt does not support.",
  SAFETENSORS_SHAPE: "A tensor's shape is not a list of non-negative integers with a safe size.",
  SAFETENSORS_OFFSETS:
    "A tensor's data_offsets are not [begin, end] integers, or tensors overlap or leave gaps.",
  SAFETENSORS_OVERFLOW: "A tensor's shape gives a byte size too large to represent.",
  SAFETENSORS_TENSOR_SIZE:
    "A tensor's data_offsets hold a different byte count than dtype × shape.",
  SAFETENSORS_TRUNCATED: "The file is shorter than its header says (the last tensor is cut off).",
  SAFETENSORS_TRAILING: "Bytes follow the last tensor's data that the header does not cover.",
  SAFETENSORS_METADATA: "__metadata__ is not an object of string values.",
  SAFETENSORS_NAME: 'A tensor to write is named "__metadata__", which safetensors reserves.',
  SAFETENSORS_WRITE_SIZE: "A tensor source produced a different number of bytes than planned.",

  // Hugging Face shard indexes (formats/)
  HF_INDEX: "A shard index (model.safetensors.index.json) is unreadable, malformed or too large.",
  HF_INDEX_DUPLICATE: "The same tensor is stored in two shards.",
  HF_INDEX_MISSING: "The index puts a tensor in a shard that does not hold it.",
  HF_INDEX_UNLISTED: "A shard holds a tensor the index does not list, or lists elsewhere.",

  // torch.save zip archives (formats/torch/)
  ZIP_EOCD: "The file is too short for a zip, or has no end-of-central-directory record.",
  ZIP_MALFORMED: "A zip directory entry or local header is malformed, truncated or encrypted.",
  ZIP_BAD_OFFSET: "A zip directory, entry or read range lies outside the archive or the entry.",
  ZIP_LIMIT: "The zip has more entries than its central directory or the entry limit allows.",
  ZIP_NAME: "A zip entry name is not UTF-8 or not a safe relative path.",
  ZIP_DUPLICATE: "Two zip entries have the same name.",
  ZIP_OVERLAP: "The data of two zip entries overlap.",
  ZIP_COMPRESSED: "A zip entry is compressed; torch.save stores its records uncompressed.",

  // The restricted unpickler (formats/torch/)
  PICKLE_TRUNCATED: "The pickle ends in the middle of an opcode or a length runs past its end.",
  PICKLE_OPCODE: "The pickle uses an opcode or protocol the unpickler does not support.",
  PICKLE_STACK: "The pickle pops from an empty stack or a MARK that was never pushed.",
  PICKLE_MEMO: "The pickle reads a memo entry that was never stored.",
  PICKLE_MALFORMED:
    "The pickle's opcodes are inconsistent (odd item counts, wrong argument types, cycles).",
  PICKLE_LIMIT: "The pickle exceeds a safety limit: stack, memo, int size, depth or expansion.",
  PICKLE_GLOBAL:
    "The pickle names a global that is not on the allow-list (code execution refused).",
  PICKLE_REDUCE:
    "The pickle calls or instantiates something not allowed (including tensor subclasses).",
  PICKLE_BUILD: "The pickle applies BUILD to an object that does not allow it.",
  PICKLE_ARGS: "An allowed callable is given arguments of the wrong shape or types.",
  PICKLE_EXT: "The pickle uses extension-registry opcodes (EXT1/2/4), which are refused.",
  PICKLE_PERSID:
    "A persistent id is malformed, names no storage class, or has no storages to load.",
  PICKLE_UNSUPPORTED:
    "The pickle holds a tensor kind ckpt does not read (quantized, sparse, complex).",

  // torch files (formats/torch/)
  TORCH_NOT_TORCH: "The file is neither a torch.save zip archive nor a pickle.",
  TORCH_LEGACY: "The file is the legacy (pre-1.6) torch.save format; re-save it with torch >= 1.6.",
  TORCH_TORCHSCRIPT: "The file is a TorchScript archive (torch.jit.save), not a torch.save file.",
  TORCH_ARCHIVE:
    "The archive is empty, has no data.pkl, or a record outside a folder or of a bad size.",
  TORCH_VERSION: "The archive has no version record, or a version outside 1..10.",
  TORCH_BYTEORDER: "The archive's byte order is not little-endian.",
  TORCH_LIMIT: "The archive's data.pkl is larger than the configured limit.",
  TORCH_STORAGE_MISSING: "A storage the pickle refers to has no data/<key> record.",
  TORCH_STORAGE_SIZE: "A storage has fewer bytes than its tensors' shape, stride and offset need.",
  TORCH_STRIDE: "A tensor's stride does not match its shape or has invalid values.",
  TORCH_NOT_DICT: "The file's top-level value is not a dict.",
  TORCH_NOT_STATE_DICT: "The file's top-level value is not a dict of tensors.",
  TORCH_INDEX: "A pytorch_model.bin shard index is unreadable or names a missing tensor.",
  TORCH_WRITE: "A record or storage produced a different number of bytes than planned.",
  PY_TYPE: "A Python value has the wrong type to pickle or to read as a number.",
  PY_TOO_DEEP: "A Python value is nested too deeply to pickle or to convert to JSON.",
  PY_TOO_LARGE: "A Python value has too many nodes to convert to JSON.",

  // torch.distributed.checkpoint (formats/)
  DCP_METADATA_MISSING: "A DCP folder has no readable .metadata file.",
  DCP_METADATA: "A DCP .metadata file cannot be decoded or has an unexpected layout.",
  DCP_METADATA_CLASS: "A DCP .metadata pickle names a class outside the metadata allow-list.",
  DCP_UNSUPPORTED:
    "A DCP item uses transforms (compressed DCP), or HuggingFaceStorageWriter shards hold non-tensor values.",
  DCP_DTYPE: "A DCP tensor has a dtype ckpt does not support.",
  DCP_KEY_MISSING: "A DCP checkpoint has no entry of the requested name.",
  DCP_NOT_TENSOR: "A DCP entry read as a tensor is a bytes value.",
  DCP_NOT_BYTES: "A DCP entry read as a value is a tensor.",
  DCP_NO_TENSORS: "A DCP folder (or the requested root in it) holds no tensors.",
  DCP_NAME_CLASH: "Two DCP entries map to the same tensor name.",
  DCP_FILE_PATH: "A DCP item's file lies outside the checkpoint folder.",
  DCP_FILE_MISSING: "A DCP item's .distcp file cannot be opened.",
  DCP_ITEM_BOUNDS: "A DCP item's byte range ends past the end of its file.",
  DCP_CHUNK_MISSING: "The metadata lists a chunk that storage_data has no item for.",
  DCP_CHUNK_BOUNDS: "A DCP chunk lies outside its tensor's shape.",
  DCP_CHUNK_OVERLAP: "Two DCP chunks of one tensor overlap.",
  DCP_CHUNK_HOLE: "The chunks of a DCP tensor do not cover all of it.",
  DCP_RECORD: "A DCP record cannot be decoded, or holds something other than a tensor.",
  DCP_RECORD_MISMATCH: "A DCP record's dtype or shape differs from what the metadata says.",
  DCP_OPTIM_LAYOUT: "A DCP optimizer checkpoint does not have the layout torch's optimizer saves.",
  DCP_OPTIM_PARAM: "A DCP optimizer state entry cannot be matched to a parameter.",

  // Input detection and inspection (readers/)
  INPUT_KIND: "A weights input is of no known kind, or an unknown input kind was named.",
  INSPECT_UNKNOWN: "ckpt inspect does not recognise the file or folder as a checkpoint.",

  // PEFT adapters (formats/)
  PEFT_ADAPTER_MISSING: "An adapter folder does not exist or holds no adapter weights file.",
  PEFT_CONFIG: "adapter_config.json is unreadable, not JSON, or has invalid fields or patterns.",
  PEFT_UNSUPPORTED: "The adapter uses a PEFT feature a weight merge does not implement.",

  // Merge kernels and backends (kernels/, gpu/, merge/)
  MERGE_BACKEND: 'The merge backend choice is not "auto", "cpu" or "webgpu".',
  MERGE_SHAPE: "A merge request's W, A, B or magnitude sizes do not agree.",
  MERGE_DTYPE: "A merge request's dtypes are not among BF16, F16, F32.",
  MERGE_SCALE: "A merge request's scale is not a finite number.",
  MERGE_DISPOSED: "A merge was asked of a backend that was already disposed.",
  MERGE_BLOCK_TOO_LARGE: "A merge block needs more than the CPU kernel's 4 GiB memory.",
  MERGE_CPU_WORKER: "A CPU merge worker failed.",
  GPU_UNAVAILABLE: "WebGPU is not available (no navigator.gpu or no adapter).",
  GPU_DEVICE: "A WebGPU device cannot be created.",
  GPU_LIMIT: "The WebGPU adapter's limits are too small for the merge.",
  GPU_DISPATCH_TOO_LARGE: "A merge needs more workgroups than the adapter can dispatch.",
  GPU_PIPELINE: "The WGSL merge kernel failed to compile.",
  GPU_VALIDATION: "WebGPU reported a validation error while merging.",
  GPU_LOST: "The GPU device was lost during a merge.",
  GPU_BENCH: "Kernel timing was asked for a request that needs several blocks.",

  // LoRA / DoRA merge (merge/)
  LORA_SHAPE: "LoRA factors, bias or layout do not fit the base weight.",
  LORA_RANK_MISMATCH: "The adapter's factors have a different rank than its config gives.",
  LORA_FACTOR_MISSING: "A LoRA module has only one of its A and B factors, or they do not pair.",
  LORA_NO_BASE: "An adapter module targets a weight the base model does not have.",
  LORA_UNMATCHED: "Adapter tensors match no base tensor, or belong to another adapter name.",
  LORA_CONV_GROUPS: "A LoRA module targets a grouped convolution, which PEFT cannot merge either.",
  LORA_DTYPE: "A weight or factor has a dtype the merge does not take (not a float).",
  LORA_BIAS_MISSING: "A lora_bias targets a base layer that has no bias.",
  LORA_DORA: "DoRA magnitudes are missing, misshaped, unexpected, or combined with other adapters.",
  LORA_UNTARGETED:
    "Adapter tensors belong to modules its config would not adapt (PEFT would ignore them).",
  LORA_CONFLICT: "Two adapter tensors replace or train the same target.",
  LORA_TOKENS: "Trainable-token rows do not fit their embedding or are not configured.",
  LORA_WEIGHT: "An adapter's weight in a weighted merge is not finite.",
  LORA_RENAME: "A rename pattern is not a valid regular expression.",
  LORA_NONFINITE: "With safe merging, an adapter tensor or a merged value is not finite.",
  LORA_WRAPPED: "PEFT-wrapped weights were given without r and alpha to merge them.",
  LORA_WRAPPED_OPTIONS: "mergeLora got PEFT-wrapped weights but no r and alpha options.",
  LORA_NO_ADAPTER: "mergeLora got no adapter and the weights hold no PEFT-wrapped LoRA.",
  LORA_TIED_EMBEDDINGS:
    "An adapter changes tied embeddings differently and untying them was refused (tiedEmbeddings: refuse).",

  // Pipeline configs and presets (pipelines/)
  CONFIG_READ: "A pipeline config file cannot be read.",
  CONFIG_PARSE: "A pipeline config is not valid JSONC.",
  CONFIG_INVALID:
    "A config or a stage's options fail validation (the message names the JSON path).",
  CONFIG_UNKNOWN_STAGE: 'A stage\'s "use" names no known stage.',
  CONFIG_VAR_SYNTAX: "A --var argument is not name=value.",
  CONFIG_VAR_UNDEFINED: "A ${name} or ${env:NAME} variable is not defined.",
  CONFIG_VAR_CYCLE: "Config variables refer to each other in a cycle.",
  CONFIG_VAR_TOO_LARGE: "Substituting ${variables} makes a string longer than the 1 MiB limit.",
  PRESET_UNKNOWN: "No preset of that name exists (or it could not be fetched).",

  // The runner (pipelines/)
  OUTPUT_EXISTS: "The output folder already exists (pass --overwrite) or appeared during the run.",
  OUTPUT_INSIDE_INPUT: "The output folder is inside an input folder, or contains one.",
  OUTPUT_LOCKED: "Another run holds the output's lock (the message names its pid, host and start).",
  OUTPUT_NOT_CKPT:
    "The output to overwrite has no ckpt-manifest.json (ckpt did not write it); add --force.",
  STAGING_UNREPORTED: "A stage left a file or folder in staging that no stage reported writing.",
  STAGING_MISMATCH:
    "A file a stage reported writing is missing, or its size differs from the report.",
  PART_SPEC:
    "A --part is not I/N with 0 <= I < N, or --part auto finds no Slurm or Kubernetes index.",
  PART_RUNNING: "The same part of a split export is already running (the message names it).",
  PARTS_MISSING: "A finish found parts with no receipt: not run yet, still running, or killed.",
  PART_FAILED: "A finish found a part that failed (the message names it and its error).",
  PARTS_MISMATCH:
    "Parts of one split export disagree (weight plan, files) or a file is in two parts.",
  SPLIT_STAGE: "A stage does not say how it runs in a split export (split: one-part, every-part).",
  STAGE_ORDER: "A stage that needs weights runs before gatherShards.",
  STAGE_FAILED: "A stage failed with an error that is not a CkptError (the message wraps it).",
  ABORTED: "The run or verification was aborted (signal or AbortSignal); staging is removed.",
  INTERNAL: "Reported in a pipeline-error event when a stage threw something not a CkptError.",
  MANIFEST_MISSING: "A folder has no ckpt-manifest.json.",
  MANIFEST_INVALID: "ckpt-manifest.json is not JSON or does not match the manifest schema.",

  // Stages (pipelines/stages/)
  GATHER_DUPLICATE:
    "Stripping wrapper prefixes (module., _orig_mod.) maps two tensors to one name.",
  CONFIG_JSON:
    "The model's config.json or generation_config.json is not a JSON object, or cannot be read.",
  MODEL_WRAPPED: "writeModel got PEFT-wrapped weights: merge them or write the adapter.",
  TIED_WEIGHTS: "Tied embeddings disagree, or config.json unties them and there is no lm_head.",
  ADAPTER_MISSING: "writeModel with what: adapter has no adapter or LoRA tensors to write.",
  ADAPTER_MISMATCH: "An adapter tensor does not fit the base model.",
  ADAPTER_IN_MERGED:
    "Adapter files sit beside merged weights; transformers would load the adapter.",
  TOKENIZER_MISSING: "No tokenizer files are found in the adapter or base folder.",
  TOKENIZER_INVALID: "Tokenizer files are malformed, or a token edit does not fit the vocabulary.",
  TOKENIZER_TEMPLATE: "The chat template does not render with Jinja.",
  TEMPLATE_TIMEOUT:
    "The chat template ran longer than its time limit when rendered (a loop bomb?).",
  TEMPLATE_TOO_LARGE: "Rendering the chat template needed more than its memory or output limit.",
  TOKENIZER_VOCAB: "The tokenizer has more token ids than the model's embedding rows.",
  OPTIM_INVALID: "The optimizer input is malformed or missing tensors it refers to.",
  OPTIM_MISMATCH: "The optimizer state does not match the model's parameters or param groups.",
  SCHEDULER_INVALID: "The scheduler state is not a dict.",
  METRICS_INPUT: "The metrics input is empty, not a JSON object, or not given.",
  METRICS_STEP: "The requested step is not in the metrics JSONL.",
  METRICS_COUNTER: "No example counter: set counter in the config or give an input with one.",
  VALUE_HEAD_MISSING: "No value-head tensor is found in the input.",
  VALUE_HEAD_MISMATCH: "The value head's width differs from the model's hidden_size.",
  REPORT_NO_MERGE:
    "writeReport ran with no mergeLora stage before it: there is no merge to report.",
  REPORT_INCOMPLETE:
    "writeReport ran before any merged module was written: put it after writeModel.",

  // Scheduled exports (pipelines/watch/)
  WATCH_CONFIG: "The watch settings are invalid.",
  WATCH_STATE: "The watcher's state.json is not JSON or has an unknown version.",
  WATCH_LOCK: "The watcher's lock file cannot be created.",
  WATCH_LOCK_TIMEOUT: "Another watcher still holds the lock.",
  WATCH_SCHEDULE: "The schedule is invalid, or Deno.cron is unavailable (needs --unstable-cron).",
  WATCH_VERIFY: "An export's verification failed after it was written.",
  WATCH_VERIFY_FILE: "A verification check of an exported file failed.",
  WATCH_PRUNE: "An old export cannot be deleted: it holds an input or has no manifest.",
  EXPORT_FAILED: "Recorded in watch state when an export threw something not a CkptError.",
} as const satisfies Record<string, string>;

/** A stable error code: one of the keys of {@linkcode ERROR_CODES}. */
export type ErrorCode = keyof typeof ERROR_CODES;

/**
 * {@linkcode StorageHandle}: what the unpickler's persistent ids resolve to (re-exported by
 * `unpickle.ts`).
 * @module
 */
import { CkptError } from "../../errors.ts";
import { type DType, DTYPES } from "../dtype.ts";
import { type StorageSource, TorchStorage } from "./tensor.ts";

/**
 * What a persistent id (`BINPERSID`) resolved to: a storage whose dtype may only be known when a
 * rebuild function uses it (`UntypedStorage` + `_rebuild_tensor_v3`). {@linkcode StorageHandle.typed}
 * returns one {@linkcode TorchStorage} per dtype, cached, so views of one storage share it.
 */
export class StorageHandle {
  /** Record key (`"0"`). */
  readonly key: string;
  /** Storage class as `module.name` (`torch.FloatStorage`, `torch.storage.UntypedStorage`). */
  readonly storageClass: string;
  /** Location (`"cpu"`). */
  readonly location: string;
  /** Count from the persistent id: elements for typed storages, bytes for `UntypedStorage`. */
  readonly numel: number;
  /** dtype of a typed storage class, undefined for untyped ones. */
  readonly dtype: DType | undefined;
  /** The bytes (a zip record). */
  readonly source: StorageSource;
  /** File name for errors. */
  readonly file: string;
  #typed = new Map<DType, TorchStorage>();
  /** Creates a handle; checks that the source holds the bytes the id claims (`TORCH_STORAGE_SIZE`). */
  constructor(
    init: {
      key: string;
      storageClass: string;
      location: string;
      numel: number;
      dtype: DType | undefined;
      source: StorageSource;
      file: string;
    },
  ) {
    this.key = init.key;
    this.storageClass = init.storageClass;
    this.location = init.location;
    this.numel = init.numel;
    this.dtype = init.dtype;
    this.source = init.source;
    this.file = init.file;
    const need = this.dtype === undefined ? this.numel : this.numel * DTYPES[this.dtype].size;
    if (need > this.source.byteLength) {
      throw new CkptError(
        "TORCH_STORAGE_SIZE",
        `Cannot load storage "${this.key}": its id claims ${need} bytes, the record has ${this.source.byteLength}`,
        { file: this.file },
      );
    }
  }
  /** The storage as elements of `dtype` (the handle's own dtype for typed storages). */
  typed(dtype: DType): TorchStorage {
    if (this.dtype !== undefined && this.dtype !== dtype) {
      throw new CkptError(
        "PICKLE_ARGS",
        `Cannot view storage "${this.key}" of ${this.dtype} as ${dtype}`,
        { file: this.file },
      );
    }
    let s = this.#typed.get(dtype);
    if (!s) {
      const item = DTYPES[dtype].size;
      const elems = this.dtype === undefined ? Math.floor(this.numel / item) : this.numel;
      s = new TorchStorage(dtype, elems, this.source, { location: this.location, key: this.key });
      this.#typed.set(dtype, s);
    }
    return s;
  }
}

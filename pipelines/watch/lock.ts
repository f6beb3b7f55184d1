/**
 * The lock `ckpt watch` takes per checkpoint and on its state file: {@linkcode FileLock}, an
 * advisory `flock` that dies with its holder. It lives in `pipelines/lock.ts`, where the runner
 * takes its output locks with it too; this module keeps the names where watch code imports them.
 * @module
 */
export * from "../lock.ts";

/**
 * Why a stage writes its options type out although `defineStage` infers it: JSR publishes only
 * explicit types (no inferred `const` in the public API) and `deno doc --lint` rejects zod's types
 * in it, so `z.input<typeof schema>` cannot be a public type. Each stage therefore keeps one
 * documented options interface and proves it equal to its schema's input type with
 * {@linkcode Same}: a schema and an interface that drift apart no longer compile.
 * @module
 */

/** `true` exactly when `A` and `B` are the same type (optional keys and `undefined` included). */
export type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2)
  ? true
  : false;

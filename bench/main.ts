/**
 * `deno task bench <name>...`: runs the named benchmarks (all when none is named). Each
 * `bench/<name>.ts` module is a program that prints its own table; this only dispatches.
 * @module
 */
const BENCHES: Record<string, string[]> = {
  io: ["./io.ts", "./io_torch.ts"],
  pickle: ["./pickle.ts"],
  merge: ["./merge.ts"],
  merge_lora: ["./merge_lora.ts"],
  merge_kernel: ["./merge_kernel.ts"],
  e2e: ["./e2e.ts"],
  gather: ["./gather.ts"],
  watch: ["./watch.ts"],
  latency: ["./latency.ts"],
  diff: ["./diff.ts"],
  parts: ["./parts.ts"],
};

const names = Deno.args.filter((a) => !a.startsWith("-"));
const chosen = names.length > 0 ? names : Object.keys(BENCHES);
for (const name of chosen) {
  const files = BENCHES[name];
  if (!files) {
    console.error(`bench: unknown benchmark "${name}" (known: ${Object.keys(BENCHES).join(", ")})`);
    Deno.exit(2);
  }
  for (const file of files) {
    const url = new URL(file, import.meta.url);
    console.log(`\n## bench ${name}: ${file}`);
    const { code } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--v8-flags=--max-old-space-size=4096",
        url.pathname,
        ...Deno.args.filter((a) => a.startsWith("-")),
      ],
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (code !== 0) Deno.exit(code);
  }
}

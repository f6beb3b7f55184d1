/**
 * Builds the demo training-run folder the example configs read:
 *
 * ```sh
 * deno run -A examples/make_run.ts examples/demo-run [--size tiny|small|1gb]
 * deno run -A cli.ts run examples/ppo_final.jsonc
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { DEMO_SHAPES, makeDemoRun } from "./_demo_run.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: { size: { type: "string", default: "small" } },
  allowPositionals: true,
});
const dir = positionals[0] ?? new URL("./demo-run", import.meta.url).pathname;
const size = values.size as keyof typeof DEMO_SHAPES;
if (!Object.hasOwn(DEMO_SHAPES, size)) {
  console.error(`make_run: --size must be one of ${Object.keys(DEMO_SHAPES).join(", ")}`);
  Deno.exit(2);
}
const run = await makeDemoRun(dir, { size });
console.log(`built ${run.dir} (${size}: base ${run.baseBytes} bytes of weights)`);

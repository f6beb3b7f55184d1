/**
 * `ckpt verify <folder>`: checks a finished checkpoint against its manifest.
 * @module
 */
import { verifyCheckpoint } from "../pipelines/verify.ts";
import { parseCommand, stringOption, UsageError } from "./_args.ts";
import { withSignals } from "./run.ts";

const HELP = `ckpt verify: check a finished checkpoint folder

Usage: ckpt verify <folder> [--base <model>] [--adapter <adapter>] [--samples N] [--json]

Checks every file's size and sha256 against ckpt-manifest.json (and that none was added or
removed), that every file loads (safetensors headers, torch pickles through the restricted
unpickler, JSON), and with --base and --adapter recomputes sampled merged rows W + s·B·A in
float64 and compares them with the stored weights.

Options:
  --base <path>       base model folder or weights file the checkpoint was merged from
  --adapter <path>    LoRA adapter folder merged into it
  --samples <n>       rows sampled per adapted tensor (default 4)
  --hashes-only       skip loading files
  --json              print the result as one JSON object
  -h, --help          this help

Exit codes: 0 verified, 1 a check failed, 2 usage error, 130 interrupted`;

/** Entry point of `ckpt verify`. */
export async function run(args: string[]): Promise<number> {
  const parsed = parseCommand(args, {
    base: { type: "string" },
    adapter: { type: "string" },
    samples: { type: "string" },
    "hashes-only": { type: "boolean" },
    json: { type: "boolean" },
  }, HELP);
  if (!parsed) return 0;
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`expected one folder, got ${parsed.positionals.length}`);
  }
  const base = stringOption(parsed, "base");
  const adapter = stringOption(parsed, "adapter");
  if ((base === undefined) !== (adapter === undefined)) {
    throw new UsageError("--base and --adapter go together");
  }
  const samplesText = stringOption(parsed, "samples");
  const samples = samplesText === undefined ? undefined : Number(samplesText);
  if (samples !== undefined && (!Number.isInteger(samples) || samples < 1)) {
    throw new UsageError(`--samples must be a positive integer (got "${samplesText}")`);
  }
  const folder = parsed.positionals[0]!;
  const result = await withSignals((signal) =>
    verifyCheckpoint(folder, {
      ...(base === undefined ? {} : { base }),
      ...(adapter === undefined ? {} : { adapter }),
      ...(samples === undefined ? {} : { samples }),
      hashesOnly: parsed.values["hashes-only"] === true,
      signal,
    })
  );
  if (parsed.values.json === true) {
    console.log(JSON.stringify(result));
  } else {
    for (const c of result.checks) {
      const what = c.file ?? c.tensor ?? "";
      console.log(`${c.ok ? "ok  " : "FAIL"}  ${c.kind.padEnd(8)} ${what}  ${c.message}`);
    }
    console.log(
      `${
        result.ok ? "verified" : "NOT verified"
      }: ${result.filesHashed} files hashed, ${result.filesLoaded} loaded, ${result.rowsChecked} merged rows recomputed`,
    );
  }
  return result.ok ? 0 : 1;
}

/**
 * Shared argument handling for `cli/` commands: `node:util` parseArgs with `--help` on every
 * command and usage errors that map to exit code 2.
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/** Thrown for wrong usage (exit code 2). */
export class UsageError extends Error {
  /** Creates a usage error. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Options of {@linkcode parseCommand}. */
export type CommandOptions = NonNullable<ParseArgsConfig["options"]>;

/** Parsed arguments, or `undefined` when `--help` was printed. */
export interface Parsed {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

/**
 * Parses `args` strictly; prints `help` and returns `undefined` on `--help`/`-h`. Unknown options
 * and missing values become a {@linkcode UsageError}.
 */
export function parseCommand(
  args: string[],
  options: CommandOptions,
  help: string,
): Parsed | undefined {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(help);
    return undefined;
  }
  try {
    const { values, positionals } = parseArgs({
      args,
      options,
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Parsed["values"], positionals };
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

/** A string option's value, or a usage error when it is required and missing. */
export function stringOption(parsed: Parsed, name: string, required: true): string;
export function stringOption(parsed: Parsed, name: string, required?: false): string | undefined;
export function stringOption(parsed: Parsed, name: string, required = false): string | undefined {
  const v = parsed.values[name];
  if (v === undefined) {
    if (required) throw new UsageError(`missing --${name}`);
    return undefined;
  }
  if (typeof v !== "string") throw new UsageError(`--${name} needs a value`);
  return v;
}

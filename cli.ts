/**
 * The `ckpt` command. A thin shell over the library: it declares the commands, lazily imports each
 * one's code from `cli/`, and is the only place that prints and exits.
 *
 * ```sh
 * deno run -A jsr:@ckpt/pipelines/cli --help
 * deno install -g -A -n ckpt ./cli.ts
 * ```
 *
 * Exit codes: 0 success, 1 a run failed (a {@linkcode CkptError} or verification failure),
 * 2 wrong usage (unknown command or option), 130 interrupted. Every failure prints one line
 * `ckpt <command>: [CODE] message`; an operating-system error that reached this far is coded
 * from its errno (`errors/os.ts`), anything else is `[INTERNAL]` (a bug), with its stack only
 * when `CKPT_DEBUG=1`.
 *
 * SIGINT/SIGTERM are handled from the first statement on, before any command's code loads
 * (`cli/_signals.ts`): a signal at any moment ends the process within a second with exit 130
 * (0 for `ckpt watch`), leaving no staging folder.
 * @module
 */
// Only the signal handling and the package version are imported statically: everything else
// loads after the listeners are installed (errors and argument parsing too, in main()).
import { installSignals, processSignal } from "./cli/_signals.ts";
import denoJson from "./deno.json" with { type: "json" };
if (import.meta.main) installSignals(Deno.args[0] === "watch" ? 0 : 130);

/** A subcommand module: `cli/<name>.ts` exports `run(args)` returning an exit code. */
export interface CommandModule {
  /** Runs the command with its own arguments; returns the exit code. */
  run(args: string[]): Promise<number>;
}

/** The commands, their one-line summary and their lazy loader. */
export const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  run: { summary: "run a pipeline config (JSONC) end to end", load: () => import("./cli/run.ts") },
  merge: {
    summary: "merge a LoRA adapter into base weights (--base --adapter --out)",
    load: () => import("./cli/merge.ts"),
  },
  gather: {
    summary: "gather sharded weights (DCP, HF shards, .bin) into one model folder",
    load: () => import("./cli/gather.ts"),
  },
  inspect: {
    summary: "list the tensors and values of a checkpoint file or folder",
    load: () => import("./cli/inspect.ts"),
  },
  diff: {
    summary: "compare two models tensor by tensor (exit 0 equal, 1 different, 2 usage error)",
    load: () => import("./cli/diff.ts"),
  },
  verify: {
    summary: "check a finished checkpoint folder against its manifest",
    load: () => import("./cli/verify.ts"),
  },
  watch: {
    summary: "export each new checkpoint of a training run (once, or on a cron schedule)",
    load: () => import("./cli/watch.ts"),
  },
};

/** Version of this package. */
export const VERSION: string = denoJson.version;

/** Top-level help text. */
export function helpText(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) =>
    `  ${name.padEnd(width)}  ${c.summary}`
  );
  return [
    `ckpt ${VERSION}: turn the raw output of a fine-tuning run into a finished checkpoint`,
    "",
    "Usage: ckpt <command> [options]   (ckpt <command> --help for a command's options)",
    "",
    "Commands:",
    ...lines,
    "",
    "Exit codes: 0 ok, 1 failed, 2 usage error, 130 interrupted",
  ].join("\n");
}

/** Runs the CLI with `args` and returns the exit code (never exits itself). */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(helpText());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-V") {
    console.log(`ckpt ${VERSION}`);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`ckpt: unknown command "${name}"\n\n${helpText()}`);
    return 2;
  }
  const [{ CkptError }, { isOsError, osErrorFromMessage }, { UsageError }] = await Promise.all([
    import("./errors.ts"),
    import("./errors/os.ts"),
    import("./cli/_args.ts"),
  ]);
  try {
    const mod = await command.load();
    const signal = processSignal();
    if (signal?.aborted) {
      // the signal came while the command's code loaded: nothing was started
      console.error(`ckpt ${name}: [ABORTED] Cannot start: ${(signal.reason as Error).message}`);
      return name === "watch" ? 0 : 130;
    }
    return await mod.run(rest);
  } catch (err) {
    if (err instanceof CkptError) {
      console.error(`ckpt ${name}: [${err.code}] ${err.message}`);
      return err.code === "ABORTED" ? 130 : 1;
    }
    if (err instanceof UsageError) {
      console.error(`ckpt ${name}: ${err.message}\n(see ckpt ${name} --help)`);
      return 2;
    }
    if (isOsError(err)) {
      const coded = osErrorFromMessage(err);
      console.error(`ckpt ${name}: [${coded.code}] ${coded.message}`);
      return 1;
    }
    // A bug: say so in one line; the stack only when asked for (CKPT_DEBUG=1).
    console.error(`ckpt ${name}: [INTERNAL] ${err instanceof Error ? err.message : String(err)}`);
    if (debugRequested() && err instanceof Error && err.stack) console.error(err.stack);
    return 1;
  }
}

function debugRequested(): boolean {
  try {
    return Deno.env.get("CKPT_DEBUG") === "1";
  } catch {
    return false;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}

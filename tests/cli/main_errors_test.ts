/** The CLI's last net: whatever a command throws becomes one line, never a stack trace. */
import assert from "node:assert/strict";
import { COMMANDS, main } from "../../cli.ts";

async function capture(thrown: unknown, env?: string): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => void lines.push(args.map(String).join(" "));
  COMMANDS.boom = {
    summary: "throws",
    load: () => Promise.resolve({ run: () => Promise.reject(thrown) }),
  };
  if (env !== undefined) Deno.env.set("CKPT_DEBUG", env);
  try {
    return { code: await main(["boom"]), lines };
  } finally {
    console.error = original;
    delete COMMANDS.boom;
    Deno.env.delete("CKPT_DEBUG");
  }
}

Deno.test("`main()` codes an OS error from its errno, naming the operation and path", async () => {
  let err: unknown;
  try {
    await Deno.mkdir("/tmp/" + "n".repeat(300));
  } catch (e) {
    err = e;
  }
  const { code, lines } = await capture(err);
  assert.equal(code, 1);
  assert.equal(lines.length, 1, lines.join("\n"));
  assert.match(
    lines[0]!,
    /^ckpt boom: \[FS_NAME_TOO_LONG\] Cannot mkdir "\/tmp\/n+": .*\(ENAMETOOLONG\)$/,
  );
});

Deno.test("`main()` reports a bug as one [INTERNAL] line; the stack only with CKPT_DEBUG=1", async () => {
  const quiet = await capture(new TypeError("x is undefined"));
  assert.equal(quiet.code, 1);
  assert.deepEqual(quiet.lines, ["ckpt boom: [INTERNAL] x is undefined"]);
  const debug = await capture(new TypeError("x is undefined"), "1");
  assert.equal(debug.lines.length, 2);
  assert.match(debug.lines[1]!, /^TypeError: x is undefined\n\s+at /);
});

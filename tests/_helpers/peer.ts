/**
 * Runs Python in one of the real peers the interop tests talk to: `torch26` (torch 2.6 with
 * safetensors 0.4.5) or `hf` (torch 2.13, transformers 5.17, peft 0.21, accelerate 1.15,
 * safetensors 0.8). `deno task peers` provides them and `tools/peers/peers.ts` says where each comes
 * from (a `CKPT_*_PEER` launcher, `../shared/tools`, or the repository's own build in
 * `~/.cache/ckpt/peers`). Tests that need a peer fail loudly when it is missing: a silent skip
 * would hide an interop break.
 * @module
 */
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { findPeer, type PeerName } from "../../tools/peers/peers.ts";

export type { PeerName } from "../../tools/peers/peers.ts";

/** Repository root. */
export const REPO_ROOT: string = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The launcher of `peer` (`LAUNCHER python3 ...`); throws with what to run when it is missing. */
export function peerPath(peer: PeerName = "torch26"): string {
  const found = findPeer(peer);
  if (!found) {
    throw new Error(
      `the ${peer} peer is missing: run 'deno task peers' (deno task test runs it first; see docs/compatibility.md)`,
    );
  }
  return found.path;
}

/** Result of a peer run. */
export interface PeerResult {
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode runPython}. */
export interface RunPythonOptions {
  /** The peer (default `torch26`). */
  peer?: PeerName;
  /** Seconds before the run is killed (default: none). */
  timeoutSeconds?: number;
}

/**
 * Runs `python3 -c <script> ...args` with a peer, with the current folder set to `cwd` (default: the
 * repo root; the torch26 chroot sees it and /tmp at the same paths). Throws with stderr when Python
 * fails.
 */
export async function runPython(
  script: string,
  args: string[] = [],
  cwd: string = REPO_ROOT,
  options: RunPythonOptions = {},
): Promise<PeerResult> {
  const peer = options.peer ?? "torch26";
  const launcher = peerPath(peer);
  const signal = options.timeoutSeconds === undefined
    ? undefined
    : AbortSignal.timeout(options.timeoutSeconds * 1000);
  const out = await new Deno.Command(launcher, {
    args: ["python3", "-c", script, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
    ...(signal ? { signal } : {}),
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new Error(`${peer} peer failed (exit ${out.code}):\n${stderr}\n${stdout}`);
  }
  return { stdout, stderr };
}

/**
 * Runs `argv` (`["python3", "script.py", ...]`) with a peer in `cwd` (default: the repo root).
 * Throws with stderr when it fails.
 */
export async function runPeer(
  peer: PeerName,
  argv: string[],
  cwd: string = REPO_ROOT,
): Promise<PeerResult> {
  const out = await new Deno.Command(peerPath(peer), {
    args: argv,
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new Error(`${peer} peer failed (exit ${out.code}):\n${stderr}\n${stdout}`);
  }
  return { stdout, stderr };
}

/** Runs a peer script and parses the last stdout line as JSON. */
export async function runPythonJson<T = unknown>(
  script: string,
  args: string[] = [],
  cwd?: string,
  options: RunPythonOptions = {},
): Promise<T> {
  const { stdout } = await runPython(script, args, cwd, options);
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1] ?? "null") as T;
}

/** {@linkcode runPythonJson} with the `hf` peer (torch 2.13 and the current Hugging Face stack). */
export function runHfJson<T = unknown>(
  script: string,
  args: string[] = [],
  cwd?: string,
): Promise<T> {
  return runPythonJson<T>(script, args, cwd, { peer: "hf" });
}

/** The Python side of {@linkcode PeerSession}: runs one script per stdin line, answers one line. */
const SESSION_SERVER = String.raw`
import contextlib, io, json, sys, traceback
out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    buf = io.StringIO()
    resp = {"ok": True}
    try:
        sys.argv = ["-c", *req["args"]]
        with contextlib.redirect_stdout(buf):
            exec(compile(req["script"], "<peer script>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        if e.code not in (None, 0): resp = {"ok": False, "error": "SystemExit(%r)" % (e.code,)}
    except BaseException:
        resp = {"ok": False, "error": traceback.format_exc()}
    resp["stdout"] = buf.getvalue()
    out.write(json.dumps(resp) + "\n")
    out.flush()
`;

/**
 * One long-lived Python process of a peer that runs many scripts, so that a test file pays for
 * importing torch (and transformers, peft) once. Scripts run one at a time, each in a fresh global
 * namespace with `sys.argv` set; modules stay imported. The process ends when the test process does
 * (it is unref'd and reads EOF), or at {@linkcode PeerSession.close}.
 */
export class PeerSession {
  readonly #peer: PeerName;
  #child: Deno.ChildProcess | undefined;
  #writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  #lines: AsyncIterator<string> | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #stderr = "";

  /** A session of `peer` (started on the first run). */
  constructor(peer: PeerName) {
    this.#peer = peer;
  }

  #start(): void {
    const child = new Deno.Command(peerPath(this.#peer), {
      args: ["python3", "-u", "-c", SESSION_SERVER],
      cwd: REPO_ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    child.unref();
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())
      [Symbol.asyncIterator]();
    (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.#stderr = (this.#stderr + chunk).slice(-20000);
      }
    })().catch(() => {});
  }

  /** Runs `script` with `args`; resolves with what it printed. Throws with the traceback. */
  run(script: string, args: string[] = []): Promise<string> {
    const next = this.#queue.then(async () => {
      if (!this.#child) this.#start();
      const line = JSON.stringify({ script, args }) + "\n";
      this.#child!.ref(); // keeps the test process alive while the script runs
      let got: IteratorResult<string>;
      try {
        await this.#writer!.write(new TextEncoder().encode(line));
        got = await this.#lines!.next();
      } finally {
        this.#child?.unref();
      }
      if (got.done) {
        throw new Error(`${this.#peer} peer session ended:\n${this.#stderr}`);
      }
      const resp = JSON.parse(got.value) as { ok: boolean; error?: string; stdout: string };
      if (!resp.ok) {
        throw new Error(`${this.#peer} peer script failed:\n${resp.error}\n${resp.stdout}`);
      }
      return resp.stdout;
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  /** {@linkcode PeerSession.run}, parsing the last printed line as JSON. */
  async json<T = unknown>(script: string, args: string[] = []): Promise<T> {
    const lines = (await this.run(script, args)).trim().split("\n");
    return JSON.parse(lines[lines.length - 1] ?? "null") as T;
  }

  /** Ends the Python process. */
  async close(): Promise<void> {
    if (!this.#child) return;
    await this.#writer!.close().catch(() => {});
    await this.#child.status;
    this.#child = undefined;
  }
}

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, ctl) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const p of parts) ctl.enqueue(p);
    },
    flush(ctl) {
      if (rest) ctl.enqueue(rest);
    },
  });
}

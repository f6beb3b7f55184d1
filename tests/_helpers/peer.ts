/**
 * Runs Python in one of the real peers the interop tests talk to: `torch26` (torch 2.6 with
 * safetensors 0.4.5) or `hf` (torch 2.13, transformers 5.17, peft 0.21, accelerate 1.15,
 * safetensors 0.8). `deno task peers` provides them and `tools/peers/peers.ts` says where each comes
 * from (a `CKPT_*_PEER` launcher, `../shared/tools`, or the repository's own build in
 * `~/.cache/ckpt/peers`). Tests that need a peer fail loudly when it is missing: a silent skip
 * would hide an interop break.
 *
 * Scripts run in one long-lived Python process per peer ({@linkcode PeerSession}), so the test run
 * imports torch (and transformers, peft) once per peer instead of once per script; each script gets
 * fresh globals, its own `sys.argv` and working folder, and the interpreter's `sys.path`,
 * environment and warning filters are restored after it. `fresh: true` runs a script in a process
 * of its own; {@linkcode runPeer} runs any command.
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
  /** Run in a Python process of its own instead of the peer's shared session. */
  fresh?: boolean;
}

/**
 * Runs `argv` (`["python3", "script.py", ...]`) with a peer, in a process of its own, in `cwd`
 * (default: the repo root; the torch26 chroot sees it and /tmp at the same paths). Throws with
 * stderr when it fails.
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

/**
 * Runs `python3 -c <script> ...args` with a peer (default `torch26`) in `cwd` (default: the repo
 * root): in the peer's shared session, or in a process of its own with `fresh`. Throws with the
 * traceback when Python fails.
 */
export async function runPython(
  script: string,
  args: string[] = [],
  cwd: string = REPO_ROOT,
  options: RunPythonOptions = {},
): Promise<PeerResult> {
  const peer = options.peer ?? "torch26";
  if (options.fresh) return await runPeer(peer, ["python3", "-c", script, ...args], cwd);
  return { stdout: await peerSession(peer).run(script, args, cwd), stderr: "" };
}

/** Runs a peer script (see {@linkcode runPython}) and parses the last stdout line as JSON. */
export async function runPythonJson<T = unknown>(
  script: string,
  args: string[] = [],
  cwd?: string,
  options: RunPythonOptions = {},
): Promise<T> {
  const { stdout } = await runPython(script, args, cwd, options);
  return lastJson<T>(stdout);
}

/**
 * Runs a committed Python file (path relative to the repo root, or absolute) with `args` in a peer's
 * shared session (as `python3 FILE ARGS`: `__name__` is `"__main__"`, `__file__` the path) and
 * parses the last stdout line as JSON.
 */
export async function runPythonFile<T = unknown>(
  peer: PeerName,
  file: string,
  args: string[] = [],
): Promise<T> {
  const path = resolve(REPO_ROOT, file);
  const script = await Deno.readTextFile(path);
  return lastJson<T>(await peerSession(peer).run(script, args, undefined, path));
}

/** {@linkcode runPythonFile} with the `hf` peer (torch 2.13 and the current Hugging Face stack). */
export function runHfPython<T = unknown>(file: string, args: string[] = []): Promise<T> {
  return runPythonFile<T>("hf", file, args);
}

function lastJson<T>(stdout: string): T {
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1] ?? "null") as T;
}

const sessions = new Map<PeerName, PeerSession>();

/** The shared session of `peer` (one per peer in this test process, started on first use). */
export function peerSession(peer: PeerName): PeerSession {
  let s = sessions.get(peer);
  if (!s) sessions.set(peer, s = new PeerSession(peer));
  return s;
}

/** The Python side of {@linkcode PeerSession}: runs one script per stdin line, answers one line. */
const SESSION_SERVER = String.raw`
import contextlib, io, json, os, sys, traceback, warnings
out = sys.stdout
cwd0, path0, env0 = os.getcwd(), list(sys.path), dict(os.environ)
for line in sys.stdin:
    req = json.loads(line)
    buf = io.StringIO()
    resp = {"ok": True}
    try:
        os.chdir(req.get("cwd") or cwd0)
        sys.argv = [req.get("file") or "-c", *req["args"]]
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            g = {"__name__": "__main__"}
            if req.get("file"): g["__file__"] = req["file"]
            exec(compile(req["script"], req.get("file") or "<peer script>", "exec"), g)
    except SystemExit as e:
        if e.code not in (None, 0): resp = {"ok": False, "error": "SystemExit(%r)" % (e.code,)}
    except BaseException:
        resp = {"ok": False, "error": traceback.format_exc()}
    finally:
        os.chdir(cwd0)
        sys.path[:] = path0
        os.environ.clear(); os.environ.update(env0)
    resp["stdout"] = buf.getvalue()
    out.write(json.dumps(resp) + "\n")
    out.flush()
`;

/**
 * One long-lived Python process of a peer that runs many scripts, one at a time (see the module
 * doc). The process is started on the first run and ends when the test process does (it is
 * unref'd while idle and reads EOF), or at {@linkcode PeerSession.close}; if it dies, the next run
 * starts a new one.
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
    this.#stderr = "";
    this.#writer = child.stdin.getWriter();
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())
      [Symbol.asyncIterator]();
    (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.#stderr = (this.#stderr + chunk).slice(-20000);
      }
    })().catch(() => {});
  }

  /**
   * Runs `script` with `args` in `cwd` (`file`: the path it was read from, its `__file__`);
   * resolves with what it printed. Throws with the traceback.
   */
  run(script: string, args: string[] = [], cwd?: string, file?: string): Promise<string> {
    const next = this.#queue.then(async () => {
      if (!this.#child) this.#start();
      const line = JSON.stringify({ script, args, cwd: cwd ?? null, file: file ?? null }) + "\n";
      this.#child!.ref(); // keeps the test process alive while the script runs
      let got: IteratorResult<string>;
      try {
        await this.#writer!.write(new TextEncoder().encode(line));
        got = await this.#lines!.next();
      } catch (err) {
        got = { done: true, value: String(err) };
      } finally {
        this.#child?.unref();
      }
      if (got.done) {
        this.#child = undefined; // the next run starts a new process
        throw new Error(`${this.#peer} peer session ended:\n${this.#stderr}`);
      }
      const resp = JSON.parse(got.value) as { ok: boolean; error?: string; stdout: string };
      if (!resp.ok) {
        throw new Error(
          `${this.#peer} peer script failed:\n${resp.error}\n${resp.stdout}\n${
            this.#stderr.slice(-4000)
          }`,
        );
      }
      return resp.stdout;
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  /** {@linkcode PeerSession.run}, parsing the last printed line as JSON. */
  async json<T = unknown>(script: string, args: string[] = [], cwd?: string): Promise<T> {
    return lastJson<T>(await this.run(script, args, cwd));
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

/**
 * `deno task peers`: the real Python stacks the interop tests hand ckpt's files to, provided by the
 * repository itself so that `deno task test` passes on any machine with Deno, Python 3 and pip.
 *
 * - `hf`: the current Hugging Face stack in a venv: torch 2.13.0 (CPU), transformers 5.17.0,
 *   peft 0.21.0, accelerate 1.15.0, safetensors 0.8.0, numpy.
 * - `torch26`: torch 2.6.0 with safetensors 0.4.5 and numpy 2.2.4: a venv where pip can get
 *   torch 2.6 (Python 3.9-3.13 against PyPI), else a Debian 13 chroot of Debian's own packages
 *   (`torch26-chroot.sh`; needs root, debootstrap or apt, a Debian mirror).
 *
 * pip installs from whatever index the machine's pip is configured with: when its configuration
 * names local `file://` indexes, only those (offline, no network retries); otherwise its default
 * (PyPI). torch comes as the `+cpu` wheel where the index has it, else from PyTorch's CPU index.
 *
 * Each peer is reached through a launcher, `LAUNCHER python3 script.py ...`, found in this order:
 * `CKPT_HF_PEER` / `CKPT_TORCH26_PEER` (a launcher path); `../shared/tools/hf-peer` /
 * `torch-peer` next to the repository (a fast path on machines that provide them; skipped with
 * `CKPT_PEERS_SHARED=0`); the repository's own build in `$CKPT_PEERS_DIR/<peer>/run` (default
 * `~/.cache/ckpt/peers`, outside the repository, shared by clones).
 *
 * ```sh
 * deno task peers                 # provide every peer that is missing (first build: minutes)
 * deno task peers --check         # report where each peer comes from; exit 1 when one is missing
 * deno task peers --own           # ignore ../shared/tools (build and use the repository's own)
 * deno task peers hf python x.py  # run a command with a peer (provided first if missing)
 * ```
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The peers the interop tests use. */
export type PeerName = "hf" | "torch26";

/** Every peer, in the order `deno task peers` provides them. */
export const PEER_NAMES: readonly PeerName[] = ["hf", "torch26"];

/** Repository root. */
export const REPO: string = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The pinned Python packages of a peer: torch apart (it has its own index rules). */
export interface PeerPins {
  /** torch version, without a local label. */
  readonly torch: string;
  /** The other requirements, pip syntax. */
  readonly packages: readonly string[];
}

/** What each peer holds. */
export const PEER_PINS: Readonly<Record<PeerName, PeerPins>> = {
  hf: {
    torch: "2.13.0",
    packages: [
      "transformers==5.17.0",
      "peft==0.21.0",
      "accelerate==1.15.0",
      "safetensors==0.8.0",
      "numpy",
    ],
  },
  torch26: { torch: "2.6.0", packages: ["safetensors==0.4.5", "numpy==2.2.4"] },
};

const ENV_VAR: Record<PeerName, string[]> = {
  hf: ["CKPT_HF_PEER"],
  torch26: ["CKPT_TORCH26_PEER", "CKPT_TORCH_PEER"],
};
const SHARED_TOOL: Record<PeerName, string> = { hf: "hf-peer", torch26: "torch-peer" };
const PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu";

/** Where the repository's own peers live: `$CKPT_PEERS_DIR`, default `~/.cache/ckpt/peers`. */
export function peersDir(): string {
  const set = Deno.env.get("CKPT_PEERS_DIR");
  if (set) return resolve(set);
  const cache = Deno.env.get("XDG_CACHE_HOME") ?? join(Deno.env.get("HOME") ?? "/tmp", ".cache");
  return join(cache, "ckpt", "peers");
}

/** A peer's launcher and where it came from. */
export interface PeerLauncher {
  /** Executable: `launcher python3 ...` runs Python with the peer. */
  readonly path: string;
  /** `env` (a variable names it), `shared` (../shared/tools), `own` (the repository's build). */
  readonly origin: "env" | "shared" | "own";
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function ownReady(name: PeerName): boolean {
  return exists(join(peersDir(), name, ".ready")) && exists(join(peersDir(), name, "run"));
}

/** The launcher of `name` (see the module doc for the order), or undefined when none is ready. */
export function findPeer(name: PeerName): PeerLauncher | undefined {
  for (const v of ENV_VAR[name]) {
    const path = Deno.env.get(v);
    if (path) return { path, origin: "env" };
  }
  const shared = join(REPO, "..", "shared", "tools", SHARED_TOOL[name]);
  if (Deno.env.get("CKPT_PEERS_SHARED") !== "0" && exists(shared)) {
    return { path: shared, origin: "shared" };
  }
  if (ownReady(name)) return { path: join(peersDir(), name, "run"), origin: "own" };
  return undefined;
}

/** Runs a command; resolves with its exit code (output appended to `log` when given). */
async function sh(cmd: string[], log?: string, env?: Record<string, string>): Promise<number> {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    stdout: log ? "piped" : "inherit",
    stderr: log ? "piped" : "inherit",
    ...(env ? { env } : {}),
  }).output();
  if (log) {
    const text = `$ ${cmd.join(" ")}\n` + new TextDecoder().decode(out.stdout) +
      new TextDecoder().decode(out.stderr) + `(exit ${out.code})\n`;
    await Deno.writeTextFile(log, text, { append: true });
  }
  return out.code;
}

async function capture(cmd: string[]): Promise<string> {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    stdout: "piped",
    stderr: "null",
  })
    .output().catch(() => undefined);
  return out?.success ? new TextDecoder().decode(out.stdout).trim() : "";
}

/**
 * The index options for pip: the `file://` indexes pip's configuration names, as the only indexes
 * (offline), or nothing (pip's own configuration, PyPI by default).
 */
async function indexArgs(pip: string[]): Promise<string[]> {
  const urls: string[] = [];
  for (const key of ["global.index-url", "global.extra-index-url"]) {
    const v = await capture([...pip, "config", "get", key]);
    urls.push(...v.split(/\s+/).filter((u) => u.startsWith("file://")));
  }
  return urls.flatMap((u, i) => [i === 0 ? "--index-url" : "--extra-index-url", u]);
}

function python(): string {
  return Deno.env.get("CKPT_PEERS_PYTHON") ?? "python3";
}

const VENV_RUN = (extra: string) =>
  `#!/usr/bin/env bash
# Written by ckpt's tools/peers/peers.ts: runs a command with this peer's venv first on PATH.
here="$(cd "$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
export PATH="$here/venv/bin:$PATH" VIRTUAL_ENV="$here/venv"${extra}
exec "$@"
`;

/** pip-installs a peer into `<dir>/venv`; false when pip cannot provide its torch. */
async function buildVenv(name: PeerName, dir: string, log: string): Promise<boolean> {
  const pins = PEER_PINS[name];
  const venv = join(dir, "venv");
  const py = join(venv, "bin", "python");
  await Deno.remove(venv, { recursive: true }).catch(() => {});
  // A venv with its own pip; where Python has no ensurepip (Debian without python3-venv), a venv
  // without pip that the system's pip installs into (pip --python, pip >= 22.3).
  let pipCmd = [py, "-m", "pip"];
  if ((await sh([python(), "-m", "venv", venv], log)) !== 0) {
    await Deno.remove(venv, { recursive: true }).catch(() => {});
    if ((await sh([python(), "-m", "venv", "--without-pip", venv], log)) !== 0) return false;
    pipCmd = [python(), "-m", "pip", "--python", py];
  }
  const idx = await indexArgs(pipCmd);
  const pip = [...pipCmd, "install", "-q", "--disable-pip-version-check"];
  // torch: the CPU wheel from the configured index, else from PyTorch's CPU index.
  const torchOk = (await sh([...pip, ...idx, `torch==${pins.torch}+cpu`], log)) === 0 ||
    (await sh([
        ...pip,
        "--timeout",
        "30",
        "--retries",
        "1",
        "--index-url",
        PYTORCH_CPU_INDEX,
        `torch==${pins.torch}`,
      ], log)) === 0;
  if (!torchOk) return false;
  if ((await sh([...pip, ...idx, ...pins.packages], log)) !== 0) return false;
  const mods = name === "hf"
    ? "torch, transformers, peft, accelerate, safetensors"
    : "torch, safetensors, numpy";
  const check =
    `import ${mods}, torch; assert torch.__version__.split("+")[0] == "${pins.torch}", torch.__version__`;
  if ((await sh([py, "-c", check], log)) !== 0) return false;
  const hfEnv = name === "hf"
    ? " HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false"
    : "";
  await Deno.writeTextFile(join(dir, "run"), VENV_RUN(hfEnv), { mode: 0o755 });
  return true;
}

/** Builds the torch 2.6 Debian chroot into `<dir>/chroot`; false when it cannot be built here. */
async function buildChroot(dir: string, log: string): Promise<boolean> {
  const script = join(REPO, "tools", "peers", "torch26-chroot.sh");
  if ((await sh(["bash", script, "build", join(dir, "chroot")], log)) !== 0) return false;
  await Deno.copyFile(script, join(dir, "chroot.sh"));
  const run = `#!/usr/bin/env bash
# Written by ckpt's tools/peers/peers.ts: runs a command inside the torch 2.6 chroot (needs root).
here="$(cd "$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
exec bash "$here/chroot.sh" run "$here/chroot" "$@"
`;
  await Deno.writeTextFile(join(dir, "run"), run, { mode: 0o755 });
  return true;
}

async function tail(path: string, lines = 25): Promise<string> {
  const text = await Deno.readTextFile(path).catch(() => "");
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** Builds the repository's own `name` peer (under a lock). Throws with the reason on failure. */
export async function buildOwnPeer(name: PeerName): Promise<void> {
  const dir = join(peersDir(), name);
  await Deno.mkdir(dir, { recursive: true });
  using lock = await Deno.open(join(peersDir(), `${name}.lock`), { create: true, write: true });
  await lock.lock(true); // one builder at a time; the others wait, then find it ready
  if (ownReady(name)) return;
  await Deno.remove(join(dir, ".ready")).catch(() => {});
  const log = join(dir, "build.log");
  await Deno.writeTextFile(log, "");
  const t0 = performance.now();
  console.error(`peers: building ${name} in ${dir} (once; minutes)`);
  let ok = await buildVenv(name, dir, log);
  let how = "venv";
  if (!ok && name === "torch26") {
    await Deno.remove(join(dir, "venv"), { recursive: true }).catch(() => {});
    console.error("peers: pip has no torch 2.6 here; trying the Debian 13 chroot (needs root)");
    ok = await buildChroot(dir, log);
    how = "chroot";
  }
  if (!ok) {
    throw new Error(
      `peers: cannot build ${name} (${
        name === "torch26"
          ? "pip has no torch 2.6.0 wheel for this Python/index, and the Debian chroot needs root, debootstrap or apt, and a Debian mirror"
          : "pip cannot install the pinned packages from its configured index"
      }). Last lines of ${log}:\n${await tail(log)}`,
    );
  }
  await Deno.writeTextFile(join(dir, ".ready"), `${how}\n`);
  console.error(`peers: ${name} ready (${how}, ${((performance.now() - t0) / 1000).toFixed(0)} s)`);
}

/** Makes `name` available: the env launcher must exist, the shared tool is `--ensure`d, else own. */
export async function ensurePeer(name: PeerName): Promise<PeerLauncher> {
  const found = findPeer(name);
  if (found?.origin === "env") {
    if (!exists(found.path)) {
      throw new Error(`peers: ${name} launcher ${found.path} does not exist`);
    }
    return found;
  }
  if (found?.origin === "shared") {
    if ((await sh([found.path, "--ensure"])) === 0) return found;
    throw new Error(`peers: ${found.path} --ensure failed`);
  }
  if (found) return found;
  await buildOwnPeer(name);
  return findPeer(name)!;
}

/** Ensures every peer; returns the ones that could not be provided, with the reason. */
export async function ensurePeers(): Promise<Map<PeerName, string>> {
  const failed = new Map<PeerName, string>();
  for (const name of PEER_NAMES) {
    try {
      const p = await ensurePeer(name);
      console.log(`peers: ${name.padEnd(7)} ${p.origin.padEnd(6)} ${p.path}`);
    } catch (err) {
      failed.set(name, (err as Error).message);
      console.error((err as Error).message);
    }
  }
  return failed;
}

async function main(args: string[]): Promise<number> {
  if (args.includes("--own")) Deno.env.set("CKPT_PEERS_SHARED", "0");
  const rest = args.filter((a) => a !== "--own");
  if (rest[0] === "--check") {
    let missing = 0;
    for (const name of PEER_NAMES) {
      const p = findPeer(name);
      console.log(`peers: ${name.padEnd(7)} ${p ? `${p.origin.padEnd(6)} ${p.path}` : "missing"}`);
      if (!p) missing++;
    }
    return missing === 0 ? 0 : 1;
  }
  if (rest.length === 0) return (await ensurePeers()).size === 0 ? 0 : 1;
  const name = rest[0] as PeerName;
  if (!PEER_NAMES.includes(name)) {
    console.error(
      `usage: deno task peers [--own] [--check | ${PEER_NAMES.join(" | ")} CMD ARGS...]`,
    );
    return 2;
  }
  const p = await ensurePeer(name);
  if (rest.length === 1) {
    console.log(p.path);
    return 0;
  }
  return await sh([p.path, ...rest.slice(1)]);
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (err) {
    console.error((err as Error).message);
    Deno.exit(1);
  }
}

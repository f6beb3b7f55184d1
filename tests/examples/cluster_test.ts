/**
 * examples/cluster/ runs as written: the Slurm scripts are run with bash as Slurm would run them
 * (each array task with its SLURM_ARRAY_* variables, in shuffled order, side by side, then the
 * finish), submit.sh is run against a recording `sbatch`, and the Kubernetes Jobs are parsed (by
 * PyYAML in the hf peer: fails, never skips, without it), checked for what a split export needs
 * (Indexed, completions = parallelism = CKPT_PARTS = the finish's count, one ReadWriteMany claim)
 * and their containers' arguments run for every completion index. Each way, the finished export
 * equals the one-machine export of the same config byte for byte.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeDemoRun } from "../../examples/_demo_run.ts";
import { REPO_ROOT, runPythonJson } from "../_helpers/peer.ts";
import { withTempDir } from "../_helpers/tmp.ts";
import { comparableManifest, shuffled, treeDigest } from "../_helpers/split_run.ts";

const CLUSTER = join(REPO_ROOT, "examples", "cluster");
const CONFIG = join(CLUSTER, "export.jsonc");
const CKPT = `${Deno.execPath()} run -A ${join(REPO_ROOT, "cli.ts")}`;

/** The part of a Kubernetes Job the test reads. */
interface K8sJob {
  apiVersion: string;
  kind: string;
  spec: {
    completionMode?: string;
    completions?: number;
    parallelism?: number;
    template: {
      spec: {
        containers: Array<{ args: string[]; env?: Array<{ name: string; value: string }> }>;
        volumes: Array<{ name: string; persistentVolumeClaim?: { claimName: string } }>;
      };
    };
  };
}

async function sh(
  argv: string[],
  env: Record<string, string>,
): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", CKPT, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** The `#SBATCH` options of a script, as `name -> value`. */
async function sbatchOptions(file: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const line of (await Deno.readTextFile(file)).split("\n")) {
    const m = /^#SBATCH\s+--([a-z-]+)(?:=(\S+))?/.exec(line);
    if (m) out[m[1]!] = m[2] ?? "";
  }
  return out;
}

/** The tree and comparable manifest of `out`, which is then removed. */
async function takeExport(out: string) {
  const tree = await treeDigest(out);
  delete tree["ckpt-manifest.json"];
  const manifest = await comparableManifest(out);
  await Deno.remove(out, { recursive: true });
  return { tree, manifest };
}

Deno.test("examples/cluster: the sbatch array, its finish job and the Kubernetes Indexed Job export what one machine exports", async () => {
  await withTempDir(async (dir) => {
    const run = join(dir, "run");
    await makeDemoRun(run, { size: "tiny" });
    const vars = ["--var", `run=${run}`, "--var", "shard=8KB"];
    const out = join(run, "export");
    const one = await sh(["bash", "-c", `exec $CKPT run "$0" "$@"`, CONFIG, ...vars], {});
    assert.equal(one.code, 0, one.out);
    const want = await takeExport(out);

    // Slurm: --array=0-7, each task with the variables Slurm sets, then the finish job.
    const opts = await sbatchOptions(join(CLUSTER, "export.sbatch"));
    const [first, last] = opts.array!.split("-").map(Number) as [number, number];
    assert.deepEqual([first, last], [0, 7]);
    const count = last - first + 1;
    const tasks = shuffled([...Array(count).keys()], 11).map((id) =>
      sh(["bash", join(CLUSTER, "export.sbatch"), ...vars], {
        SLURM_ARRAY_TASK_ID: String(id),
        SLURM_ARRAY_TASK_COUNT: String(count),
        SLURM_ARRAY_TASK_MIN: String(first),
        SLURM_ARRAY_TASK_MAX: String(last),
      })
    );
    for (const t of await Promise.all(tasks)) assert.equal(t.code, 0, t.out);
    const finish = await sh(["bash", join(CLUSTER, "finish.sbatch"), ...vars], {});
    assert.equal(finish.code, 0, finish.out);
    assert.deepEqual(await takeExport(out), want);

    // submit.sh: the finish is queued behind the array with afterok.
    const bin = join(dir, "bin");
    await Deno.mkdir(bin);
    const log = join(dir, "sbatch.log");
    await Deno.writeTextFile(
      join(bin, "sbatch"),
      `#!/bin/bash\necho "$*" >> "${log}"\n[ "$1" = --parsable ] && echo "4242;cluster" || echo "Submitted batch job 4243"\n`,
    );
    await Deno.chmod(join(bin, "sbatch"), 0o755);
    const submit = await sh(["bash", join(CLUSTER, "submit.sh"), ...vars], {
      PATH: `${bin}:${Deno.env.get("PATH")}`,
    });
    assert.equal(submit.code, 0, submit.out);
    const calls = (await Deno.readTextFile(log)).trim().split("\n");
    assert.equal(calls.length, 2);
    assert.match(
      calls[0]!,
      /^--parsable --array=0-7 \S+\/export\.sbatch --var run=\S+ --var shard=8KB$/,
    );
    assert.match(calls[1]!, /^--dependency=afterok:4242 \S+\/finish\.sbatch --var run=/);

    // Kubernetes: the Indexed Job of parts, then the finish Job.
    const [parts, fin] = await runPythonJson<K8sJob[]>(
      `import json, sys, yaml
print(json.dumps([yaml.safe_load(open(f)) for f in sys.argv[1:]]))`,
      [join(CLUSTER, "export-parts.yaml"), join(CLUSTER, "export-finish.yaml")],
      REPO_ROOT,
      { peer: "hf" },
    );
    for (const job of [parts!, fin!]) {
      assert.equal(job.apiVersion, "batch/v1");
      assert.equal(job.kind, "Job");
      const claim = job.spec.template.spec.volumes.find((v) => v.name === "runs");
      assert.equal(claim?.persistentVolumeClaim?.claimName, "training-runs");
    }
    const spec = parts!.spec;
    assert.equal(spec.completionMode, "Indexed");
    assert.equal(spec.completions, spec.parallelism);
    const container = spec.template.spec.containers[0]!;
    const completions = spec.completions!;
    const env = Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value]));
    assert.equal(Number(env.CKPT_PARTS), completions);
    const finArgs = fin!.spec.template.spec.containers[0]!.args;
    assert.equal(Number(finArgs[finArgs.indexOf("--finish") + 1]), completions);
    // The containers run `deno <args>` in the ckpt checkout with the runs volume at /runs.
    const local = (args: string[]) =>
      args.map((a) =>
        a === "cli.ts"
          ? join(REPO_ROOT, "cli.ts")
          : a.startsWith("examples/")
          ? join(REPO_ROOT, a)
          : a.replace(/^run=\/runs\/llama3-70b$/, `run=${run}`)
      ).concat(["--var", "shard=8KB"]);
    const pods = shuffled([...Array(completions).keys()], 5).map((i) =>
      sh([Deno.execPath(), ...local(container.args)], {
        ...env,
        JOB_COMPLETION_INDEX: String(i),
      })
    );
    for (const p of await Promise.all(pods)) assert.equal(p.code, 0, p.out);
    const finished = await sh([Deno.execPath(), ...local(finArgs)], {});
    assert.equal(finished.code, 0, finished.out);
    assert.deepEqual(await takeExport(out), want);
  });
});

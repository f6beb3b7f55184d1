/**
 * Where an export's time goes, without a profiler: the readers, writers, merge backends, hashing
 * and the runner add the milliseconds they spend in each phase to one process-wide clock while it
 * is enabled (off by default: then each call is one boolean test). Phases overlap (reading runs
 * while the workers merge and the writer writes), so the figures are busy times per phase, not
 * slices of the wall time; `wait-*` phases are the time the writer stood still.
 *
 * `deno task bench e2e` enables it for the merge job and prints the table.
 *
 * @example Timing a phase
 * ```ts
 * import { phaseClock } from "./phase_clock.ts";
 * import assert from "node:assert/strict";
 *
 * phaseClock.enable();
 * const t0 = phaseClock.start();
 * await new Promise((r) => setTimeout(r, 5));
 * phaseClock.stop("read", t0, 1024);
 * const { read } = phaseClock.snapshot();
 * assert.ok(read !== undefined && read.ms >= 4 && read.bytes === 1024 && read.calls === 1);
 * phaseClock.disable();
 * assert.equal(phaseClock.start(), 0);
 * ```
 * @module
 */

/**
 * The phases: `read` (positional reads of inputs), `cast` (dtype conversions outside the merge
 * kernel), `merge` (a block on the merge backend, its decode and encode included), `write` (output
 * bytes handed to the OS), `hash` (sha256 on the hash worker), `fsync` (the writers' background
 * syncs while they write, and the runner's fsyncs of files and folders), `wait-data` (a writer
 * waiting for its next block), `wait-hash` (a writer waiting for the hash worker to catch up).
 */
export type Phase =
  | "read"
  | "cast"
  | "merge"
  | "write"
  | "hash"
  | "fsync"
  | "wait-data"
  | "wait-hash";

/** Time, bytes and calls of one phase. */
export interface PhaseTotal {
  /** Milliseconds spent. */
  ms: number;
  /** Bytes moved (0 where a phase does not count them). */
  bytes: number;
  /** Calls timed. */
  calls: number;
}

/** The process-wide phase clock; see the module doc. */
export class PhaseClock {
  #on = false;
  #totals = new Map<Phase, PhaseTotal>();

  /** Starts counting (and clears the totals). */
  enable(): void {
    this.#on = true;
    this.#totals.clear();
  }

  /** Stops counting. */
  disable(): void {
    this.#on = false;
  }

  /** Whether the clock counts. */
  get enabled(): boolean {
    return this.#on;
  }

  /** A start time for {@linkcode PhaseClock.stop}: `performance.now()`, or 0 when disabled. */
  start(): number {
    return this.#on ? performance.now() : 0;
  }

  /** Adds the time since `t0` (from {@linkcode PhaseClock.start}) and `bytes` to `phase`. */
  stop(phase: Phase, t0: number, bytes = 0): void {
    if (!this.#on || t0 === 0) return;
    this.add(phase, performance.now() - t0, bytes);
  }

  /** Adds `ms` and `bytes` to `phase` (for times measured elsewhere, such as on a worker). */
  add(phase: Phase, ms: number, bytes = 0): void {
    if (!this.#on) return;
    const t = this.#totals.get(phase) ?? { ms: 0, bytes: 0, calls: 0 };
    t.ms += ms;
    t.bytes += bytes;
    t.calls++;
    this.#totals.set(phase, t);
  }

  /** The totals so far, by phase (phases never timed are absent). */
  snapshot(): Partial<Record<Phase, PhaseTotal>> {
    const out: Partial<Record<Phase, PhaseTotal>> = {};
    for (const [p, t] of this.#totals) out[p] = { ...t };
    return out;
  }
}

/** The clock every instrumented module adds to. */
export const phaseClock: PhaseClock = new PhaseClock();

/**
 * Renders pipeline events for people and for machines: on a terminal, a live line per stage with
 * bytes, rate and ETA; elsewhere (cron logs, `--log json`), one JSON object per line.
 *
 * @example JSON lines for a cron log
 * ```ts
 * import { createJsonRenderer } from "./progress.ts";
 * import assert from "node:assert/strict";
 *
 * const lines: string[] = [];
 * const render = createJsonRenderer((line) => lines.push(line), () => new Date(0));
 * render({ type: "stage-start", stage: "writeModel", index: 2 });
 * assert.deepEqual(JSON.parse(lines[0]!), {
 *   ts: "1970-01-01T00:00:00.000Z",
 *   type: "stage-start",
 *   stage: "writeModel",
 *   index: 2,
 * });
 * ```
 * @module
 */
import type { PipelineEvent } from "./stage.ts";

/** Receives one rendered chunk (a JSON line without newline, or terminal text). */
export type TextSink = (text: string) => void;

/** A function that renders events. */
export type EventRenderer = (event: PipelineEvent) => void;

/** Formats a byte count: `512 B`, `1.5 KB`, `3.20 GB` (powers of 1000, like file managers). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

/** Formats a duration in seconds: `850ms`, `12.3s`, `4m05s`, `1h02m`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "?";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** The JSON object logged for an event: the event plus an ISO `ts`. */
export function eventToJson(event: PipelineEvent, now: Date = new Date()): string {
  return JSON.stringify({ ts: now.toISOString(), ...event });
}

/**
 * One JSON object per event (`{"ts": ..., "type": ..., ...}`), for cron logs and `--log json`.
 * Progress events are throttled to at most one per `progressEveryMs` per stage (default 1000),
 * always keeping the final one (`done === total`).
 */
export function createJsonRenderer(
  write: TextSink,
  now: () => Date = () => new Date(),
  progressEveryMs = 1000,
): EventRenderer {
  const last = new Map<string, number>();
  return (event) => {
    if (event.type === "progress" && event.done < event.total) {
      const t = now().getTime();
      const prev = last.get(event.stage);
      if (prev !== undefined && t - prev < progressEveryMs) return;
      last.set(event.stage, t);
    }
    write(eventToJson(event, now()));
  };
}

interface StageState {
  name: string;
  index: number;
  start: number;
  done: number;
  total: number;
  unit: string;
  lastUpdate: number;
  samples: Array<[number, number]>;
}

/** Text of the live line for a stage (exported for tests). */
export function progressLine(
  stage: { name: string; index: number; done: number; total: number; unit: string },
  count: number,
  elapsedMs: number,
  rate: number,
): string {
  const head = `[${stage.index + 1}/${count}] ${stage.name}`;
  if (stage.total <= 0) return `${head}  ${formatDuration(elapsedMs)}`;
  const pct = Math.min(100, (100 * stage.done) / stage.total);
  const fmt = stage.unit === "bytes" ? formatBytes : (n: number) => String(n);
  const unit = stage.unit === "bytes" ? "" : ` ${stage.unit}`;
  const rateText = rate > 0
    ? stage.unit === "bytes" ? `${formatBytes(rate)}/s` : `${rate.toFixed(1)}${unit}/s`
    : "";
  const eta = rate > 0 && stage.done < stage.total
    ? `ETA ${formatDuration((1000 * (stage.total - stage.done)) / rate)}`
    : "";
  return [
    head,
    `${fmt(stage.done)} / ${fmt(stage.total)}${unit}`,
    `${pct.toFixed(0)}%`,
    rateText,
    eta,
  ].filter((s) => s !== "").join("  ");
}

/** "1 file", "2 files": a count with its unit, singular for one. */
function countOf(n: number, unit: string): string {
  return `${n} ${n === 1 && unit.endsWith("s") ? unit.slice(0, -1) : unit}`;
}

const CLEAR = "\r\x1b[2K";

/** The live line's state and drawing; {@linkcode createTtyRenderer} feeds it the events. */
class TtyLine {
  count = 0;
  live: StageState | undefined;
  #ticker: ReturnType<typeof setInterval> | undefined;

  constructor(
    readonly write: TextSink,
    readonly now: () => number,
    readonly refreshMs: number,
    readonly tickMs: number,
  ) {}

  stopTicker(): void {
    if (this.#ticker !== undefined) clearInterval(this.#ticker);
    this.#ticker = undefined;
  }

  draw(s: StageState, t: number): void {
    const first = s.samples[0] ?? [s.start, 0];
    const dt = t - first[0];
    const rate = dt > 0 ? (1000 * (s.done - first[1])) / dt : 0;
    this.write(CLEAR + progressLine(s, this.count, t - s.start, rate));
  }

  stageStart(stage: string, index: number, t: number): void {
    const live: StageState = {
      name: stage,
      index,
      start: t,
      done: 0,
      total: 0,
      unit: "bytes",
      lastUpdate: -Infinity,
      samples: [[t, 0]],
    };
    this.live = live;
    this.draw(live, t);
    if (this.tickMs <= 0) return;
    // Keeps the elapsed time moving in stages that send no progress; never holds the process.
    this.stopTicker();
    const id = setInterval(() => {
      if (this.live) this.draw(this.live, this.now());
    }, this.tickMs);
    Deno.unrefTimer(id);
    this.#ticker = id;
  }

  progress(e: Extract<PipelineEvent, { type: "progress" }>, t: number): void {
    const live = this.live;
    if (!live || live.name !== e.stage) return;
    live.done = e.done;
    live.total = e.total;
    live.unit = e.unit;
    live.samples.push([t, e.done]);
    while (live.samples.length > 2 && t - live.samples[0]![0] > 5000) live.samples.shift();
    if (t - live.lastUpdate >= this.refreshMs || e.done >= e.total) {
      live.lastUpdate = t;
      this.draw(live, t);
    }
  }

  stageEnd(e: Extract<PipelineEvent, { type: "stage-end" }>): void {
    const live = this.live;
    const total = live && live.total > 0
      ? `  ${live.unit === "bytes" ? formatBytes(live.total) : countOf(live.total, live.unit)}`
      : "";
    this.stopTicker();
    this.write(
      `${CLEAR}[${e.index + 1}/${this.count}] ${e.stage}${total}  done in ${
        formatDuration(e.ms)
      }\n`,
    );
    this.live = undefined;
  }
}

/**
 * A live terminal line per stage: rewritten in place (`\r`, clear-to-end) at most every
 * `refreshMs` (default 100), finished with the stage's time; logs and errors print on their own
 * lines. Rate is measured over the last few seconds, the ETA from it. While a stage runs the line is
 * also redrawn every `tickMs` (default 500; 0 turns it off) so its elapsed time keeps moving.
 */
export function createTtyRenderer(
  write: TextSink,
  now: () => number = () => performance.now(),
  refreshMs = 100,
  tickMs = 500,
): EventRenderer {
  const line = new TtyLine(write, now, refreshMs, tickMs);
  return (event) => {
    const t = now();
    switch (event.type) {
      case "pipeline-start":
        line.count = event.stages.length;
        write(`ckpt: ${line.count} stages -> ${event.output}\n`);
        return;
      case "stage-start":
        return line.stageStart(event.stage, event.index, t);
      case "progress":
        return line.progress(event, t);
      case "stage-end":
        return line.stageEnd(event);
      case "log":
        if (event.level === "debug") return;
        write(`${CLEAR}${event.level === "warn" ? "warning: " : ""}${event.message}\n`);
        if (line.live) line.draw(line.live, t);
        return;
      case "pipeline-end":
        line.stopTicker();
        write(
          `${CLEAR}done in ${formatDuration(event.ms)}: ${event.output}${
            event.manifestSha256 ? ` (manifest sha256 ${event.manifestSha256.slice(0, 16)}...)` : ""
          }\n`,
        );
        return;
      case "pipeline-error":
        line.stopTicker();
        write(
          `${CLEAR}failed${
            event.stage ? ` in ${event.stage}` : ""
          }: [${event.code}] ${event.message}\n`,
        );
        return;
    }
  };
}

/**
 * Plain text without terminal escapes: one line per finished stage, warnings and the outcome
 * (for logs read by people, such as the demo's output in CI).
 */
export function createPlainRenderer(write: TextSink): EventRenderer {
  let count = 0;
  const totals = new Map<string, { total: number; unit: string }>();
  return (event) => {
    switch (event.type) {
      case "pipeline-start":
        count = event.stages.length;
        return;
      case "progress":
        totals.set(event.stage, { total: event.total, unit: event.unit });
        return;
      case "stage-end": {
        const t = totals.get(event.stage);
        totals.delete(event.stage);
        const size = t && t.total > 0
          ? `  ${t.unit === "bytes" ? formatBytes(t.total) : countOf(t.total, t.unit)}`
          : "";
        write(`[${event.index + 1}/${count}] ${event.stage}${size}  ${formatDuration(event.ms)}\n`);
        return;
      }
      case "log":
        if (event.level !== "debug") {
          write(`${event.level === "warn" ? "warning: " : ""}${event.message}\n`);
        }
        return;
      case "pipeline-end":
        write(`done in ${formatDuration(event.ms)}: ${event.output}\n`);
        return;
      case "pipeline-error":
        write(
          `failed${event.stage ? ` in ${event.stage}` : ""}: [${event.code}] ${event.message}\n`,
        );
        return;
      default:
        return;
    }
  };
}

/** Log styles for {@linkcode createRenderer}. */
export type LogStyle = "auto" | "json" | "tty" | "plain" | "quiet";

/**
 * Picks a renderer: `json` lines, the live `tty` line, `plain` text, nothing (`quiet`), or `auto` (tty when
 * `isTerminal`, JSON lines otherwise).
 */
export function createRenderer(
  style: LogStyle,
  write: TextSink,
  isTerminal: boolean,
): EventRenderer {
  if (style === "quiet") return () => {};
  if (style === "plain") return createPlainRenderer(write);
  if (style === "json" || (style === "auto" && !isTerminal)) {
    return createJsonRenderer((line) => write(line + "\n"));
  }
  return createTtyRenderer(write);
}

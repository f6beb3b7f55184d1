/**
 * Headless Chromium for tests of the HTML pages ckpt writes, driven over the DevTools protocol (a
 * small client over Deno's WebSocket; no puppeteer, no browser download). Chromium comes from
 * Debian (`apt-get install -y chromium`, as `.ci/run` does); without it {@linkcode openChromium}
 * throws: the tests that need it fail, they never skip.
 * @module
 */
import { join } from "node:path";

/** What the page reported while it loaded and ran: console errors and uncaught exceptions. */
export interface PageErrors {
  /** `console.error` calls, log entries of level error (CSP violations, failed loads), exceptions. */
  errors: string[];
}

/** A page in a headless Chromium. */
export interface ChromiumPage extends AsyncDisposable {
  /** Loads `url` and waits for its load event. */
  navigate(url: string): Promise<void>;
  /** Evaluates `expression` in the page and returns its value (JSON-serialisable). */
  evaluate<T>(expression: string): Promise<T>;
  /** A real mouse click (press and release) at page coordinates. */
  click(x: number, y: number): Promise<void>;
  /** A PNG of the viewport. */
  screenshot(): Promise<Uint8Array>;
  /** Errors seen so far. */
  readonly seen: PageErrors;
}

/** The Chromium executable, or an error saying how to install it. */
export async function chromiumPath(): Promise<string> {
  for (const name of ["chromium", "chromium-browser"]) {
    const out = await new Deno.Command("sh", {
      args: ["-c", `command -v ${name}`],
      stdout: "piped",
    })
      .output();
    const path = new TextDecoder().decode(out.stdout).trim();
    if (out.success && path) return path;
  }
  throw new Error(
    "Cannot run the HTML report tests: chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
  );
}

/** Reads chromium's stderr until it prints its DevTools port. */
async function devtoolsPort(stderr: ReadableStream<Uint8Array>): Promise<number> {
  const reader = stderr.getReader();
  const dec = new TextDecoder();
  let text = "";
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value);
    const m = /DevTools listening on ws:\/\/[^:]+:(\d+)\//.exec(text);
    if (m) {
      // keep draining so that chromium never blocks on a full pipe
      (async () => {
        try {
          while (!(await reader.read()).done) { /* drain */ }
        } catch { /* closed */ }
      })();
      return Number(m[1]);
    }
  }
  throw new Error(`chromium did not start its DevTools server:\n${text.slice(-2000)}`);
}

/** Starts headless Chromium with one page; dispose it to stop the browser. */
export async function openChromium(
  viewport = { width: 1280, height: 900 },
): Promise<ChromiumPage> {
  const exe = await chromiumPath();
  const profile = await Deno.makeTempDir({ prefix: "ckpt-chromium-" });
  const child = new Deno.Command(exe, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--no-default-browser-check",
      "--remote-debugging-port=0",
      `--user-data-dir=${profile}`,
      `--window-size=${viewport.width},${viewport.height}`,
      "about:blank",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let ws: WebSocket | undefined;
  const stop = async () => {
    ws?.close();
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    // Chromium's helper processes outlive the browser by a moment and may still write into the
    // profile while it is removed (a removal then fails with the folder not empty): retry.
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        await Deno.remove(profile, { recursive: true });
        return;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  };
  try {
    const port = await devtoolsPort(child.stderr);
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as {
      type: string;
      webSocketDebuggerUrl: string;
    }[];
    const page = targets.find((t) => t.type === "page");
    if (!page) throw new Error("chromium has no page target");
    const socket = ws = new WebSocket(page.webSocketDebuggerUrl);
    await new Promise((ok, fail) => {
      socket.onopen = ok;
      socket.onerror = () => fail(new Error("cannot connect to chromium's DevTools socket"));
    });
    let nextId = 1;
    const waiting = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
    const listeners = new Map<string, (params: Record<string, unknown>) => void>();
    const seen: PageErrors = { errors: [] };
    socket.onmessage = (ev) => {
      const msg = JSON.parse(ev.data as string);
      if (msg.id !== undefined) {
        const w = waiting.get(msg.id);
        waiting.delete(msg.id);
        if (msg.error) w?.fail(new Error(`CDP ${JSON.stringify(msg.error)}`));
        else w?.ok(msg.result);
        return;
      }
      const p = msg.params ?? {};
      if (msg.method === "Runtime.consoleAPICalled" && p.type === "error") {
        seen.errors.push(
          `console.error: ${JSON.stringify(p.args?.map((a: { value?: unknown }) => a.value))}`,
        );
      } else if (msg.method === "Runtime.exceptionThrown") {
        seen.errors.push(
          `exception: ${p.exceptionDetails?.exception?.description ?? p.exceptionDetails?.text}`,
        );
      } else if (msg.method === "Log.entryAdded" && p.entry?.level === "error") {
        seen.errors.push(`log: ${p.entry.text}${p.entry.url ? ` (${p.entry.url})` : ""}`);
      }
      listeners.get(msg.method)?.(p);
    };
    const send = <T>(method: string, params: Record<string, unknown> = {}): Promise<T> =>
      new Promise((ok, fail) => {
        const id = nextId++;
        waiting.set(id, { ok: ok as (v: unknown) => void, fail });
        socket.send(JSON.stringify({ id, method, params }));
      });
    await send("Runtime.enable");
    await send("Log.enable");
    await send("Page.enable");
    await send("Emulation.setDeviceMetricsOverride", {
      width: viewport.width,
      height: viewport.height,
      deviceScaleFactor: 1,
      mobile: false,
    });
    return {
      seen,
      async navigate(url) {
        const loaded = new Promise<void>((ok) => listeners.set("Page.loadEventFired", () => ok()));
        await send("Page.navigate", { url });
        await loaded;
      },
      async evaluate<T>(expression: string): Promise<T> {
        const r = await send<{ result: { value: T }; exceptionDetails?: { text: string } }>(
          "Runtime.evaluate",
          { expression, returnByValue: true, awaitPromise: true },
        );
        if (r.exceptionDetails) throw new Error(`evaluate failed: ${r.exceptionDetails.text}`);
        return r.result.value;
      },
      async click(x, y) {
        for (const type of ["mousePressed", "mouseReleased"]) {
          await send("Input.dispatchMouseEvent", { type, x, y, button: "left", clickCount: 1 });
        }
      },
      async screenshot() {
        const r = await send<{ data: string }>("Page.captureScreenshot", { format: "png" });
        return Uint8Array.from(atob(r.data), (c) => c.charCodeAt(0));
      },
      [Symbol.asyncDispose]: stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Where CI keeps screenshots (`.ci-artifacts/`, gitignored) for `name`. */
export function artifactPath(root: string, name: string): string {
  return join(root, ".ci-artifacts", name);
}

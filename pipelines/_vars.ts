/**
 * `${name}` variables in configs: looked up in the caller's vars, then `CKPT_VAR_<name>`, then
 * the config's own `vars` (which may refer to each other; a cycle is `CONFIG_VAR_CYCLE`);
 * `${env:NAME}` reads the environment; `$${` writes a literal `${`.
 * @module
 */
import { CkptError } from "../errors.ts";
import { formatJsonPath } from "./_config_errors.ts";

/** Longest string a substitution may produce (a guard against `${a}${a}` doubling chains). */
export const MAX_SUBSTITUTED_CHARS = 1 << 20;

/** Resolves variables and substitutes `${name}` in every string of a JSON value. */
export class Substituter {
  #resolved = new Map<string, string | number | boolean>();
  #resolving = new Set<string>();
  constructor(
    readonly callerVars: Record<string, string>,
    readonly configVars: Record<string, string | number | boolean>,
    readonly env: Record<string, string>,
    readonly source: string,
  ) {}

  lookup(name: string, path: string): string | number | boolean {
    if (name.startsWith("env:")) {
      const v = this.env[name.slice(4)];
      if (v === undefined) {
        throw new CkptError(
          "CONFIG_VAR_UNDEFINED",
          `Cannot substitute \${${name}} at ${path} in ${this.source}: the environment variable ${
            name.slice(4)
          } is not set`,
          { file: this.source, details: { path, variable: name } },
        );
      }
      return v;
    }
    const done = this.#resolved.get(name);
    if (done !== undefined) return done;
    if (Object.hasOwn(this.callerVars, name)) return this.#store(name, this.callerVars[name]!);
    const fromEnv = this.env[`CKPT_VAR_${name}`];
    if (fromEnv !== undefined) return this.#store(name, fromEnv);
    if (Object.hasOwn(this.configVars, name)) {
      const raw = this.configVars[name]!;
      if (typeof raw !== "string") return this.#store(name, raw);
      if (this.#resolving.has(name)) {
        throw new CkptError(
          "CONFIG_VAR_CYCLE",
          `Cannot resolve variable "${name}" in ${this.source}: it refers to itself through ${
            [...this.#resolving].join(" -> ")
          }`,
          { file: this.source, details: { path: `vars.${name}`, variable: name } },
        );
      }
      this.#resolving.add(name);
      try {
        return this.#store(name, this.substitute(raw, `vars.${name}`));
      } finally {
        this.#resolving.delete(name);
      }
    }
    throw new CkptError(
      "CONFIG_VAR_UNDEFINED",
      `Cannot substitute \${${name}} at ${path} in ${this.source}: the variable is never defined ` +
        `(define it in "vars", pass --var ${name}=..., or set CKPT_VAR_${name})`,
      { file: this.source, details: { path, variable: name } },
    );
  }

  #store(name: string, v: string | number | boolean): string | number | boolean {
    this.#resolved.set(name, v);
    return v;
  }

  /** Substitutes one string; a string that is exactly one `${name}` keeps a number/boolean var's type. */
  substitute(text: string, path: string): string | number | boolean {
    const whole = text.match(/^\$\{([^}]+)\}$/);
    if (whole) return this.lookup(whole[1]!, path);
    let length = text.length;
    return text.replace(/\$(\$)?\{([^}]*)\}/g, (m, escape: string | undefined, name: string) => {
      const piece = escape ? `\${${name}}` : String(this.lookup(name, path));
      length += piece.length - m.length;
      if (length > MAX_SUBSTITUTED_CHARS) this.#tooLarge(name, path);
      return piece;
    });
  }

  #tooLarge(name: string, path: string): never {
    throw new CkptError(
      "CONFIG_VAR_TOO_LARGE",
      `Cannot substitute \${${name}} at ${path} in ${this.source}: the result would be longer ` +
        `than ${MAX_SUBSTITUTED_CHARS} characters (variables that repeat each other grow ` +
        `exponentially)`,
      { file: this.source, details: { path, variable: name, limit: MAX_SUBSTITUTED_CHARS } },
    );
  }

  walk(value: unknown, path: PropertyKey[]): unknown {
    if (typeof value === "string") return this.substitute(value, formatJsonPath(path));
    if (Array.isArray(value)) return value.map((v, i) => this.walk(v, [...path, i]));
    if (value !== null && typeof value === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = this.walk(v, [...path, k]);
      return out;
    }
    return value;
  }

  all(): Record<string, string> {
    const names = new Set([
      ...Object.keys(this.configVars),
      ...Object.keys(this.callerVars),
    ]);
    const out: Record<string, string> = {};
    for (const name of names) out[name] = String(this.lookup(name, `vars.${name}`));
    return out;
  }
}

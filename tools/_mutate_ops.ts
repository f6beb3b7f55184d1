/**
 * The mutants of one source file, found on its TypeScript syntax tree (`npm:typescript`, parse
 * only): each is one small edit of the text at one node, named by its operator.
 *
 * Operators:
 * - `boundary`: `<` ↔ `<=`, `>` ↔ `>=`;
 * - `equality`: `===` ↔ `!==`, `==` ↔ `!=`;
 * - `arithmetic`: `+` ↔ `-`, `*` ↔ `/`, `%` → `*`, and their compound assignments;
 * - `bitwise`: `&` ↔ `|`, `^` → `&`, `<<` ↔ `>>`, `>>>` → `>>` (and compound assignments);
 * - `logical`: `&&` ↔ `||`, `??` → `&&`;
 * - `negation`: `!x` → `x`; `true` ↔ `false`;
 * - `condition`: an `if`, `?:`, `while` or `for` condition replaced by `true` or `false`
 *   (`false` for loops);
 * - `guard`: an `if` without `else` whose body leaves (`throw`, `return`, `continue`, `break`)
 *   removed; a `throw` statement removed;
 * - `update`: `++` ↔ `--`;
 * - `constant`: an integer literal operand of a comparison, arithmetic or bitwise operator (the
 *   bounds, sizes and masks; not the entries of data tables) `n` → `n + 1`, and `n - 1` when
 *   `n > 0`.
 *
 * Not mutated: types, imports and exports, the message argument of an error (`new CkptError(code,
 * message)` and the code helpers `err(code, message)`, `fail(code, message)`: wording is not
 * behaviour), and `import.meta.main` blocks.
 * @module
 */
import ts from "typescript";

/** One mutant: replace `text.slice(start, end)` with `replacement`. */
export interface Mutant {
  /** Source file, relative to the repository root. */
  file: string;
  /** Operator family (see the module doc). */
  operator: string;
  /** Start offset of the replaced text. */
  start: number;
  /** End offset (exclusive). */
  end: number;
  /** The text replaced. */
  original: string;
  /** The text put in its place. */
  replacement: string;
  /** 1-based line and column of `start`. */
  line: number;
  col: number;
  /** First line of the innermost function around the edit (`undefined` at the top level). */
  fnLine?: number | undefined;
  /**
   * A key that survives unrelated edits: the file, the operator, the edit and the trimmed source
   * line, plus the index among identical (line, edit) pairs in the file.
   */
  key: string;
}

const SWAP: Partial<Record<ts.SyntaxKind, [string, ts.SyntaxKind[]]>> = {};
function swap(kind: ts.SyntaxKind, operator: string, ...to: ts.SyntaxKind[]): void {
  SWAP[kind] = [operator, to];
}
const K = ts.SyntaxKind;
swap(K.LessThanToken, "boundary", K.LessThanEqualsToken);
swap(K.LessThanEqualsToken, "boundary", K.LessThanToken);
swap(K.GreaterThanToken, "boundary", K.GreaterThanEqualsToken);
swap(K.GreaterThanEqualsToken, "boundary", K.GreaterThanToken);
swap(K.EqualsEqualsEqualsToken, "equality", K.ExclamationEqualsEqualsToken);
swap(K.ExclamationEqualsEqualsToken, "equality", K.EqualsEqualsEqualsToken);
swap(K.EqualsEqualsToken, "equality", K.ExclamationEqualsToken);
swap(K.ExclamationEqualsToken, "equality", K.EqualsEqualsToken);
swap(K.PlusToken, "arithmetic", K.MinusToken);
swap(K.MinusToken, "arithmetic", K.PlusToken);
swap(K.AsteriskToken, "arithmetic", K.SlashToken);
swap(K.SlashToken, "arithmetic", K.AsteriskToken);
swap(K.PercentToken, "arithmetic", K.AsteriskToken);
swap(K.PlusEqualsToken, "arithmetic", K.MinusEqualsToken);
swap(K.MinusEqualsToken, "arithmetic", K.PlusEqualsToken);
swap(K.AsteriskEqualsToken, "arithmetic", K.SlashEqualsToken);
swap(K.SlashEqualsToken, "arithmetic", K.AsteriskEqualsToken);
swap(K.AmpersandToken, "bitwise", K.BarToken);
swap(K.BarToken, "bitwise", K.AmpersandToken);
swap(K.CaretToken, "bitwise", K.AmpersandToken);
swap(K.LessThanLessThanToken, "bitwise", K.GreaterThanGreaterThanToken);
swap(K.GreaterThanGreaterThanToken, "bitwise", K.LessThanLessThanToken);
swap(K.GreaterThanGreaterThanGreaterThanToken, "bitwise", K.GreaterThanGreaterThanToken);
swap(K.AmpersandEqualsToken, "bitwise", K.BarEqualsToken);
swap(K.BarEqualsToken, "bitwise", K.AmpersandEqualsToken);
swap(K.LessThanLessThanEqualsToken, "bitwise", K.GreaterThanGreaterThanEqualsToken);
swap(K.GreaterThanGreaterThanEqualsToken, "bitwise", K.LessThanLessThanEqualsToken);
swap(
  K.GreaterThanGreaterThanGreaterThanEqualsToken,
  "bitwise",
  K.GreaterThanGreaterThanEqualsToken,
);
swap(K.AmpersandAmpersandToken, "logical", K.BarBarToken);
swap(K.BarBarToken, "logical", K.AmpersandAmpersandToken);
swap(K.QuestionQuestionToken, "logical", K.AmpersandAmpersandToken);

/** Names of functions whose second argument is an error message (not mutated). */
const MESSAGE_CALLS = new Set(["CkptError", "err", "#err", "fail", "bad"]);

/** True when `node` leaves the enclosing block: throw, return, continue, break (or a block of one). */
function leaves(node: ts.Statement): boolean {
  if (ts.isBlock(node)) {
    const last = node.statements[node.statements.length - 1];
    return last !== undefined && leaves(last);
  }
  return ts.isThrowStatement(node) || ts.isReturnStatement(node) ||
    ts.isContinueStatement(node) || ts.isBreakStatement(node);
}

/** True when the literal `node` (or `-node`) is an operand of a binary operator other than `,` `=`. */
function isOperand(node: ts.Node): boolean {
  let p = node.parent;
  if (ts.isPrefixUnaryExpression(p)) p = p.parent;
  while (ts.isParenthesizedExpression(p)) p = p.parent;
  if (!ts.isBinaryExpression(p)) return false;
  const k = p.operatorToken.kind;
  return k !== K.CommaToken && k !== K.EqualsToken && k !== K.AmpersandAmpersandToken &&
    k !== K.BarBarToken && k !== K.QuestionQuestionToken;
}

/** The callee's last name: `CkptError` for `new CkptError(...)`, `err` for `m.err(...)`. */
function calleeName(expr: ts.Expression): string | undefined {
  if (ts.isIdentifier(expr)) return expr.text;
  if (ts.isPropertyAccessExpression(expr)) return expr.name.getText();
  return undefined;
}

/** True for an `if (import.meta.main)` block. */
function isMainBlock(node: ts.Node): boolean {
  return ts.isIfStatement(node) && node.expression.getText() === "import.meta.main";
}

/** Every mutant of `text` (the source of `file`), in source order. */
export function findMutants(file: string, text: string): Mutant[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: Omit<Mutant, "key" | "line" | "col">[] = [];
  let fn: ts.Node | undefined; // the innermost function around the node visited
  const add = (operator: string, start: number, end: number, replacement: string) => {
    const fnLine = fn && sf.getLineAndCharacterOfPosition(fn.getStart()).line + 1;
    out.push({ file, operator, start, end, original: text.slice(start, end), replacement, fnLine });
  };
  const condition = (expr: ts.Expression, values: string[]) => {
    const t = expr.getText();
    for (const v of values) if (t !== v) add("condition", expr.getStart(), expr.getEnd(), v);
  };
  const visit = (node: ts.Node): void => {
    if (ts.isTypeNode(node) || ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) return;
    if (ts.isInterfaceDeclaration(node) || ts.isTypeAliasDeclaration(node)) return;
    if (isMainBlock(node)) return;
    if ((ts.isNewExpression(node) || ts.isCallExpression(node)) && node.arguments) {
      const name = calleeName(node.expression);
      if (name !== undefined && MESSAGE_CALLS.has(name) && node.arguments.length >= 2) {
        visit(node.expression);
        node.arguments.forEach((a, i) => i !== 1 && visit(a));
        return;
      }
    }
    if (ts.isBinaryExpression(node)) {
      const swapTo = SWAP[node.operatorToken.kind];
      if (swapTo) {
        for (const to of swapTo[1]) {
          const op = node.operatorToken;
          add(swapTo[0], op.getStart(), op.getEnd(), ts.tokenToString(to)!);
        }
      }
    } else if (ts.isPrefixUnaryExpression(node)) {
      if (node.operator === K.ExclamationToken) {
        add("negation", node.getStart(), node.operand.getStart(), "");
      } else if (node.operator === K.PlusPlusToken || node.operator === K.MinusMinusToken) {
        add(
          "update",
          node.getStart(),
          node.getStart() + 2,
          node.operator === K.PlusPlusToken ? "--" : "++",
        );
      }
    } else if (ts.isPostfixUnaryExpression(node)) {
      const at = node.operand.getEnd();
      add("update", at, at + 2, node.operator === K.PlusPlusToken ? "--" : "++");
    } else if (node.kind === K.TrueKeyword || node.kind === K.FalseKeyword) {
      add(
        "negation",
        node.getStart(),
        node.getEnd(),
        node.kind === K.TrueKeyword ? "false" : "true",
      );
    } else if (
      ts.isNumericLiteral(node) && isOperand(node) &&
      /^(0x[0-9a-f]+|\d+)$/i.test(node.getText().replaceAll("_", ""))
    ) {
      const n = Number(node.getText().replaceAll("_", ""));
      if (Number.isSafeInteger(n + 1)) {
        const hex = /^0x/i.test(node.getText());
        const fmt = (v: number) => hex ? `0x${v.toString(16)}` : String(v);
        add("constant", node.getStart(), node.getEnd(), fmt(n + 1));
        if (n > 0) add("constant", node.getStart(), node.getEnd(), fmt(n - 1));
      }
    } else if (ts.isIfStatement(node)) {
      condition(node.expression, ["true", "false"]);
      if (!node.elseStatement && leaves(node.thenStatement)) {
        add("guard", node.getStart(), node.getEnd(), "{}");
      }
    } else if (ts.isConditionalExpression(node)) {
      condition(node.condition, ["true", "false"]);
    } else if (ts.isWhileStatement(node) || ts.isDoStatement(node)) {
      condition(node.expression, ["false"]);
    } else if (ts.isForStatement(node) && node.condition) {
      condition(node.condition, ["false"]);
    } else if (ts.isThrowStatement(node)) {
      add("guard", node.getStart(), node.getEnd(), "{}");
    }
    if (ts.isFunctionLike(node)) {
      const outer = fn;
      fn = node;
      ts.forEachChild(node, visit);
      fn = outer;
    } else {
      ts.forEachChild(node, visit);
    }
  };
  visit(sf);
  out.sort((a, b) => a.start - b.start || a.end - b.end);
  const seen = new Map<string, number>();
  return out.map((m) => {
    const { line, character } = sf.getLineAndCharacterOfPosition(m.start);
    const lineText = text.split("\n")[line]!.trim();
    const base = `${m.file} ${m.operator} ${m.original} -> ${m.replacement} @ ${lineText}`;
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    return { ...m, line: line + 1, col: character + 1, key: n === 0 ? base : `${base} #${n + 1}` };
  });
}

/** `text` with `m` applied. */
export function applyMutant(text: string, m: Mutant): string {
  return text.slice(0, m.start) + m.replacement + text.slice(m.end);
}

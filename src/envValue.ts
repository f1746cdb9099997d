/**
 * Environment values read the way MollySocket's configuration library (figment, `Value::from_str`) reads them, so
 * that a MollySocket user's `MOLLY_*` variables mean the same here: `"…"` is a string with its quotes removed,
 * `[a, "b"]` an array whose items are values themselves (bare words allowed), `{k = v}` a table, `true`/`false`
 * booleans, digits numbers; anything that does not parse whole is the trimmed text itself. Pure.
 */

export type EnvValue = string | number | boolean | null | EnvValue[] | { [key: string]: EnvValue };

const ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

class Parser {
  constructor(private rest: string) {}

  eof(): boolean {
    return this.rest.length === 0;
  }

  private peek(): string | undefined {
    return this.rest[0];
  }

  private eat(c: string): void {
    if (this.rest[0] !== c) throw new Error(`expected ${c}`);
    this.rest = this.rest.slice(1);
  }

  private skipWhitespace(): void {
    this.rest = this.rest.trimStart();
  }

  /** The longest prefix whose characters satisfy `keep`. */
  private take(keep: (c: string, i: number) => boolean): string {
    let i = 0;
    while (i < this.rest.length && keep(this.rest[i] as string, i)) i++;
    const taken = this.rest.slice(0, i);
    this.rest = this.rest.slice(i);
    return taken;
  }

  private quoted(): string {
    this.eat('"');
    let escaped = false;
    const inner = this.take((c) => {
      if (escaped) return !(escaped = false);
      if (c === '\\') return (escaped = true);
      return c !== '"';
    });
    this.eat('"');
    return inner.replace(/\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)/gs, (_, e: string) => {
      if (e.length > 1) return String.fromCodePoint(parseInt(e.slice(1), 16));
      const c = ESCAPES[e];
      if (c === undefined) throw new Error(`invalid escape \\${e}`);
      return c;
    });
  }

  private delimited<T>(start: string, end: string, item: () => T): T[] {
    const items: T[] = [];
    this.eat(start);
    this.skipWhitespace();
    while (this.peek() !== end) {
      items.push(item());
      this.skipWhitespace();
      if (this.peek() !== ',') break;
      this.eat(',');
      this.skipWhitespace();
    }
    this.eat(end);
    return items;
  }

  value(): EnvValue {
    this.skipWhitespace();
    let value: EnvValue;
    const next = this.peek();
    if (next === undefined) value = null;
    else if (next === '"') value = this.quoted();
    else if (next === "'") {
      this.eat("'");
      value = this.take((_, i) => i === 0);
      if (value === '') throw new Error('empty character');
      this.eat("'");
    } else if (next === '[') value = this.delimited('[', ']', () => this.value());
    else if (next === '{') {
      value = Object.fromEntries(
        this.delimited('{', '}', () => {
          const key = this.peek() === '"' ? this.quoted() : this.take((c) => /[A-Za-z0-9_-]/.test(c));
          this.skipWhitespace();
          this.eat('=');
          return [key, this.value()] as const;
        }),
      );
    } else {
      const word = this.take((c) => !',{}[]'.includes(c)).trim();
      if (word === 'true') value = true;
      else if (word === 'false') value = false;
      else if (word.includes('.') ? /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(word) : /^[+-]?\d+$/.test(word)) value = Number(word);
      else value = word;
    }
    this.skipWhitespace();
    return value;
  }
}

/** An environment variable's text as figment reads it; `null` for an empty value. */
export function parseEnvValue(text: string): EnvValue {
  const trimmed = text.trim();
  try {
    const parser = new Parser(trimmed);
    const value = parser.value();
    if (parser.eof()) return value;
  } catch {
    // not a value as a whole: the text itself, as figment does
  }
  return trimmed;
}

/**
 * Environment values read the way MollySocket 1.7.1 reads them: figment 0.10.19's `Value::from_str`
 * (src/value/parse.rs, a pear parser). `"…"` is a string with its escapes undone, `'c'` one character, `[a, "b"]` an
 * array whose items are values themselves (bare words allowed), `{k = v}` a table, `true`/`false` booleans, digits
 * numbers. Pure.
 *
 * Where figment's parse fails it takes the text as it is, and MollySocket then refuses it wherever the key wants
 * anything but text: `['<uuid>']` (a character quote around more than one character) is a string, not a list, and
 * MollySocket stops. Here such a text is an error for every key: a text that opens a quoted string, a character, an
 * array or a table and does not parse whole (`'abc'`, `["a"`, `"\q"`) is a mistake, never meant literally. A text
 * that begins as a bare word stays its own text (`/data/a,b.db`, `wss://[::1]/`), as figment reads it.
 */

export type EnvValue = string | number | boolean | null | EnvValue[] | { [key: string]: EnvValue };

/** A text that starts as a structured value and is not one: what was expected, and where (counted in characters from 1). */
export class EnvValueError extends Error {
  override name = 'EnvValueError';
}

/** pear's `is_whitespace`: ASCII whitespace only. */
const isSpace = (c: string): boolean => c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f';
const isSeparator = (c: string): boolean => c === ',' || c === '{' || c === '}' || c === '[' || c === ']';
const isIdentChar = (c: string): boolean => /^[A-Za-z0-9_-]$/.test(c);

const ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
const USIZE_MAX = 2n ** 64n - 1n;
const ISIZE_MIN = -(2n ** 63n);

/** figment's `escape`: the inside of a "…" string, its escapes undone. */
function unescape(inner: string[]): string {
  let out = '';
  for (let i = 0; i < inner.length; i++) {
    const c = inner[i]!;
    if (c !== '\\') {
      // As TOML's basic strings: tab, and no other control character.
      if (c !== '\t' && (c < ' ' || c === '\u007f'))
        throw new EnvValueError(`a control character (U+${c.codePointAt(0)!.toString(16).padStart(4, '0').toUpperCase()}) inside "…"`);
      out += c;
      continue;
    }
    const e = inner[++i];
    if (e === undefined) throw new EnvValueError('an unterminated escape inside "…"');
    if (e === 'u' || e === 'U') {
      const hex = inner.slice(i + 1, i + 1 + (e === 'u' ? 4 : 8)).join('');
      if (!/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== (e === 'u' ? 4 : 8)) throw new EnvValueError(`an invalid escape \\${e}${hex} inside "…"`);
      const code = parseInt(hex, 16);
      if (code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) throw new EnvValueError(`an escape \\${e}${hex} that is no character`);
      out += String.fromCodePoint(code);
      i += hex.length;
    } else if (ESCAPES[e] !== undefined) {
      out += ESCAPES[e];
    } else {
      throw new EnvValueError(`an invalid escape \\${e} inside "…" (write \\\\ for a backslash)`);
    }
  }
  return out;
}

/** A bare word as figment reads it: a float when it has a dot, an integer that fits usize or isize, else text. */
function bareWord(word: string): EnvValue {
  if (word.includes('.') && /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(word)) return Number(word);
  if (/^[+-]?\d+$/.test(word)) {
    const n = BigInt(word);
    if (n >= ISIZE_MIN && n <= USIZE_MAX) return Number(n) || 0; // -0 is 0
  }
  return word;
}

class Parser {
  /** The text as characters (code points, as Rust's chars), and the position in it. */
  private readonly chars: string[];
  private at = 0;

  constructor(text: string) {
    this.chars = [...text];
  }

  eof(): boolean {
    return this.at >= this.chars.length;
  }

  /** For a structured value that parsed but is not the whole text. */
  trailing(): EnvValueError {
    return new EnvValueError(`the value ends at character ${this.at}, and more text follows: quote the whole value as "…", or write a list as [a, b]`);
  }

  private peek(): string | undefined {
    return this.chars[this.at];
  }

  private expected(what: string): EnvValueError {
    const found = this.peek();
    return new EnvValueError(`expected ${what} at character ${this.at + 1}, found ${found === undefined ? 'the end' : JSON.stringify(found)}`);
  }

  private eat(c: string): boolean {
    if (this.peek() !== c) return false;
    this.at++;
    return true;
  }

  private take(keep: (c: string) => boolean): string {
    const start = this.at;
    while (!this.eof() && keep(this.chars[this.at]!)) this.at++;
    return this.chars.slice(start, this.at).join('');
  }

  private skipSpace(): void {
    this.take(isSpace);
  }

  private startsWith(word: string): boolean {
    return this.chars.slice(this.at, this.at + word.length).join('') === word;
  }

  private quoted(): string {
    this.eat('"');
    const start = this.at;
    let escaped = false;
    this.take((c) => {
      if (escaped) return !(escaped = false);
      if (c === '\\') return (escaped = true);
      return c !== '"';
    });
    const inner = this.chars.slice(start, this.at);
    if (!this.eat('"')) throw new EnvValueError(`a "…" string opened at character ${start} is not closed`);
    return unescape(inner);
  }

  /** pear's `delimited_collect`: no space skipped around the delimiters but what the items skip themselves. */
  private delimited<T>(end: string, item: () => T): T[] {
    const items: T[] = [];
    this.at++; // the opening bracket
    for (;;) {
      if (this.eat(end)) break;
      items.push(item());
      if (!this.eat(',')) {
        if (!this.eat(end)) throw this.expected(`"," or "${end}"`);
        break;
      }
    }
    return items;
  }

  value(): EnvValue {
    this.skipSpace();
    let value: EnvValue;
    const next = this.peek();
    // In this order, as figment 0.10.19's `switch!`: `true` and `false` win even as the start of a longer word.
    if (this.startsWith('true')) {
      this.at += 4;
      value = true;
    } else if (this.startsWith('false')) {
      this.at += 5;
      value = false;
    } else if (next === '{') {
      value = Object.fromEntries(this.delimited('}', () => this.keyValue()));
    } else if (next === '[') {
      value = this.delimited(']', () => this.value());
    } else if (next === '"') {
      value = this.quoted();
    } else if (next === "'") {
      this.at++;
      const c = this.peek();
      if (c === undefined) throw this.expected('a character');
      this.at++;
      if (!this.eat("'"))
        throw new EnvValueError(`'…' quotes exactly one character, and the one opened at character ${this.at - 1} goes on: write text as "…"`);
      value = c;
    } else {
      value = bareWord(this.take((c) => !isSeparator(c)).trim());
    }
    this.skipSpace();
    return value;
  }

  private keyValue(): [string, EnvValue] {
    this.skipSpace();
    let key: string;
    if (this.peek() === '"') key = this.quoted();
    else if ((key = this.take(isIdentChar)) === '') throw this.expected('a key');
    this.skipSpace();
    if (!this.eat('=')) throw this.expected('"="');
    return [key, this.value()];
  }
}

/**
 * An environment variable's text as figment reads it; `null` for an empty value (unset, where figment would take the
 * empty text). Throws EnvValueError for a text that opens a structured value and is not one whole.
 */
export function parseEnvValue(text: string): EnvValue {
  const trimmed = text.trim();
  if (trimmed === '') return null;
  const parser = new Parser(trimmed);
  const structured = '"\'[{'.includes(trimmed[0]!);
  let value: EnvValue;
  try {
    value = parser.value();
    if (parser.eof()) return value;
  } catch (err) {
    if (structured) throw err;
    return trimmed; // a bare word that does not parse: the text itself, as figment takes it
  }
  if (structured) throw parser.trailing();
  return trimmed;
}

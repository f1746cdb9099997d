import { describe, expect, it } from 'vitest';
import { EnvValueError, parseEnvValue } from '../../src/envValue.js';

/**
 * MollySocket 1.7.1 reads MOLLY_* with figment 0.10.19's `Value::from_str` (src/value/parse.rs, a pear parser). The
 * cases of its own tests first, then what its grammar does where those tests are silent.
 */
describe('parseEnvValue reads a value as figment 0.10.19 does', () => {
  it("figment's own cases: simple values", () => {
    const cases: [string, unknown][] = [
      ['true', true],
      ['false', false],
      ['"false"', 'false'],
      ['"true"', 'true'],
      ['  false', false],
      ['  false  ', false],
      ['true  ', true],
      ['1', 1],
      [' 0', 0],
      [' -0', 0],
      [' -2', -2],
      [' 123 ', 123],
      ['"a"', 'a'],
      ['a ', 'a'],
      ['   a ', 'a'],
      ['" a"', ' a'],
      ['"a  "', 'a  '],
      ['" a  "', ' a  '],
      ['1.2', 1.2],
      ['  1.2', 1.2],
      ['3.14159', 3.14159],
      ['"\\t"', '\t'],
      ['"abc\\td"', 'abc\td'],
      ['"abc\\td\\n"', 'abc\td\n'],
      ['"abc\\td\\n\\n"', 'abc\td\n\n'],
      ['"\\""', '"'],
      ['"\\n\\f\\b\\\\\\r\\""', '\n\f\b\\\r"'],
      ['"\\"hi\\""', '"hi"'],
      ['"hi\\u1234there"', 'hi\u1234there'],
      ['"\\\\"', '\\'],
    ];
    for (const [text, value] of cases) expect(parseEnvValue(text), text).toEqual(value);
  });

  it("figment's own cases: arrays and tables", () => {
    const cases: [string, unknown][] = [
      ['[1,2,3]', [1, 2, 3]],
      ['{a=b}', { a: 'b' }],
      ['{"a"=b}', { a: 'b' }],
      ['{"a.b.c"=b}', { 'a.b.c': 'b' }],
      ['{a=1,b=3}', { a: 1, b: 3 }],
      ['{a=1,b=hi}', { a: 1, b: 'hi' }],
      ['[1,[2],3]', [1, [2], 3]],
      ['{a=[[-2]]}', { a: [[-2]] }],
      ['{a=[[-2]],b=" hi"}', { a: [[-2]], b: ' hi' }],
      ['[1,true,hi,"a "]', [1, true, 'hi', 'a ']],
      ['[1,{a=b},hi]', [1, { a: 'b' }, 'hi']],
      ['[[ -1], {a=[ b ]},  hi ]', [[-1], { a: ['b'] }, 'hi']],
    ];
    for (const [text, value] of cases) expect(parseEnvValue(text), text).toEqual(value);
  });

  it('bare words: the text up to a separator, trimmed; a whole text that does not parse is itself', () => {
    const cases: [string, unknown][] = [
      ['/data/mollysocket.db', '/data/mollysocket.db'],
      ['"/data/mollysocket.db"', '/data/mollysocket.db'],
      ['0.0.0.0', '0.0.0.0'],
      ['Signal-Android/8.3.4 Android/36', 'Signal-Android/8.3.4 Android/36'],
      ["'c'", 'c'],
      ["'*'", '*'],
      // Separators in a bare word end the value before the end: figment takes the whole text instead.
      ['a,b', 'a,b'],
      ['https://a.example,https://b.example', 'https://a.example,https://b.example'],
      ['/data/a[1].db', '/data/a[1].db'],
      ['wss://[::1]:8443/v1/websocket/', 'wss://[::1]:8443/v1/websocket/'],
      [']', ']'],
      ['}{', '}{'],
      // `true` and `false` are taken even as the start of a longer word; what follows then makes the text itself.
      ['trueish', 'trueish'],
      ['false alarm', 'false alarm'],
      // Integers as usize or isize; beyond them, text. A dot makes a float.
      ['+7', 7],
      ['18446744073709551615', 18446744073709551615],
      ['18446744073709551616', '18446744073709551616'],
      ['1.', 1],
      ['.5', 0.5],
      ['1.2.3', '1.2.3'],
      ['', null],
      ['   ', null],
    ];
    for (const [text, value] of cases) expect(parseEnvValue(text), text).toEqual(value);
  });

  it('arrays as pear collects them: the items skip spaces, the brackets and commas do not', () => {
    const cases: [string, unknown][] = [
      ['[*]', ['*']],
      ['["*"]', ['*']],
      ["['*']", ['*']],
      ['[]', []],
      ['[ ]', ['']],
      ['[a,]', ['a']],
      ['[a, ]', ['a', '']],
      [' [ 1 , 2   , 3  ] ', [1, 2, 3]],
      [' [ a , b   ,, d  ] ', ['a', 'b', '', 'd']],
      [' [ a , b   c,] ', ['a', 'b   c']],
      ['[https://a.example,https://b.example:8443]', ['https://a.example', 'https://b.example:8443']],
      ['[ "https://a.example", "https://b.example" ]', ['https://a.example', 'https://b.example']],
    ];
    for (const [text, value] of cases) expect(parseEnvValue(text), text).toEqual(value);
  });

  it("refuses a text that opens a string, a character, an array or a table and is not one whole (figment's literal text)", () => {
    const uuid = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
    const cases: [string, RegExp][] = [
      [`['${uuid}']`, /^'…' quotes exactly one character, and the one opened at character 2 goes on: write text as "…"$/],
      [`'${uuid}'`, /^'…' quotes exactly one character, and the one opened at character 1 goes on/],
      ["''", /^'…' quotes exactly one character/],
      ['[', /^expected "," or "]" at character 2, found the end$/],
      ['[a', /^expected "," or "]" at character 3, found the end$/],
      ['[a b', /^expected "," or "]" at character 5, found the end$/],
      ['[truex]', /^expected "," or "]" at character 6, found "x"$/],
      ['{a}', /^expected "=" at character 3, found "}"$/],
      ['{=1}', /^expected a key at character 2, found "="$/],
      ['"/data/ms.db', /^a "…" string opened at character 1 is not closed$/],
      ['"\\"', /^a "…" string opened at character 1 is not closed$/],
      ['"\\q"', /^an invalid escape \\q inside "…"/],
      ['"\\u12"', /^an invalid escape \\u12/],
      ['"\\ud800"', /^an escape \\ud800 that is no character$/],
      ['"a\u0001"', /^a control character \(U\+0001\) inside "…"$/],
      ['"a" b', /^the value ends at character 4, and more text follows/],
      ['[a] b', /^the value ends at character 4, and more text follows/],
    ];
    for (const [text, message] of cases) {
      expect(() => parseEnvValue(text), text).toThrow(EnvValueError);
      expect(() => parseEnvValue(text), text).toThrow(message);
    }
  });
});

import { describe, expect, it } from 'vitest';
import { parseEnvValue } from '../../src/envValue.js';

/** Cases from figment's own tests of `Value::from_str` (src/value/parse.rs), which MollySocket reads MOLLY_* with. */
describe('parseEnvValue reads a value as figment does', () => {
  it('simple values', () => {
    const cases: [string, unknown][] = [
      ['true', true], ['false', false], ['"false"', 'false'], ['  false  ', false], ['1', 1], [' -2', -2], [' 123 ', 123],
      ['a,b', 'a,b'], ['   a,b', 'a,b'], ['"a"', 'a'], ['   a ', 'a'], ['" a  "', ' a  '], ['1.2', 1.2], ['[', '['],
      ['[a', '[a'], ['[a b', '[a b'], [']', ']'], ['"\\t"', '\t'], ['"abc\\td\\n"', 'abc\td\n'], ['"\\"hi\\""', '"hi"'],
      ['"hi\\u1234there"', 'hi\u1234there'], ['"\\\\"', '\\'], ['"\\"', '"\\"'], ["'c'", 'c'], ['', null],
      ['/data/mollysocket.db', '/data/mollysocket.db'], ['"/data/mollysocket.db"', '/data/mollysocket.db'],
      ['0.0.0.0', '0.0.0.0'], ['https://a.example,https://b.example', 'https://a.example,https://b.example'],
    ];
    for (const [text, value] of cases) expect(parseEnvValue(text), text).toEqual(value);
  });

  it('arrays and tables, with bare words', () => {
    const cases: [string, unknown][] = [
      ['[1,2,3]', [1, 2, 3]], [' [ 1 , 2   , 3  ] ', [1, 2, 3]], [' [ a , b   ,, d  ] ', ['a', 'b', '', 'd']],
      [' [ a , b   c,] ', ['a', 'b   c']], ['{a=1,b=hi}', { a: 1, b: 'hi' }], ['[1,[2],3]', [1, [2], 3]],
      ['[1,true,hi,"a "]', [1, true, 'hi', 'a ']], ['[*]', ['*']], ['["*"]', ['*']],
      ['[https://a.example,https://b.example:8443]', ['https://a.example', 'https://b.example:8443']],
      ['[ "https://a.example", "https://b.example" ]', ['https://a.example', 'https://b.example']],
    ];
    for (const [text, value] of cases) expect(parseEnvValue(text), text).toEqual(value);
  });
});

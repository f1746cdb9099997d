import { describe, expect, it } from 'vitest';
import { describeReason } from '../../src/reasons.js';

describe('reasons in words', () => {
  it('says what each stored or published code means, keeping the status code', () => {
    expect(
      [
        'signal_403',
        'endpoint_gone',
        'forbidden_in_mollysocket',
        'closed 1006',
        'closed 4409: the same device connected elsewhere',
        'upgrade answered 503',
        'upgrade answered 499',
        'network: ECONNREFUSED',
        'connect timeout',
        'open',
      ].map(describeReason),
    ).toEqual([
      'Signal refused the credentials (403)',
      'the push server said the endpoint is gone (404 or 410)',
      'copied from MollySocket as forbidden',
      'Signal closed the socket (1006)',
      'closed 4409: the same device connected elsewhere',
      'Signal answered 503 to the connection',
      'Signal refused this client version (499): upgrade mollysocket, or set user_agent',
      'network error: ECONNREFUSED',
      'Signal did not answer the connection in time',
      'socket open',
    ]);
  });
});

import { describe, expect, it } from 'vitest';
import { checkEndpoint, isUuidAllowed } from '../../src/policy.js';

const UUID = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';

describe('policy', () => {
  it('allows uuids by list or "*", and never a malformed one', () => {
    expect(isUuidAllowed(UUID, ['*'])).toBe(true);
    expect(isUuidAllowed(UUID, [UUID.toUpperCase()])).toBe(true);
    expect(isUuidAllowed(UUID, ['0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f'])).toBe(false);
    expect(isUuidAllowed('not-a-uuid', ['*'])).toBe(false);
  });

  it('matches endpoints on scheme, host, port and userinfo, ignoring the path of the entry', () => {
    const allowed = ['https://ntfy.example/some/path', 'https://user:pw@up.example:8443'];
    expect(checkEndpoint('https://ntfy.example/upABC', allowed)).toMatchObject({ allowed: true, explicit: true });
    expect(checkEndpoint('http://ntfy.example/upABC', allowed).allowed).toBe(false);
    expect(checkEndpoint('https://ntfy.example:444/upABC', allowed).allowed).toBe(false);
    expect(checkEndpoint('https://user:pw@up.example:8443/x', allowed).allowed).toBe(true);
    expect(checkEndpoint('https://up.example:8443/x', allowed).allowed).toBe(false);
  });

  it('allows any http(s) endpoint with "*", marked as not explicit', () => {
    expect(checkEndpoint('https://push.example/x', ['*'])).toMatchObject({ allowed: true, explicit: false });
    expect(checkEndpoint('ftp://push.example/x', ['*']).allowed).toBe(false);
    expect(checkEndpoint('not a url', ['*']).allowed).toBe(false);
  });
});

import { describe, expect, it } from 'vitest';
import { isGlobalAddress, isLocalNetworkAddress } from '../../src/addresses.js';
import { EndpointPolicy } from '../../src/policy.js';
import type { Resolver } from '../../src/resolver.js';

describe('address classification', () => {
  it.each([
    ['127.0.0.1', '127/8'],
    ['127.255.0.9', '127/8'],
    ['10.1.2.3', '10/8'],
    ['172.16.0.1', '172.16/12'],
    ['172.31.255.255', '172.16/12'],
    ['192.168.1.1', '192.168/16'],
    ['169.254.169.254', '169.254/16'],
    ['100.64.0.1', '100.64/10'],
    ['100.127.255.254', '100.64/10'],
    ['0.0.0.0', '0/8'],
    ['0.1.2.3', '0/8'],
    ['224.0.0.1', '224/4'],
    ['239.255.255.250', '224/4'],
    ['255.255.255.255', '240/4'],
    ['192.0.2.7', 'TEST-NET-1'],
    ['198.18.0.1', 'benchmarking'],
    ['::1', 'IPv6 loopback'],
    ['::', 'unspecified'],
    ['fc00::1', 'fc00::/7'],
    ['fd12:3456::1', 'fc00::/7'],
    ['fe80::1', 'fe80::/10'],
    ['ff02::1', 'multicast'],
    ['2001:db8::1', 'documentation'],
    ['::ffff:127.0.0.1', 'IPv4-mapped loopback'],
    ['::ffff:10.0.0.1', 'IPv4-mapped private'],
    ['::ffff:7f00:1', 'IPv4-mapped loopback, hex'],
    ['64:ff9b::7f00:1', 'NAT64 of loopback'],
    ['not-an-ip', 'garbage'],
  ])('%s (%s) is not global', (ip) => {
    expect(isGlobalAddress(ip)).toBe(false);
  });

  // One address in each range of IANA's special-purpose registries, and each IPv6 form that embeds an IPv4 address.
  it.each([
    ['3fff::1', '3fff::/20 documentation'],
    ['3fff:fff:ffff::1', '3fff::/20 documentation, last block'],
    ['5f00::1', '5f00::/16 SRv6'],
    ['64:ff9b::', 'NAT64 of 0.0.0.0'],
    ['64:ff9b::100', 'NAT64 of 0.0.1.0'],
    ['64:ff9b::a00:1', 'NAT64 of 10.0.0.1'],
    ['64:ff9b:1::808:808', '64:ff9b:1::/48 local-use NAT64'],
    ['2002:7f00:1::', '6to4 of 127.0.0.1'],
    ['2002:c0a8:101::1', '6to4 of 192.168.1.1'],
    ['2002:a00:1:1::1', '6to4 of 10.0.0.1'],
    ['::ffff:0:7f00:1', 'IPv4-translated 127.0.0.1'],
    ['::ffff:0:a00:1', 'IPv4-translated 10.0.0.1'],
    ['::7f00:1', 'deprecated IPv4-compatible'],
    ['100::1', 'discard-only'],
    ['2001::1', 'Teredo'],
    ['2001:2::1', 'benchmarking'],
    ['2001:20::1', 'ORCHIDv2'],
    ['2620:4f:8000::1', 'AS112'],
    ['fec0::1', 'site-local'],
    ['4000::1', 'outside 2000::/3'],
    ['192.0.0.9', 'PCP anycast'],
    ['192.31.196.1', 'AS112-v4'],
    ['192.52.193.1', 'AMT'],
    ['192.88.99.1', '6to4 relay'],
    ['192.175.48.1', 'AS112 delegation'],
    ['198.51.100.1', 'TEST-NET-2'],
    ['203.0.113.1', 'TEST-NET-3'],
    ['240.0.0.1', 'reserved'],
    ['fe80::1%eth0', 'link-local with a zone'],
    ['127.1', 'a lenient IPv4 spelling'],
  ])('%s (%s) is not global', (ip) => {
    expect(isGlobalAddress(ip)).toBe(false);
  });

  it.each([
    '8.8.8.8',
    '1.1.1.1',
    '172.32.0.1',
    '100.128.0.1',
    '2606:4700:4700::1111',
    '2a01:4f8::1',
    '::ffff:8.8.8.8',
    '64:ff9b::808:808',
    '2002:808:808::1',
    '::ffff:0:808:808',
    '3ffe:ffff::1',
    '2c0f:f248::1',
  ])('%s is global', (ip) => {
    expect(isGlobalAddress(ip)).toBe(true);
  });
});

describe('peers on the local network (a reverse proxy, not a phone)', () => {
  it.each(['127.0.0.1', '::1', '10.0.0.7', '172.17.0.1', '192.168.1.2', '100.64.0.1', 'fd00::7', 'fe80::1', '::ffff:127.0.0.1', '::ffff:172.17.0.1'])(
    '%s is local',
    (ip) => {
      expect(isLocalNetworkAddress(ip)).toBe(true);
    },
  );
  it.each(['8.8.8.8', '2a01:4f8::1', '::ffff:8.8.8.8', 'nonsense'])('%s is not', (ip) => {
    expect(isLocalNetworkAddress(ip)).toBe(false);
  });
});

describe('endpoint policy', () => {
  const dns = (table: Record<string, string[]>): Resolver & { calls: string[] } => {
    const calls: string[] = [];
    const resolve = async (host: string) => {
      calls.push(host);
      const addresses = table[host];
      if (!addresses) throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
      return addresses.map((address) => ({ address, family: address.includes(':') ? (6 as const) : (4 as const) }));
    };
    return Object.assign(resolve, { calls });
  };

  it('refuses a host name resolving to loopback under "*", and allows it when named explicitly', async () => {
    const resolver = dns({ 'evil.example': ['127.0.0.1'] });
    expect(await new EndpointPolicy(['*'], resolver).check('https://evil.example/up')).toMatchObject({
      ok: false,
      transient: false,
      reason: expect.stringMatching(/not globally routable/),
    });
    expect(await new EndpointPolicy(['https://evil.example', '*'], resolver).check('https://evil.example/up')).toMatchObject({
      ok: true,
      address: { address: '127.0.0.1', family: 4 },
    });
  });

  it('refuses a name with any non-global address among its answers', async () => {
    const resolver = dns({ 'mixed.example': ['93.184.216.34', '10.0.0.5'] });
    expect((await new EndpointPolicy(['*'], resolver).check('https://mixed.example/up')).ok).toBe(false);
  });

  it('returns the checked global address, resolving once', async () => {
    const resolver = dns({ 'push.example': ['2a01:4f8::1', '93.184.216.34'] });
    const verdict = await new EndpointPolicy(['*'], resolver).check('https://push.example/up');
    expect(verdict).toMatchObject({ ok: true, address: { address: '2a01:4f8::1', family: 6 } });
    expect(resolver.calls).toEqual(['push.example']);
  });

  it('checks IP literals without DNS', async () => {
    const resolver = dns({});
    const policy = new EndpointPolicy(['*'], resolver);
    expect((await policy.check('http://[::1]:8080/up')).ok).toBe(false);
    expect((await policy.check('http://127.0.0.1/up')).ok).toBe(false);
    expect((await policy.check('https://[::ffff:10.0.0.1]/up')).ok).toBe(false);
    expect(await policy.check('https://8.8.8.8/up')).toMatchObject({ ok: true, address: { address: '8.8.8.8' } });
    expect(resolver.calls).toEqual([]);
  });

  it('calls a DNS failure transient, and a refused scheme or origin final', async () => {
    const policy = new EndpointPolicy(['https://ntfy.example'], dns({}));
    expect(await policy.check('https://ntfy.example/up')).toMatchObject({ ok: false, transient: true, reason: expect.stringMatching(/ENOTFOUND/) });
    expect(await policy.check('https://other.example/up')).toMatchObject({ ok: false, transient: false });
    expect(await policy.check('ftp://ntfy.example/up')).toMatchObject({ ok: false, transient: false });
  });
});

import { describe, expect, it } from 'vitest';
import { isTrustedProxyPeer, proxyTrust } from '../../src/web/app.js';
import { clientKey, ConnectionsPerClient, FreshPagesPerClient } from '../../src/web/limits.js';
import { protocolOf } from '../../src/web/listener.js';

describe('who counts as one client', () => {
  it('is an IPv4 address, or an IPv6 /64 whatever its spelling', () => {
    expect(clientKey('203.0.113.7')).toBe('203.0.113.7');
    expect(clientKey('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(clientKey('2001:db8:1:2::7')).toBe(clientKey('2001:0db8:0001:0002:ffff:1:2:3'));
    expect(clientKey('2001:db8:1:2::7')).not.toBe(clientKey('2001:db8:1:3::7'));
  });

  it('is not bounded when trust_proxy names it: a listed address, or with hops a peer on the local network', () => {
    const trusted = (setting: Parameters<typeof proxyTrust>[0], address: string) => isTrustedProxyPeer(setting, proxyTrust(setting), address);
    expect(trusted(false, '127.0.0.1')).toBe(false);
    expect(trusted(['10.0.0.1'], '10.0.0.1')).toBe(true);
    expect(trusted(['10.0.0.1'], '127.0.0.1')).toBe(false);
    expect(trusted(true, '127.0.0.1')).toBe(true);
    expect(trusted(2, '192.168.1.2')).toBe(true);
    expect(trusted(true, '203.0.113.7')).toBe(false);
  });
});

describe('per-client bounds', () => {
  it('counts connections per client and gives a place back when one closes', () => {
    const open = new ConnectionsPerClient(2);
    expect([open.tryOpen('a'), open.tryOpen('a'), open.tryOpen('a'), open.tryOpen('b')]).toEqual([true, true, false, true]);
    open.close('a');
    expect([open.tryOpen('a'), open.tryOpen('a')]).toEqual([true, false]);
  });

  it('gives each client a number of fresh pages per window', () => {
    let now = 1_000; // lru-cache takes a start of 0 for "no TTL"
    const pages = new FreshPagesPerClient(2, 60_000, () => now);
    expect([pages.take('a'), pages.take('a'), pages.take('a'), pages.take('b')]).toEqual([true, true, false, true]);
    expect(pages.retryAfterSeconds('a')).toBe(60);
    now = 61_001;
    expect(pages.take('a')).toBe(true);
  });
});

describe('the protocol of a connection by its first bytes', () => {
  const preface = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
  it('is HTTP/2 for the whole preface, HTTP/1.1 as soon as the bytes cannot be it, undecided until then', () => {
    expect(protocolOf(Buffer.from(preface))).toBe('h2');
    expect(protocolOf(Buffer.from(`${preface}\0\0\x12\x04`))).toBe('h2');
    expect(protocolOf(Buffer.from('PRI * HTTP/2'))).toBeUndefined();
    expect(protocolOf(Buffer.from('P'))).toBeUndefined();
    expect(protocolOf(Buffer.from('POST / HTTP/1.1'))).toBe('h1');
    expect(protocolOf(Buffer.from('GET / HTTP/1.1\r\n'))).toBe('h1');
    expect(protocolOf(Buffer.from('PRI * HTTP/1.1\r\n'))).toBe('h1');
  });
});

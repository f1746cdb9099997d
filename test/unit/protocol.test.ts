import { describe, expect, it } from 'vitest';
import { decodeFrame, encodeRequest, encodeResponse, isUrgentEnvelope } from '../../src/signal/protocol.js';

describe('Signal websocket protocol', () => {
  it('round-trips requests and responses with 64-bit ids intact', () => {
    expect(decodeFrame(encodeRequest('18446744073709551615', 'GET', '/v1/keepalive'))).toEqual({
      type: 'request',
      request: { id: '18446744073709551615', verb: 'GET', path: '/v1/keepalive', body: undefined },
    });
    expect(decodeFrame(encodeResponse('7', 200, 'OK'))).toEqual({ type: 'response', response: { id: '7', status: 200 } });
  });

  it('treats an envelope without the urgent field as urgent', () => {
    expect(isUrgentEnvelope(Uint8Array.from([0x08, 0x01]))).toBe(true); // type = 1 only
    expect(isUrgentEnvelope(Uint8Array.from([0x70, 0x00]))).toBe(false); // urgent = false
    expect(isUrgentEnvelope(Uint8Array.from([0x70, 0x01]))).toBe(true);
  });

  it('throws on malformed frames', () => {
    expect(() => decodeFrame(Uint8Array.from([0x0a, 0xff, 0xff]))).toThrow();
  });
});

import { describe, expect, it } from 'vitest';
import { planDowngrade } from '../../src/downgrade.js';
import type { Connection } from '../../src/store/store.js';

const A = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
const B = '0b6c2f4e-8d1a-4c3b-9e5f-7a6b5c4d3e2f';
const conn = (over: Partial<Connection>): Connection => ({
  uuid: A,
  deviceId: 1,
  password: 'pw',
  endpoint: 'https://push.example/up',
  forbidden: false,
  forbiddenReason: null,
  forbiddenAt: null,
  lastRegistration: 100,
  createdAt: 1,
  updatedAt: 1,
  owner: null,
  epoch: 0,
  ...over,
});

describe('which connection of an account goes back to MollySocket', () => {
  it('keeps every account with one device as it is, in uuid order', () => {
    const a = conn({});
    const b = conn({ uuid: B, forbidden: true });
    expect(planDowngrade([a, b])).toEqual({ kept: [b, a], leftOut: [] });
  });

  it('prefers a connection that is not forbidden, then the latest registration, then the later link', () => {
    const forbidden = conn({ deviceId: 3, forbidden: true, lastRegistration: 900 });
    const recent = conn({ deviceId: 1, lastRegistration: 500 });
    const older = conn({ deviceId: 2, lastRegistration: 400 });
    const plan = planDowngrade([forbidden, older, recent]);
    expect(plan.kept).toEqual([recent]);
    expect(plan.leftOut).toEqual([
      { conn: older, keptInstead: recent, because: 'Molly registered it more recently' },
      { conn: forbidden, keptInstead: recent, because: 'it is not forbidden' },
    ]);
    const twin = conn({ deviceId: 4, lastRegistration: 500 });
    expect(planDowngrade([recent, twin]).kept).toEqual([twin]);
    expect(planDowngrade([recent, twin]).leftOut[0]?.because).toBe('it is the later link (higher device id)');
  });
});

import type { HandOverState } from './lease-store.js';

/**
 * What to do with the old socket of a handed-over device, kept open until the new owner's replaces it
 * (make-before-break): `close` it once the new owner published its socket open (Signal's 4409 usually came first),
 * or the row was removed; `take` it back when the device is this instance's again; `wait` while the new owner is
 * alive and connecting, however slow; and close it on a timer only when the new owner is gone (its lease lapsed, or
 * nobody owns the row yet), after `timeoutMs`.
 */
export function handOverStep(state: HandOverState, me: string, handedAgoMs: number, timeoutMs: number): 'close' | 'take' | 'wait' {
  if (!state.exists) return 'close';
  if (state.owner === me) return 'take';
  if (state.owner !== null && state.ownerLive) return state.ownerConnected ? 'close' : 'wait';
  return handedAgoMs >= timeoutMs ? 'close' : 'wait';
}

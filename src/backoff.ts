export interface BackoffOptions {
  baseMs: number;
  capMs: number;
}

/**
 * Delay before retry `attempt` (0-based): exponential from `baseMs`, capped, with "equal jitter" (between half
 * and all of the step) so that many failures at once do not come back at once. A server's Retry-After wins when
 * it asks for longer, up to the cap. Pure: `random` is a number in [0, 1].
 */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: number, retryAfterMs?: number): number {
  const step = Math.min(opts.capMs, opts.baseMs * 2 ** Math.min(attempt, 30));
  const delay = Math.round(step / 2 + (random * step) / 2);
  return retryAfterMs !== undefined ? Math.max(delay, Math.min(retryAfterMs, opts.capMs)) : delay;
}

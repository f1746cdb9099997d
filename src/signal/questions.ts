import ipaddr from 'ipaddr.js';
import { LRUCache } from 'lru-cache';
import type { SignalVerdict } from './link.js';

/**
 * Who may ask Signal whether it accepts credentials, and when. Each question is a login attempt from this server's
 * address: a flood of made-up credentials must not get that address throttled for every account, nor take every
 * place from the real users. So the places are few and shared fairly (per account and per client address), and an
 * account whose credentials Signal keeps refusing is not asked about for a while.
 */
export interface QuestionLimits {
  /** Questions in progress at once, at most. */
  total: number;
  /** ... about one account. */
  perAccount: number;
  /** ... from one client address (an IPv6 client: its /64, which one client holds whole). */
  perAddress: number;
  /** This many refusals of an account's credentials within `windowMs`... */
  refusals: number;
  windowMs: number;
  /** ...and its next registrations with new credentials are answered `forbidden` without asking, for this long. */
  coolDownMs: number;
}

export const QUESTION_LIMITS: QuestionLimits = {
  total: 8,
  perAccount: 1,
  perAddress: 2,
  refusals: 5,
  windowMs: 3600_000,
  coolDownMs: 3600_000,
};

/** Accounts with recent refusals that are remembered at most: a flood of made-up uuids must not grow memory. */
const REMEMBERED_ACCOUNTS = 10_000;

/**
 * Whether a question may be asked now: `ask` (then `answered` with Signal's verdict, always), or the answer to give
 * without asking: `busy` (no place free: Molly tries again later) or `cooling` (the account keeps being refused).
 */
export type Admission = { kind: 'ask'; answered(verdict: SignalVerdict): void } | { kind: 'busy' } | { kind: 'cooling' };

export class SignalQuestions {
  private inProgress = 0;
  private readonly byAccount = new Map<string, number>();
  private readonly byAddress = new Map<string, number>();
  /** Per account: when Signal refused its recent credentials, and until when it is not asked about. */
  private readonly refusals = new LRUCache<string, { at: number[]; coolUntil: number }>({ max: REMEMBERED_ACCOUNTS });

  constructor(
    private readonly limits: QuestionLimits = QUESTION_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  admit(account: string, clientAddress: string | undefined): Admission {
    const refused = this.refusals.get(account);
    if (refused && refused.coolUntil > this.now()) return { kind: 'cooling' };
    const address = clientAddress === undefined ? undefined : addressKey(clientAddress);
    if (
      this.inProgress >= this.limits.total ||
      (this.byAccount.get(account) ?? 0) >= this.limits.perAccount ||
      (address !== undefined && (this.byAddress.get(address) ?? 0) >= this.limits.perAddress)
    ) {
      return { kind: 'busy' };
    }
    this.inProgress++;
    increment(this.byAccount, account, 1);
    if (address !== undefined) increment(this.byAddress, address, 1);
    let done = false;
    return {
      kind: 'ask',
      answered: (verdict) => {
        if (done) return;
        done = true;
        this.inProgress--;
        increment(this.byAccount, account, -1);
        if (address !== undefined) increment(this.byAddress, address, -1);
        this.record(account, verdict);
      },
    };
  }

  private record(account: string, verdict: SignalVerdict): void {
    if (verdict === 'accepted') this.refusals.delete(account);
    if (verdict !== 'refused') return;
    const now = this.now();
    const entry = this.refusals.get(account) ?? { at: [], coolUntil: 0 };
    entry.at = [...entry.at.filter((t) => now - t < this.limits.windowMs), now];
    if (entry.at.length >= this.limits.refusals) {
      entry.coolUntil = now + this.limits.coolDownMs;
      entry.at = [];
    }
    this.refusals.set(account, entry);
  }
}

function increment(counts: Map<string, number>, key: string, by: number): void {
  const n = (counts.get(key) ?? 0) + by;
  if (n > 0) counts.set(key, n);
  else counts.delete(key);
}

/** An IPv6 client holds a whole /64: counted as one address. IPv4 (mapped too) as it is. */
function addressKey(address: string): string {
  if (!ipaddr.isValid(address)) return address;
  const ip = ipaddr.process(address);
  if (ip.kind() === 'ipv4') return ip.toString();
  return `${(ip as ipaddr.IPv6).toNormalizedString().split(':').slice(0, 4).join(':')}::/64`;
}

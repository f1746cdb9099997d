/**
 * This instance's view of its own lease (pure: times are passed in). The database decides expiry; locally the lease
 * counts as held until the moment a confirmed renewal was *sent* plus the lease minus a margin, which is never later
 * than the database's expiry. An answer that comes late still counts from its sending, and renewals may overlap:
 * the latest confirmed one decides. No timer decides anything: only confirmed answers move the deadline.
 */
export class LeaseClock {
  private deadline = -Infinity;
  private healthySince: number | undefined;
  private lastOk: number | undefined;

  constructor(private readonly t: { leaseMs: number; renewMs: number; marginMs: number }) {}

  /** A renewal (or the join) sent at `sentAt` was confirmed at `now`. */
  renewed(sentAt: number, now: number): void {
    this.deadline = Math.max(this.deadline, sentAt + this.t.leaseMs - this.t.marginMs);
    // Healthy without a break: a gap longer than two renewal periods (a freeze, an outage) starts the count again.
    if (this.healthySince === undefined || this.lastOk === undefined || now - this.lastOk > 2 * this.t.renewMs) this.healthySince = now;
    this.lastOk = now;
  }

  /** A renewal failed. The lease may still hold until its deadline. */
  failed(): void {
    this.healthySince = undefined;
  }

  /** The row is gone: the others reaped this instance. */
  lost(): void {
    this.deadline = -Infinity;
    this.healthySince = undefined;
  }

  valid(now: number): boolean {
    return now < this.deadline;
  }

  /** How long the lease still holds (negative: lapsed that long ago). */
  remainingMs(now: number): number {
    return this.deadline - now;
  }

  /**
   * Whether this instance may judge others dead: only after a full lease of renewing without a break, so that after a
   * database outage every instance has had a lease period to renew its own before anyone is reaped.
   */
  mayReap(now: number): boolean {
    return this.valid(now) && this.healthySince !== undefined && now - this.healthySince >= this.t.leaseMs;
  }
}

import type { Connection, ConnectionKey, LeftBehindCandidate, Store } from './store/store.js';
import type { Logger } from './log.js';
import { endpointOrigin, shortUuid } from './log.js';
import { canonicalUuid, type ResolvedEndpoint } from './policy.js';
import type { SignalVerdict } from './signal/link.js';
import { SignalQuestions } from './signal/questions.js';
import { StoreWrites } from './store/writes.js';

/** What Molly sends in `POST /`. */
export interface RegistrationRequest {
  uuid: string;
  deviceId: number;
  password: string;
  endpoint: string;
  ping: boolean;
}

/** The five status strings Molly understands. */
export type RegistrationStatus = 'ok' | 'forbidden' | 'invalid_uuid' | 'invalid_endpoint' | 'internal_error';

type RegistrationAction =
  | 'none'
  /** Store a new connection and start it. */
  | 'create'
  /** Keep the credentials, change the endpoint (and re-enable, when it was forbidden for a gone endpoint). */
  | 'update_endpoint'
  /** Identical registration: only remember when it was seen. */
  | 'refresh'
  /** New password for a forbidden connection: replace the credentials and start again. */
  | 'replace_credentials'
  /** The credentials would change what the account has: decide again once Signal said whether it accepts them. */
  | 'ask_signal';

export interface Decision {
  status: RegistrationStatus;
  action: RegistrationAction;
  testPush: boolean;
}

/** Forbidden because the push endpoint was unregistered: a new endpoint is the fix, the credentials are fine. */
export const ENDPOINT_GONE = 'endpoint_gone';

const nothing = (status: RegistrationStatus): Decision => ({ status, action: 'none', testPush: false });

/**
 * Credentials that would change what is stored are taken only once Signal accepted them: refused ones answer
 * `forbidden`, and a Signal that cannot be asked `internal_error`, so that Molly tries again later.
 */
function onceSignalAccepts(verdict: SignalVerdict | undefined, decision: Decision): Decision {
  switch (verdict) {
    case undefined:
      return { status: 'internal_error', action: 'ask_signal', testPush: false };
    case 'accepted':
      return decision;
    case 'refused':
      return nothing('forbidden');
    case 'unreachable':
      return nothing('internal_error');
  }
}

/** What a registration is checked against before the stored row: the policy, and room for a new connection. */
export interface RegistrationChecks {
  uuidAllowed: boolean;
  endpointAllowed: boolean;
  /** `max_connections` connections are stored already (asked only for a new device). */
  full?: boolean;
}

/**
 * The registration decision table; first match wins. Pure. MollySocket's table is keyed by uuid alone; this one
 * by (uuid, device id), so that a re-linked Molly (a new device id) is not locked out, and rows 3 and 7 ask Signal
 * first, so that nobody who merely knows a uuid (or nothing at all) can add to or take over an account, or have a
 * row stored and a test push sent. `verdict` is Signal's answer, once asked.
 */
export function decide(req: RegistrationRequest, checks: RegistrationChecks, existing: Connection | undefined, verdict?: SignalVerdict): Decision {
  if (!checks.uuidAllowed) return nothing('invalid_uuid'); // row 1
  if (!checks.endpointAllowed) return nothing('invalid_endpoint'); // row 2
  if (!existing) {
    // A full store asks nobody: internal_error, and Molly tries again later (the operator sees why in the log).
    if (checks.full) return nothing('internal_error'); // row 3, full
    return onceSignalAccepts(verdict, { status: 'ok', action: 'create', testPush: true }); // row 3
  }
  if (existing.password === req.password) {
    if (existing.forbidden) {
      // Beyond MollySocket: a connection forbidden only because its endpoint was gone comes back with a new one.
      if (existing.forbiddenReason === ENDPOINT_GONE && existing.endpoint !== req.endpoint) {
        return { status: 'ok', action: 'update_endpoint', testPush: true };
      }
      return nothing('forbidden'); // row 4
    }
    if (existing.endpoint !== req.endpoint) return { status: 'ok', action: 'update_endpoint', testPush: req.ping }; // row 5
    return { status: 'ok', action: 'refresh', testPush: req.ping }; // row 6
  }
  if (existing.forbidden) return onceSignalAccepts(verdict, { status: 'ok', action: 'replace_credentials', testPush: true }); // row 7
  return nothing('internal_error'); // row 8: a healthy connection is not taken over without its password
}

/** What applying a registration needs from the rest of the server. */
export interface RegistrationEffects {
  isUuidAllowed(uuid: string): boolean;
  /** The endpoint policy, including the address check for endpoints allowed through "*". */
  checkEndpoint(endpoint: string): Promise<ResolvedEndpoint>;
  /** The stored connection changed: start, replace or stop its socket. */
  connectionChanged(conn: Connection): void;
  sendTestPush(conn: Connection): void;
  /** Whether Signal accepts these credentials: a websocket upgrade, closed at once. */
  askSignal(creds: Pick<RegistrationRequest, 'uuid' | 'deviceId' | 'password'>): Promise<SignalVerdict>;
}

/** A registration's write lost a race this many times (another one changed the row each time): internal_error. */
const MAX_TRIES = 3;

/** The one place that applies the decision table: to the store, then to the running connections. */
export class Registrations {
  private readonly now: () => number;
  private readonly writes: StoreWrites;
  private readonly questions: SignalQuestions;
  private readonly maxConnections: number;
  /** The store was found full: said once in the log, until there is room again. */
  private full = false;

  constructor(
    private readonly store: Store,
    private readonly effects: RegistrationEffects,
    private readonly log: Logger,
    /**
     * `now` in unix seconds; `writes`: the server's, so that /health sees registrations failing; `maxConnections`: the
     * cap on stored connections (0: none); `questions`: who may ask Signal when.
     */
    opts: { now?: () => number; writes?: StoreWrites; maxConnections?: number; questions?: SignalQuestions } = {},
  ) {
    this.now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    this.writes = opts.writes ?? new StoreWrites(log, { errors: store });
    this.maxConnections = opts.maxConnections ?? 0;
    this.questions = opts.questions ?? new SignalQuestions();
  }

  /** `clientAddress`: where the registration came from, so that no one client takes every question to Signal. */
  async register(sent: RegistrationRequest, clientAddress?: string): Promise<RegistrationStatus> {
    const req = { ...sent, uuid: canonicalUuid(sent.uuid) };
    const who = { uuid: shortUuid(req.uuid), device: req.deviceId };
    try {
      const uuidAllowed = this.effects.isUuidAllowed(req.uuid);
      const endpoint = uuidAllowed ? await this.effects.checkEndpoint(req.endpoint) : undefined;
      if (endpoint?.ok === false) {
        this.log.info({ endpoint: endpointOrigin(req.endpoint), reason: endpoint.reason }, 'endpoint refused');
        // A DNS failure says nothing about the endpoint: internal_error makes Molly try again later.
        if (endpoint.transient) return 'internal_error';
      }
      const endpointAllowed = endpoint?.ok === true;
      const key = { uuid: req.uuid, deviceId: req.deviceId };
      let verdict: SignalVerdict | undefined;
      // Read, decide, write compare-and-set on what was read: a registration that changed the row meanwhile makes this
      // one decide again, so that concurrent ones get the answers they would get one after the other.
      for (let tries = 1; ; tries++) {
        const stored = await this.store.get(key);
        const full = stored === undefined && endpointAllowed && uuidAllowed && (await this.isFull());
        const decision = decide(req, { uuidAllowed, endpointAllowed, full }, stored, verdict);
        if (decision.action === 'ask_signal') {
          verdict = await this.askSignal(req, clientAddress);
          continue; // decided again on what is stored now, with Signal's verdict
        }
        if (decision.action === 'none') {
          this.log.info({ ...who, status: decision.status }, 'registration refused');
          return decision.status;
        }
        const at = this.now();
        // Answered `ok` only once stored, in a file that is still the database (not deleted under the server).
        const conn = await this.writes.now(
          () => (decision.action === 'refresh' ? this.store.touchIf(key, at, stored!) : this.store.putIf(req, at, stored)), // create, update_endpoint, replace_credentials: the whole row, enabled
        );
        if (!conn) {
          if (tries < MAX_TRIES) continue;
          this.log.warn(who, 'registration not stored: the connection kept changing meanwhile');
          return 'internal_error';
        }
        this.log.info({ ...who, action: decision.action }, 'registration');
        if (decision.action !== 'refresh') this.effects.connectionChanged(conn);
        if (decision.testPush) this.effects.sendTestPush(conn);
        return decision.status;
      }
    } catch (err) {
      if (this.store.isDataError(err)) {
        // What this request sent cannot be stored (PostgreSQL refuses a NUL byte in text): its error, one line.
        this.log.warn({ ...who, code: (err as { code?: string }).code }, 'registration refused: the database cannot store what it sent');
      } else {
        this.log.error({ err, uuid: who.uuid }, 'registration failed');
      }
      return 'internal_error';
    }
  }

  /** Whether `max_connections` are stored (never, without a cap); says so in the log when it becomes full. */
  private async isFull(): Promise<boolean> {
    if (this.maxConnections <= 0) return false;
    const full = (await this.store.count()) >= this.maxConnections;
    if (full && !this.full) {
      this.log.warn(
        { max_connections: this.maxConnections },
        'max_connections connections are stored: registrations of new devices answer internal_error (Molly tries again later) until there is room',
      );
    }
    this.full = full;
    return full;
  }

  /** Signal's verdict; `unreachable` (Molly tries again later) while no place is free for this question. */
  private async askSignal(req: RegistrationRequest, clientAddress: string | undefined): Promise<SignalVerdict> {
    const who = { uuid: shortUuid(req.uuid), device: req.deviceId };
    const admission = this.questions.admit(req.uuid, clientAddress);
    if (admission.kind !== 'ask') {
      this.log.info({ ...who, why: admission.kind }, 'new credentials not checked with Signal now');
      return admission.kind === 'busy' ? 'unreachable' : 'refused'; // cooling: Signal refused this account again and again
    }
    let verdict: SignalVerdict = 'unreachable';
    try {
      verdict = await this.effects.askSignal(req);
      this.log.info({ ...who, verdict }, 'new credentials checked with Signal');
      return verdict;
    } finally {
      admission.answered(verdict);
    }
  }
}

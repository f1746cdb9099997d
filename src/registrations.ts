import type { Connection, ConnectionKey, Store } from './store/store.js';
import type { Logger } from './log.js';
import { endpointOrigin, shortUuid } from './log.js';
import { canonicalUuid, type ResolvedEndpoint } from './policy.js';
import type { SignalVerdict } from './signal/link.js';
import {StoreWrites} from './store/writes.js';

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

/** What the store holds for the account of a registration. */
export interface StoredAccount {
  /** The connection of this account device. */
  device: Connection | undefined;
  /** Whether another device of the account has a connection that is not forbidden. */
  otherDeviceHealthy: boolean;
}

const nothing = (status: RegistrationStatus): Decision => ({ status, action: 'none', testPush: false });

/**
 * Credentials that would change what an account already has are taken only once Signal accepted them: refused
 * ones answer `forbidden`, and a Signal that cannot be asked `internal_error`, so that Molly tries again later.
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

/**
 * The registration decision table; first match wins. Pure. MollySocket's table is keyed by uuid alone; this one
 * by (uuid, device id), so that a re-linked Molly (a new device id) is not locked out, and rows 3b and 7 ask Signal
 * first so that nobody who merely knows a uuid can add to or take over an account. `verdict` is Signal's answer,
 * once asked.
 */
export function decide(
  req: RegistrationRequest,
  checks: { uuidAllowed: boolean; endpointAllowed: boolean },
  stored: StoredAccount,
  verdict?: SignalVerdict,
): Decision {
  if (!checks.uuidAllowed) return nothing('invalid_uuid'); // row 1
  if (!checks.endpointAllowed) return nothing('invalid_endpoint'); // row 2
  const existing = stored.device;
  const create: Decision = { status: 'ok', action: 'create', testPush: true };
  if (!existing) return stored.otherDeviceHealthy ? onceSignalAccepts(verdict, create) : create; // rows 3b, 3
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

/**
 * Questions to Signal in progress at once, at most. Each is a login attempt from this server's address: a flood of
 * made-up credentials must not turn into a flood of failed logins that gets the address throttled for every account.
 */
const MAX_QUESTIONS_TO_SIGNAL = 8;

/** The one place that applies the decision table: to the store, then to the running connections. */
export class Registrations {
  private readonly now: () => number;
  private readonly writes: StoreWrites;
  private asking = 0;

  constructor(
    private readonly store: Store,
    private readonly effects: RegistrationEffects,
    private readonly log: Logger,
    /** `now` in unix seconds; `writes`: the server's, so that /health sees registrations failing. */
    opts: { now?: () => number; writes?: StoreWrites } = {},
  ) {
    this.now = opts.now ?? (() => Math.floor(Date.now() / 1000));
    this.writes = opts.writes ?? new StoreWrites(log, { isTransient: (err) => store.isTransient(err) });
  }

  async register(sent: RegistrationRequest): Promise<RegistrationStatus> {
    const req = { ...sent, uuid: canonicalUuid(sent.uuid) };
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
      const checks = { uuidAllowed, endpointAllowed };
      let decision = decide(req, checks, await this.stored(key));
      if (decision.action === 'ask_signal') {
        const verdict = await this.askSignal(req);
        this.log.info({ uuid: shortUuid(req.uuid), device: req.deviceId, verdict }, 'new credentials checked with Signal');
        decision = decide(req, checks, await this.stored(key), verdict); // what is stored may have changed meanwhile
      }
      const at = this.now();
      const stores = decision.action !== 'none' && decision.action !== 'ask_signal'; // after Signal's verdict, never ask_signal
      // Answered `ok` only once stored, in a file that is still the database (not deleted under the server).
      const conn = !stores
        ? undefined
        : await this.writes.now(() =>
            decision.action === 'refresh'
              ? this.store.touchRegistration(key, at)
              : this.store.put(req, at), // create, update_endpoint, replace_credentials: the whole row, enabled
          );
      if (stores) {
        this.log.info({ uuid: shortUuid(req.uuid), device: req.deviceId, action: decision.action }, 'registration');
      } else {
        this.log.info({ uuid: shortUuid(req.uuid), device: req.deviceId, status: decision.status }, 'registration refused');
      }
      if (conn && decision.action !== 'refresh') this.effects.connectionChanged(conn);
      if (conn && decision.testPush) this.effects.sendTestPush(conn);
      return decision.status;
    } catch (err) {
      this.log.error({ err, uuid: shortUuid(req.uuid) }, 'registration failed');
      return 'internal_error';
    }
  }

  /** Signal's verdict; `unreachable` (Molly tries again later) while too many questions are in progress. */
  private async askSignal(req: RegistrationRequest): Promise<SignalVerdict> {
    if (this.asking >= MAX_QUESTIONS_TO_SIGNAL) return 'unreachable';
    this.asking++;
    try {
      return await this.effects.askSignal(req);
    } finally {
      this.asking--;
    }
  }

  private async stored(key: ConnectionKey): Promise<StoredAccount> {
    return {
      device: await this.store.get(key),
      otherDeviceHealthy: (await this.store.list({ uuid: key.uuid })).some((c) => c.deviceId !== key.deviceId && !c.forbidden),
    };
  }
}

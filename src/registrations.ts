import type { Connection, Store } from './store.js';
import type { Logger } from './log.js';
import { endpointOrigin, shortUuid } from './log.js';
import type { ResolvedEndpoint } from './policy.js';

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

export type RegistrationAction =
  | 'none'
  /** Store a new connection and start it. */
  | 'create'
  /** Keep the credentials, change the endpoint (and re-enable, when it was forbidden for a gone endpoint). */
  | 'update_endpoint'
  /** Identical registration: only remember when it was seen. */
  | 'refresh'
  /** New password for a forbidden connection: replace the credentials and start again. */
  | 'replace_credentials';

export interface Decision {
  status: RegistrationStatus;
  action: RegistrationAction;
  testPush: boolean;
}

/** Forbidden because the push endpoint was unregistered: a new endpoint is the fix, the credentials are fine. */
export const ENDPOINT_GONE = 'endpoint_gone';

const nothing = (status: RegistrationStatus): Decision => ({ status, action: 'none', testPush: false });

/** The registration decision table of PROTOCOL.md section 1; first match wins. Pure. */
export function decide(
  req: RegistrationRequest,
  checks: { uuidAllowed: boolean; endpointAllowed: boolean },
  existing: Connection | undefined,
): Decision {
  if (!checks.uuidAllowed) return nothing('invalid_uuid'); // row 1
  if (!checks.endpointAllowed) return nothing('invalid_endpoint'); // row 2
  if (!existing) return { status: 'ok', action: 'create', testPush: true }; // row 3
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
  if (existing.forbidden) return { status: 'ok', action: 'replace_credentials', testPush: true }; // row 7
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
}

/** The one place that applies the decision table: to the store, then to the running connections. */
export class Registrations {
  constructor(
    private readonly store: Store,
    private readonly effects: RegistrationEffects,
    private readonly log: Logger,
    private readonly now: () => number = () => Math.floor(Date.now() / 1000),
  ) {}

  async register(req: RegistrationRequest): Promise<RegistrationStatus> {
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
      const decision = decide(req, { uuidAllowed, endpointAllowed }, await this.store.get(key));
      const at = this.now();
      const conn =
        decision.action === 'none'
          ? undefined
          : decision.action === 'refresh'
            ? await this.store.touchRegistration(key, at)
            : await this.store.put(req, at); // create, update_endpoint, replace_credentials: the whole row, enabled
      if (decision.action !== 'none') {
        this.log.info({ uuid: shortUuid(req.uuid), device: req.deviceId, action: decision.action }, 'registration');
      } else {
        this.log.info({ uuid: shortUuid(req.uuid), device: req.deviceId, status: decision.status }, 'registration refused');
      }
      if (conn && decision.action !== 'refresh') this.effects.connectionChanged(conn);
      if (conn && decision.testPush) this.effects.sendTestPush(conn);
      return decision.status;
    } catch (err) {
      this.log.error({ err: (err as Error).message, uuid: shortUuid(req.uuid) }, 'registration failed');
      return 'internal_error';
    }
  }
}

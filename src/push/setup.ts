import type { Config } from '../config.js';
import { EndpointPolicy } from '../policy.js';
import type { Resolver } from '../resolver.js';
import { PushClient } from './client.js';
import { VapidSigner } from './vapid.js';

/** The endpoint policy and a VAPID-signing push client for a configuration: the server and the CLI use the same. */
export function pushStack(config: Config, vapidPrivateKey: Buffer, resolver?: Resolver) {
  const policy = new EndpointPolicy(config.allowed_endpoints, resolver);
  const signer = new VapidSigner(vapidPrivateKey);
  const client = new PushClient({ policy, authorization: (e) => signer.header(e), timeoutMs: config.push_timeout_ms });
  return { policy, signer, client };
}

import { createECDH, createPrivateKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Config } from '../config.js';

/** VAPID (RFC 8292): keys, the kept generated key, and the signed Authorization header. */

export class VapidKeyError extends Error {
  override name = 'VapidKeyError';
}

const b64url = (buf: Buffer): string => buf.toString('base64url');

/** Decodes a private key: 32 bytes as 43 characters of unpadded base64url. `from` names where it came from. */
export function parsePrivateKey(text: string, from: string): Buffer {
  const key = text.trim();
  const bytes = Buffer.from(key, 'base64url');
  if (!/^[A-Za-z0-9_-]+$/.test(key) || bytes.length !== 32) {
    throw new VapidKeyError(
      `the VAPID private key from ${from} must be 32 bytes as 43 characters of unpadded base64url ` +
        `(got ${key.length} characters): generate one with \`mollysocket vapid gen\``,
    );
  }
  return bytes;
}

/** The uncompressed P-256 public point (65 bytes) of a private key. */
function publicPoint(privateKey: Buffer): Buffer {
  const ecdh = createECDH('prime256v1');
  ecdh.setPrivateKey(privateKey);
  return ecdh.getPublicKey();
}

/** The public key as Molly wants it: 87 characters of unpadded base64url. */
export const publicKeyOf = (privateKey: Buffer): string => b64url(publicPoint(privateKey));

/** A fresh private key, 43 characters of unpadded base64url. */
export function generatePrivateKey(): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const d = privateKey.export({ format: 'jwk' }).d;
  if (!d) throw new Error('key generation returned no private scalar');
  return d;
}

/** Where `server` keeps the key it generates when none is configured: next to the database. */
export const keptKeyPath = (config: Pick<Config, 'db'>): string => join(dirname(config.db), 'vapid.key');

type KeyConfig = Pick<Config, 'db' | 'vapid_key_file' | 'vapid_privkey'>;

export interface ResolvedKey {
  privateKey: Buffer;
  publicKey: string;
  /** Which setting or file the key came from. */
  source: 'vapid_key_file' | 'vapid_privkey' | 'kept' | 'generated';
  path?: string;
}

const make = (privateKey: Buffer, source: ResolvedKey['source'], path?: string): ResolvedKey => ({
  privateKey,
  publicKey: publicKeyOf(privateKey),
  source,
  ...(path !== undefined && { path }),
});

/** The key set by `vapid_key_file` (which wins) or `vapid_privkey`, if any. */
function configuredVapidKey(config: Omit<KeyConfig, 'db'>): ResolvedKey | undefined {
  if (config.vapid_key_file !== undefined) {
    let text: string;
    try {
      text = readFileSync(config.vapid_key_file, 'utf8');
    } catch (err) {
      throw new VapidKeyError(`cannot read vapid_key_file ${config.vapid_key_file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
        cause: err,
      });
    }
    return make(parsePrivateKey(text, `vapid_key_file ${config.vapid_key_file}`), 'vapid_key_file', config.vapid_key_file);
  }
  if (config.vapid_privkey !== undefined) return make(parsePrivateKey(config.vapid_privkey, 'vapid_privkey'), 'vapid_privkey');
  return undefined;
}

/**
 * The configured key: `vapid_key_file` wins over `vapid_privkey`, then the kept key. With `generate`, a missing
 * kept key is generated and written (mode 0600). Without a key and without `generate`: undefined.
 */
export function resolveVapidKey(config: KeyConfig, opts: { generate: true }): ResolvedKey;
export function resolveVapidKey(config: KeyConfig, opts: { generate: boolean }): ResolvedKey | undefined;
export function resolveVapidKey(config: KeyConfig, opts: { generate: boolean }): ResolvedKey | undefined {
  const configured = configuredVapidKey(config);
  if (configured) return configured;
  const path = keptKeyPath(config);
  if (existsSync(path)) return make(parsePrivateKey(readFileSync(path, 'utf8'), `the kept key file ${path}`), 'kept', path);
  if (!opts.generate) return undefined;
  const key = generatePrivateKey();
  try {
    writeFileSync(path, `${key}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    throw new VapidKeyError(
      `cannot keep a generated VAPID key at ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; ` +
        'make that directory writable, or set vapid_privkey or vapid_key_file',
      { cause: err },
    );
  }
  return make(parsePrivateKey(key, path), 'generated', path);
}

/** Contact for push services, required by RFC 8292. */
const SUBJECT = 'https://github.com/mollyim/mollysocket';
/** Lifetime of a signed token; push services accept at most 24 h. */
const TOKEN_LIFETIME_S = 12 * 3600;
/** A cached token is replaced this long before it expires. */
const TOKEN_REFRESH_MARGIN_S = 3600;

/** Signed headers kept for this many origins, the most recently used: strangers' endpoints cannot grow it. */
const CACHED_ORIGINS = 256;

/** Signs VAPID headers, one per origin, reused until shortly before they expire. */
export class VapidSigner {
  readonly publicKey: string;
  private readonly key: KeyObject;
  private readonly cache = new LRUCache<string, { header: string; exp: number }>({ max: CACHED_ORIGINS });

  constructor(
    privateKey: Buffer,
    private readonly nowSeconds: () => number = () => Math.floor(Date.now() / 1000),
  ) {
    const point = publicPoint(privateKey);
    this.publicKey = b64url(point);
    this.key = createPrivateKey({
      format: 'jwk',
      key: { kty: 'EC', crv: 'P-256', d: b64url(privateKey), x: b64url(point.subarray(1, 33)), y: b64url(point.subarray(33)) },
    });
  }

  /** `vapid t=<JWT>, k=<public key>` for the origin of `endpoint`. */
  header(endpoint: string): string {
    const aud = new URL(endpoint).origin;
    const now = this.nowSeconds();
    const cached = this.cache.get(aud);
    if (cached && cached.exp - TOKEN_REFRESH_MARGIN_S > now) return cached.header;
    const exp = now + TOKEN_LIFETIME_S;
    const part = (o: object): string => b64url(Buffer.from(JSON.stringify(o)));
    const unsigned = `${part({ typ: 'JWT', alg: 'ES256' })}.${part({ aud, exp, sub: SUBJECT })}`;
    const signature = sign('sha256', Buffer.from(unsigned), { key: this.key, dsaEncoding: 'ieee-p1363' });
    const header = `vapid t=${unsigned}.${b64url(signature)}, k=${this.publicKey}`;
    this.cache.set(aud, { header, exp });
    return header;
  }
}

/** What the cluster key needs from the store: its settings table (PostgreSQL). */
export interface KeySettings {
  setting(name: string, init?: string): Promise<string | undefined>;
}

/**
 * Several instances on PostgreSQL share one key. A configured key must be the one the others use (the database keeps
 * the cluster's public key); without one, the first instance generates a key and keeps it in the database for all.
 */
export async function clusterVapidKey(config: Omit<KeyConfig, 'db'>, settings: KeySettings): Promise<ResolvedKey> {
  const configured = configuredVapidKey(config);
  let key = configured;
  if (!key) {
    const privateKey = parsePrivateKey((await settings.setting('vapid_private_key', generatePrivateKey()))!, 'the VAPID key kept in the database');
    key = make(privateKey, 'kept');
  }
  const shared = await settings.setting('vapid_public_key', key.publicKey);
  if (shared !== key.publicKey) {
    throw new VapidKeyError(
      configured
        ? `the configured VAPID key (${configured.source}) is not the one the other instances on this database use: set the same key on every instance`
        : 'the other instances on this database use a configured VAPID key: set the same vapid_privkey or vapid_key_file here',
    );
  }
  return key;
}

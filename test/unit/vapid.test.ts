import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  clusterVapidKey,
  generatePrivateKey,
  keptKeyPath,
  parsePrivateKey,
  publicKeyOf,
  resolveVapidKey,
  VapidKeyError,
  VapidSigner,
} from '../../src/push/vapid.js';
import { checkVapid } from '../fakes/push-server.js';
import { tempDir } from '../helpers/index.js';

const PRIV = 'DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI';
const PUB = 'BOniQ9xHBPNY9gnQW4o-16vHqOb40pEIMifyUdFsxAgyzVkFMguxw0QrdbZcq8hRjN2zpeInRvKVPlkzABvuTnI';

describe('VAPID keys', () => {
  it('derives the public key of the test vector of docs/protocol.md section 4', () => {
    expect(publicKeyOf(parsePrivateKey(PRIV, 'test'))).toBe(PUB);
  });

  it('generates 43-character keys whose public key is 87 characters', () => {
    const key = generatePrivateKey();
    expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(publicKeyOf(parsePrivateKey(key, 'test'))).toMatch(/^B[A-Za-z0-9_-]{86}$/);
    expect(generatePrivateKey()).not.toBe(key);
  });

  it('refuses a key of the wrong length, naming where it came from', () => {
    expect(() => parsePrivateKey(PRIV.slice(1), 'vapid_privkey')).toThrow(/from vapid_privkey must be 32 bytes.*mollysocket vapid gen/);
    expect(() => parsePrivateKey(`${PRIV}=`, 'x')).toThrow(VapidKeyError);
  });
});

describe('resolveVapidKey', () => {
  const base = (dir: string) => ({ db: join(dir, 'mollysocket.db'), vapid_key_file: undefined, vapid_privkey: undefined });

  it('generates a key once, keeps it next to the database with mode 0600, and reuses it', () => {
    const dir = tempDir();
    expect(resolveVapidKey(base(dir), { generate: false })).toBeUndefined();
    const first = resolveVapidKey(base(dir), { generate: true });
    expect(first?.source).toBe('generated');
    expect(first?.path).toBe(join(dir, 'vapid.key'));
    expect(statSync(keptKeyPath(base(dir))).mode & 0o777).toBe(0o600);
    const second = resolveVapidKey(base(dir), { generate: true });
    expect(second?.source).toBe('kept');
    expect(second?.publicKey).toBe(first?.publicKey);
  });

  it('prefers vapid_key_file over vapid_privkey over the kept key', () => {
    const dir = tempDir();
    const file = join(dir, 'key.txt');
    writeFileSync(file, `${PRIV}\n`);
    const other = generatePrivateKey();
    expect(resolveVapidKey({ ...base(dir), vapid_privkey: other, vapid_key_file: file }, { generate: true })).toMatchObject({
      source: 'vapid_key_file',
      publicKey: PUB,
    });
    expect(resolveVapidKey({ ...base(dir), vapid_privkey: PRIV }, { generate: true })).toMatchObject({ source: 'vapid_privkey', publicKey: PUB });
  });

  it('names vapid_key_file when it cannot be read or holds a bad key', () => {
    const dir = tempDir();
    expect(() => resolveVapidKey({ ...base(dir), vapid_key_file: join(dir, 'missing') }, { generate: true })).toThrow(/cannot read vapid_key_file .*ENOENT/);
    const bad = join(dir, 'bad');
    writeFileSync(bad, 'abc');
    expect(() => resolveVapidKey({ ...base(dir), vapid_key_file: bad }, { generate: true })).toThrow(/vapid_key_file .* must be 32 bytes/);
  });

  it('says how to fix an unwritable directory for the generated key', () => {
    expect(() => resolveVapidKey({ ...base('/nonexistent-dir'), db: '/nonexistent-dir/x.db' }, { generate: true })).toThrow(
      /cannot keep a generated VAPID key.*set vapid_privkey or vapid_key_file/,
    );
  });
});

describe('clusterVapidKey: one key for every instance on PostgreSQL', () => {
  /** The settings table: INSERT … ON CONFLICT DO NOTHING, then read back. */
  const settings = () => {
    const table = new Map<string, string>();
    return {
      table,
      setting: async (name: string, init?: string) => {
        if (init !== undefined && !table.has(name)) table.set(name, init);
        return table.get(name);
      },
    };
  };
  const none = { vapid_key_file: undefined, vapid_privkey: undefined };

  it('generates a key once and keeps it in the database, so that every instance uses it', async () => {
    const db = settings();
    const first = await clusterVapidKey(none, db);
    const second = await clusterVapidKey(none, db);
    expect(first.source).toBe('kept');
    expect(second.publicKey).toBe(first.publicKey);
    expect(db.table.get('vapid_public_key')).toBe(first.publicKey);
  });

  it('accepts the same configured key on every instance, and refuses a different one, naming the mismatch', async () => {
    const db = settings();
    const key = generatePrivateKey();
    expect((await clusterVapidKey({ ...none, vapid_privkey: key }, db)).publicKey).toBe(publicKeyOf(parsePrivateKey(key, 'k')));
    expect((await clusterVapidKey({ ...none, vapid_privkey: key }, db)).source).toBe('vapid_privkey');
    expect(db.table.has('vapid_private_key')).toBe(false); // a configured key is never written to the database
    await expect(clusterVapidKey({ ...none, vapid_privkey: generatePrivateKey() }, db)).rejects.toThrow(
      /the configured VAPID key \(vapid_privkey\) is not the one the other instances on this database use/,
    );
    await expect(clusterVapidKey(none, db)).rejects.toThrow(/the other instances on this database use a configured VAPID key/);
  });
});

describe('VapidSigner', () => {
  it('signs a header that a push server accepts for the endpoint origin', () => {
    const now = 1_800_000_000;
    const signer = new VapidSigner(parsePrivateKey(PRIV, 'test'), () => now);
    const header = signer.header('https://push.example:8443/up/token?x=1');
    const check = checkVapid(header, 'https://push.example:8443', now);
    expect(check).toMatchObject({ ok: true, publicKey: PUB });
    if (check.ok) expect(check.claims.exp - now).toBeLessThanOrEqual(24 * 3600);
    expect(checkVapid(header, 'https://other.example', now).ok).toBe(false);
  });

  it('reuses a header per origin and replaces it before it expires', () => {
    let now = 1_800_000_000;
    const signer = new VapidSigner(parsePrivateKey(PRIV, 'test'), () => now);
    const first = signer.header('https://a.example/1');
    expect(signer.header('https://a.example/2')).toBe(first);
    expect(signer.header('https://b.example/1')).not.toBe(first);
    now += 11 * 3600 + 1; // within the refresh margin of the 12 h token
    const later = signer.header('https://a.example/1');
    expect(later).not.toBe(first);
    expect(checkVapid(later, 'https://a.example', now).ok).toBe(true);
  });
});

describe('the signed header cache', () => {
  it('keeps the headers of a bounded number of origins, the most recently used', () => {
    const signer = new VapidSigner(parsePrivateKey('DSqYuWchrB6yIMYJtidvqANeRQic4uWy34afzZRsZnI', 'test'));
    const first = signer.header('https://o0.example/up');
    for (let i = 1; i <= 300; i++) signer.header(`https://o${i}.example/up`);
    expect((signer as unknown as { cache: { size: number } }).cache.size).toBe(256);
    expect(signer.header('https://o300.example/up')).toBe(signer.header('https://o300.example/up'));
    expect(signer.header('https://o0.example/up')).not.toBe(first); // evicted, signed again
  });
});

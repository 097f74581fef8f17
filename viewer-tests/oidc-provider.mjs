// A real OpenID provider for the SSO tests: panva's `oidc-provider` (certified OpenID Connect
// implementation) on a loopback port, with its own development login and consent pages. The
// tests start it as a child process; nothing here imitates a provider.
//
//   node oidc-provider.mjs --generate-keys FILE
//       writes a private JWKS (an RSA, a P-256 and an Ed25519 key, each with a fresh kid)
//   node oidc-provider.mjs --port PORT --jwks FILE --redirect-uri URI [--redirect-uri URI …]
//       [--kahn-secret-file FILE] [--id-token-alg RS256] [--other-redirect-uri URI]
//       serves the issuer http://127.0.0.1:PORT (PORT 0: any free port) signing with FILE's
//       keys; prints one line `{"issuer": …}` on stdout once it listens. Starting it again on
//       the same port with another FILE is a key rotation: the old kids are gone.
//
// Every flag may also come from the environment: OIDC_PORT, OIDC_JWKS, OIDC_REDIRECT_URIS
// (space separated), OIDC_KAHN_SECRET_FILE, OIDC_ID_TOKEN_ALG, OIDC_OTHER_REDIRECT_URI.
//
// Clients:
//   kahn   the server under test: client_secret_basic with the secret in --kahn-secret-file
//          (none given: a public client, PKCE only), ID tokens signed with --id-token-alg
//   kahn-public  the same redirect URIs as kahn, a public client (no secret: PKCE only), ID
//          tokens signed ES256
//   other  a second confidential client (secret `other-secret`), for the tests that need a
//          token issued to another audience
// PKCE (S256) is required of every client.
//
// Accounts (the login page accepts any password; the login is the account id):
//   alice   member; owns a personal tenant
//   bob     member of organisation `acme`
//   root    role admin
//   nobody  no tenant at all
// Their org_id and role are in the ID token itself (conformIdTokenClaims: false), from the
// `profile` scope; email from the `email` scope.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

export const ACCOUNTS = {
  alice: { name: 'Alice Member', email: 'alice@example.test', role: 'member' },
  bob: { name: 'Bob Builder', email: 'bob@acme.example.test', role: 'member', org_id: 'acme' },
  root: { name: 'Root Admin', email: 'root@example.test', role: 'admin' },
  nobody: { name: 'No Body', email: 'nobody@example.test', role: 'member' },
};

export const OTHER_CLIENT = { id: 'other', secret: 'other-secret', redirectUri: 'http://127.0.0.1/other-callback' };

/** A private JWKS: one RSA (RS256), one P-256 (ES256) and one Ed25519 (EdDSA) key, fresh kids. */
export function generateJwks() {
  const tag = crypto.randomBytes(6).toString('hex');
  const key = (kind, options, alg) => {
    const { privateKey } = crypto.generateKeyPairSync(kind, options);
    return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${tag}`, use: 'sig', alg };
  };
  return {
    keys: [
      key('rsa', { modulusLength: 2048 }, 'RS256'),
      key('ec', { namedCurve: 'P-256' }, 'ES256'),
      key('ed25519', {}, 'EdDSA'),
    ],
  };
}

/** Writes a fresh private JWKS to `file` (owner-only) and answers the public kids. */
export function writeJwks(file) {
  const jwks = generateJwks();
  fs.writeFileSync(file, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  return jwks.keys.map((k) => k.kid);
}

function parseArgs(argv) {
  const env = process.env;
  const opts = {
    port: env.OIDC_PORT || '0',
    jwks: env.OIDC_JWKS || null,
    redirectUris: (env.OIDC_REDIRECT_URIS || '').split(/\s+/).filter(Boolean),
    kahnSecretFile: env.OIDC_KAHN_SECRET_FILE || null,
    idTokenAlg: env.OIDC_ID_TOKEN_ALG || 'RS256',
    otherRedirectUri: env.OIDC_OTHER_REDIRECT_URI || OTHER_CLIENT.redirectUri,
    generateKeys: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      i += 1;
      return argv[i];
    };
    switch (flag) {
      case '--port': opts.port = value(); break;
      case '--jwks': opts.jwks = value(); break;
      case '--redirect-uri': opts.redirectUris.push(value()); break;
      case '--kahn-secret-file': opts.kahnSecretFile = value(); break;
      case '--id-token-alg': opts.idTokenAlg = value(); break;
      case '--other-redirect-uri': opts.otherRedirectUri = value(); break;
      case '--generate-keys': opts.generateKeys = value(); break;
      default: throw new Error(`unknown argument ${flag}`);
    }
  }
  return opts;
}

/** Listens on 127.0.0.1:PORT and serves the provider; answers `{issuer, server}`. */
export async function startProvider(opts) {
  const { default: Provider } = await import('oidc-provider');
  if (!opts.jwks) throw new Error('--jwks FILE is required (make one with --generate-keys FILE)');
  if (!opts.redirectUris.length) throw new Error('at least one --redirect-uri is required (kahn\'s PUBLIC_URL/auth/callback)');
  const jwks = JSON.parse(fs.readFileSync(opts.jwks, 'utf8'));
  const secret = opts.kahnSecretFile ? fs.readFileSync(opts.kahnSecretFile, 'utf8').trim() : null;

  // The issuer names the port, so bind first (PORT 0 picks one), then build the provider.
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(opts.port), '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const kahnClient = {
    client_id: 'kahn',
    redirect_uris: opts.redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: opts.idTokenAlg,
    ...(secret
      ? { client_secret: secret, token_endpoint_auth_method: 'client_secret_basic' }
      : { token_endpoint_auth_method: 'none' }),
  };
  const provider = new Provider(issuer, {
    clients: [kahnClient, {
      client_id: 'kahn-public',
      redirect_uris: opts.redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      id_token_signed_response_alg: 'ES256',
    }, {
      client_id: OTHER_CLIENT.id,
      client_secret: OTHER_CLIENT.secret,
      redirect_uris: [opts.otherRedirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    }],
    jwks,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    // Standard claims by scope, plus the two KAHN reads: org_id and role ride on `profile`.
    claims: {
      openid: ['sub'],
      profile: ['name', 'org_id', 'role'],
      email: ['email', 'email_verified'],
    },
    // Put the scopes' claims in the ID token itself (KAHN reads no userinfo).
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    async findAccount(_ctx, id) {
      const account = Object.hasOwn(ACCOUNTS, id) ? ACCOUNTS[id] : null;
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, ...account, email_verified: true };
        },
      };
    },
  });
  provider.on('server_error', (_ctx, err) => process.stderr.write(`oidc-provider server_error: ${err.stack || err}\n`));
  server.on('request', provider.callback());
  return { issuer, server, provider };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.generateKeys) {
    const kids = writeJwks(opts.generateKeys);
    process.stdout.write(`${JSON.stringify({ jwks: opts.generateKeys, kids })}\n`);
    return;
  }
  const { issuer, server } = await startProvider(opts);
  const kids = JSON.parse(fs.readFileSync(opts.jwks, 'utf8')).keys.map((k) => k.kid);
  process.stdout.write(`${JSON.stringify({ issuer, kids, pid: process.pid })}\n`);
  // Open keep-alive sockets (kahn's pooled connections) must not hold a stop (or a restart on
  // the same port) up: close them with the listener.
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  main().catch((e) => {
    process.stderr.write(`oidc-provider: ${e.stack || e}\n`);
    process.exit(2);
  });
}

// Single sign-on end to end: headless Chromium (Debian's package, driven by playwright-core)
// signs people in to a real `kahn serve` through a real OpenID provider — panva's
// oidc-provider, started by viewer-tests/oidc-provider.mjs as a child process — using the
// provider's own login and consent pages. Screenshots land in target/viewer-screenshots/sso-*
// (or $KAHN_SCREENSHOTS).
//
// Needs: the kahn binary ($KAHN_BIN, else $CARGO_TARGET_DIR/debug/kahn, else
// target/debug/kahn) and /usr/bin/chromium ($CHROMIUM). Run through scripts/test-sso.sh.
// A missing browser or binary fails the run; nothing is skipped.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { OTHER_CLIENT, writeJwks } from './oidc-provider.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const KAHN = process.env.KAHN_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug', 'kahn');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.KAHN_SCREENSHOTS || path.join(ROOT, 'target', 'viewer-screenshots');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const WAIT = 15000;
const PROVIDER_NAME = 'Acme <ID>';
const SESSION_TTL = 3;
// kahn refetches the provider's keys for an unknown kid at most once per this many seconds.
const JWKS_REFRESH_SECS = 5;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kahn-sso-'));
const DB = `sqlite://${path.join(tmp, 'kahn.db')}`;
const SECRET_FILE = path.join(tmp, 'kahn-client-secret');
fs.writeFileSync(SECRET_FILE, `${crypto.randomBytes(24).toString('base64url')}\n`, { mode: 0o600 });

// ------------------------------------------------------------------ seeding with the CLI

function kahn(...args) {
  return execFileSync(KAHN, args, { encoding: 'utf8', env: { ...process.env, KAHN_LOG: 'warn' } });
}

function provision(name, ...flags) {
  const out = JSON.parse(kahn('tenant', 'provision', name, '--db', DB, '--json', ...flags));
  return { id: out.tenant.id, name, key: out.api_key };
}

function pushRun(id, key, { source = 'ci', labels = {}, steps }) {
  const dir = path.join(tmp, 'runs', id);
  fs.mkdirSync(dir, { recursive: true });
  const start = Date.now() - 3600_000;
  const lines = [JSON.stringify({ kind: 'run', source, labels })];
  steps.forEach(([node, from, to], i) => {
    const t = { ts: new Date(start + i * 7000).toISOString(), node, to };
    if (from) t.from = from;
    lines.push(JSON.stringify(t));
  });
  fs.writeFileSync(path.join(dir, 'transitions.ndjson'), `${lines.join('\n')}\n`);
  fs.writeFileSync(path.join(dir, 'graph.json'), JSON.stringify({ nodes: [...new Set(steps.map((s) => s[0]))], edges: [] }));
  return JSON.parse(kahn('push', dir, '--key', key, '--json', '--db', DB));
}

// ------------------------------------------------------------------ processes

/** A free loopback port (the provider must know kahn's redirect URIs before kahn starts). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Spawns a child and resolves once `ready(stdout)` answers something truthy. */
function startChild(cmd, args, ready, what, env = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${what} did not start in 20 s:\n${out}\n${err}`));
    }, 20000);
    proc.stderr.on('data', (d) => { err += d; });
    proc.stdout.on('data', (d) => {
      out += d;
      const got = ready(out);
      if (got) {
        clearTimeout(timer);
        resolve({ ...got, proc, logs: () => `${out}\n${err}` });
      }
    });
    proc.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited with ${code}:\n${out}\n${err}`));
    });
  });
}

async function stop(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
}

const kahnPorts = {};
let provider;

/** The provider on `port` (0: any) signing with `jwksFile`; every kahn below may sign in. */
function startProvider(port, jwksFile) {
  const args = [path.join(HERE, 'oidc-provider.mjs'), '--port', String(port), '--jwks', jwksFile,
    '--kahn-secret-file', SECRET_FILE];
  for (const p of Object.values(kahnPorts)) args.push('--redirect-uri', `http://127.0.0.1:${p}/auth/callback`);
  return startChild(process.execPath, args, (out) => {
    const line = out.split('\n').find((l) => l.startsWith('{"issuer"'));
    return line ? JSON.parse(line) : null;
  }, 'the OpenID provider');
}

/** `kahn serve` on its pre-chosen port, signing people in through the provider. */
function serve(name, extra = []) {
  const listen = `127.0.0.1:${kahnPorts[name]}`;
  return startChild(KAHN, ['serve', '--db', DB, '--listen', listen,
    '--retention-interval-secs', '0', '--no-personal-tenants', ...extra], (out) => {
    const m = out.match(/serving (http:\/\/127\.0\.0\.1:\d+)/);
    return m ? { url: m[1] } : null;
  }, `kahn serve (${name})`, { KAHN_LOG: 'warn' });
}

const oidcFlags = () => ['--oidc-issuer', provider.issuer, '--oidc-client-id', 'kahn',
  '--oidc-client-secret-file', SECRET_FILE, '--oidc-provider-name', PROVIDER_NAME];

// ------------------------------------------------------------------ an authorization code flow by fetch

/**
 * Signs `login` in at the provider for `client` (the provider's own login and consent forms,
 * posted by fetch with a small cookie jar) and exchanges the code: answers the token response.
 */
async function codeFlowByFetch({ client, secret, redirectUri, login }) {
  const jar = new Map();
  const req = async (url, init = {}) => {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie } });
    for (const c of res.headers.getSetCookie()) {
      const kv = c.split(';')[0];
      const i = kv.indexOf('=');
      jar.set(kv.slice(0, i), kv.slice(i + 1));
    }
    return res;
  };
  const verifier = crypto.randomBytes(32).toString('base64url');
  const state = crypto.randomBytes(8).toString('hex');
  const auth = new URL('/auth', provider.issuer);
  for (const [k, v] of Object.entries({
    client_id: client, redirect_uri: redirectUri, response_type: 'code', scope: 'openid profile email',
    state, nonce: crypto.randomBytes(8).toString('hex'), code_challenge_method: 'S256',
    code_challenge: crypto.createHash('sha256').update(verifier).digest('base64url'),
  })) auth.searchParams.set(k, v);
  let res = await req(auth);
  let code = null;
  for (let i = 0; i < 12 && !code; i++) {
    if (res.status >= 300 && res.status < 400) {
      const loc = new URL(res.headers.get('location'), provider.issuer);
      if (loc.href.startsWith(redirectUri)) {
        assert.equal(loc.searchParams.get('state'), state);
        code = loc.searchParams.get('code');
        break;
      }
      res = await req(loc);
      continue;
    }
    const html = await res.text();
    const action = html.match(/<form[^>]*action="([^"]+)"/);
    const prompt = html.match(/name="prompt" value="([^"]+)"/);
    assert.ok(action && prompt, `the provider answered ${res.status} with no form: ${html.slice(0, 500)}`);
    const body = new URLSearchParams(prompt[1] === 'login' ? { prompt: 'login', login, password: 'any' } : { prompt: prompt[1] });
    res = await req(new URL(action[1].replaceAll('&amp;', '&'), provider.issuer), {
      method: 'POST', body, headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
  }
  assert.ok(code, 'the provider redirected back with a code');
  // A confidential client authenticates with client_secret_basic; a public one names itself.
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  const form = { grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier };
  if (secret) headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(client)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  else form.client_id = client;
  const token = await fetch(new URL('/token', provider.issuer), { method: 'POST', headers, body: new URLSearchParams(form) });
  assert.equal(token.status, 200, await token.clone().text());
  return token.json();
}

const jwtPart = (jwt, i) => JSON.parse(Buffer.from(jwt.split('.')[i], 'base64url').toString('utf8'));

// ------------------------------------------------------------------ browser helpers

let browser;
const servers = {};
const tenants = {};

async function newPage(viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport, reducedMotion: 'reduce' });
  const page = await context.newPage();
  page.requests = [];
  page.problems = [];
  page.dialogs = [];
  page.on('request', (r) => page.requests.push({ method: r.method(), url: r.url(), headers: r.headers() }));
  // Problems on kahn's pages only: the provider's development pages are not under test.
  const onProvider = (url) => Boolean(provider && url && url.startsWith(provider.issuer));
  page.on('pageerror', (e) => {
    if (!onProvider(page.url())) page.problems.push(`pageerror: ${e.message}`);
  });
  page.on('dialog', (d) => {
    page.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text()) && !onProvider(m.location().url || page.url())) {
      page.problems.push(`console: ${m.text()}`);
    }
  });
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  return page;
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `sso-${name}.png`), fullPage: true });
}

const text = (page, sel) => page.locator(sel).first().innerText();

function assertNoProblems(page) {
  assert.deepEqual(page.problems, [], 'no script error or CSP violation');
  assert.deepEqual(page.dialogs, [], 'no dialog opened');
}

/** The provider's own login page, then its consent page, as a person would use them. */
async function atProvider(page, login) {
  await page.waitForURL((u) => u.href.startsWith(provider.issuer), { timeout: WAIT });
  await page.locator('input[name="login"]').waitFor({ timeout: WAIT });
  await page.fill('input[name="login"]', login);
  await page.fill('input[name="password"]', 'correct horse battery staple');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  await page.getByRole('button', { name: 'Continue' }).click({ timeout: WAIT });
}

/**
 * Signs `login` in on the kahn server `base` through the viewer's "Sign in with" link and the
 * provider's pages; answers the callback URL the browser was sent to (code and state).
 */
async function ssoSignIn(page, login, base = servers.main.url, start = '/') {
  let callback = null;
  const onRequest = (r) => {
    if (r.isNavigationRequest() && r.url().startsWith(`${base}/auth/callback`)) callback = r.url();
  };
  page.on('request', onRequest);
  await page.goto(`${base}${start}`);
  const link = page.getByTestId('sso-signin');
  await link.waitFor({ timeout: WAIT });
  await link.click();
  await atProvider(page, login);
  await page.waitForURL((u) => u.origin === base && !u.pathname.startsWith('/auth/'), { timeout: WAIT });
  await page.locator('#identity [data-testid="tenant-source"]').waitFor({ timeout: WAIT });
  page.off('request', onRequest);
  assert.ok(callback, 'the provider sent the browser to kahn\'s /auth/callback');
  return callback;
}

/**
 * Holds the browser's next request to a URL starting with `prefix` — a hop of a redirect
 * chain included, which Playwright's page.route does not see — answering it with a
 * placeholder page instead; resolves with the URL the browser asked for. Chromium's own
 * request interception (DevTools protocol), released once it has held one.
 */
async function holdNext(page, prefix) {
  const cdp = await page.context().newCDPSession(page);
  let resolve;
  let reject;
  const held = new Promise((ok, no) => { resolve = ok; reject = no; });
  const timer = setTimeout(() => reject(new Error(`no request to ${prefix}… within ${WAIT} ms`)), WAIT);
  cdp.on('Fetch.requestPaused', async (e) => {
    await cdp.send('Fetch.fulfillRequest', {
      requestId: e.requestId, responseCode: 200,
      responseHeaders: [{ name: 'Content-Type', value: 'text/plain' }],
      body: Buffer.from('held by the test').toString('base64'),
    });
    await cdp.send('Fetch.disable');
    clearTimeout(timer);
    resolve(e.request.url);
  });
  // (CDP's pattern: `*` any characters, `?` exactly one; a prefix here holds neither.)
  assert.doesNotMatch(prefix, /[*?\\]/);
  await cdp.send('Fetch.enable', { patterns: [{ urlPattern: `${prefix}*`, requestStage: 'Request' }] });
  return held;
}

async function sessionCookie(page, base = servers.main.url) {
  return (await page.context().cookies(base)).find((c) => c.name === 'kahn_session');
}

const whoamiWith = (cookie, base = servers.main.url) =>
  fetch(`${base}/v1/whoami`, { headers: cookie ? { cookie: `kahn_session=${cookie}` } : {} });

/** Every API read went out without an Authorization header: the session cookie signed it. */
function assertSessionReads(page) {
  const reads = page.requests.filter((r) => new URL(r.url).pathname.startsWith('/v1/'));
  assert.ok(reads.length > 0, 'the viewer read the API');
  for (const r of reads) assert.equal(r.headers.authorization, undefined, `${r.url} carries no Authorization`);
}

// ------------------------------------------------------------------ the tests

describe('KAHN single sign-on through a real OpenID provider', () => {
  before(async () => {
    assert.ok(fs.existsSync(KAHN), `the kahn binary is missing at ${KAHN}: run scripts/test-sso.sh`);
    assert.ok(fs.existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: run scripts/ensure-chromium.sh`);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 60000 });

    tenants.alice = provision('alice-home', '--owner-sub', 'alice');
    tenants.acme = provision('acme-team');
    kahn('tenant', 'link-org', 'acme-team', 'acme', '--db', DB);
    tenants.other = provision('other-team');
    pushRun('alice-run-1', tenants.alice.key, { source: 'laptop', steps: [['build', null, 'running'], ['build', 'running', 'succeeded']] });
    pushRun('acme-build-7', tenants.acme.key, { source: 'choco', labels: { branch: 'main' },
      steps: [['plan', null, 'succeeded'], ['build', null, 'running'], ['build', 'running', 'failed']] });
    pushRun('other-nightly-3', tenants.other.key, { source: 'stratt', steps: [['fetch', null, 'running'], ['fetch', 'running', 'succeeded']] });

    for (const name of ['main', 'ttl', 'bearer', 'public']) kahnPorts[name] = await freePort();
    const keys1 = path.join(tmp, 'provider-keys-1.json');
    writeJwks(keys1);
    provider = await startProvider(0, keys1);
    provider.port = new URL(provider.issuer).port;

    servers.main = await serve('main', oidcFlags());
    servers.ttl = await serve('ttl', [...oidcFlags(), '--session-ttl', String(SESSION_TTL)]);
    servers.public = await serve('public', ['--oidc-issuer', provider.issuer, '--oidc-client-id', 'kahn-public']);
    servers.bearer = await serve('bearer', ['--jwt-jwks-url', `${provider.issuer}/jwks`,
      '--jwt-issuer', provider.issuer, '--jwt-audience', 'kahn']);
  });

  after(async () => {
    if (browser) await browser.close();
    for (const s of Object.values(servers)) await stop(s && s.proc);
    await stop(provider && provider.proc);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('the sign-in page offers the provider above the paste box, and says so as text', async () => {
    const cfg = await (await fetch(`${servers.main.url}/auth/config`)).json();
    assert.deepEqual(cfg, { oidc: { name: PROVIDER_NAME, login_url: '/auth/login' } });
    const none = await (await fetch(`${servers.bearer.url}/auth/config`)).json();
    assert.deepEqual(none, { oidc: null });

    const page = await newPage();
    await page.goto(`${servers.main.url}/`);
    const link = page.getByTestId('sso-signin');
    await link.waitFor({ timeout: WAIT });
    assert.equal(await link.innerText(), `Sign in with ${PROVIDER_NAME}`, 'the name is text, not markup');
    assert.equal(await link.getAttribute('href'), '/auth/login');
    assert.equal(await page.locator('[data-empty="signed-out"] id').count(), 0, 'no element from the name');
    assert.ok(await link.evaluate((a) => Boolean(a.compareDocumentPosition(document.querySelector('#token')) & Node.DOCUMENT_POSITION_FOLLOWING)),
      'the link comes before the paste box');
    assert.ok(await page.locator('#token').isVisible(), 'the paste box is still there');
    assert.equal(await page.locator('.problem').count(), 0, 'a first visit is not a problem');
    await shot(page, '01-signin-page');

    // The paste box still works beside single sign-on.
    await page.fill('#token', tenants.other.key);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('tr[data-run="other-nightly-3"]').waitFor({ timeout: WAIT });
    assert.equal(await text(page, '[data-testid="who"]'), 'API key');
    assertNoProblems(page);
    await page.context().close();

    // Without single sign-on the page is what it was: no link, the paste box.
    const plain = await newPage();
    await plain.goto(`${servers.bearer.url}/`);
    await plain.locator('[data-empty="signed-out"]').waitFor({ timeout: WAIT });
    assert.equal(await plain.getByTestId('sso-signin').count(), 0);
    assert.ok(await plain.locator('#token').isVisible());
    assertNoProblems(plain);
    await plain.context().close();
  });

  test('(a) alice signs in at the provider and lands on her personal tenant', async () => {
    const page = await newPage();
    await page.goto(`${servers.main.url}/`);
    await page.getByTestId('sso-signin').click();
    await page.waitForURL((u) => u.href.startsWith(provider.issuer), { timeout: WAIT });
    await page.locator('input[name="login"]').waitFor({ timeout: WAIT });
    await shot(page, '02-provider-login-page');
    const back = page.waitForResponse((r) => r.url().startsWith(`${servers.main.url}/auth/callback`), { timeout: WAIT });
    await atProvider(page, 'alice');
    const callback = await back;
    assert.equal(callback.status(), 303, 'the callback answers 303');
    assert.equal(callback.headers().location, '/', '… to the viewer');
    await page.locator('tr[data-run="alice-run-1"]').waitFor({ timeout: WAIT });
    assert.equal(new URL(page.url()).origin, servers.main.url);
    assert.equal(await text(page, '[data-testid="who"]'), 'Alice Member');
    assert.match(await text(page, '#identity'), /alice@example\.test/);
    assert.match(await text(page, '[data-testid="via"]'), /via Acme <ID>/);
    assert.equal(await text(page, '[data-testid="role"]'), 'member');
    assert.match(await text(page, '[data-testid="tenant"]'), /^alice-home\s*$/);
    assert.match(await text(page, '[data-testid="tenant-source"]'), /personal tenant/);
    assert.equal(await page.locator('tbody tr').count(), 1, 'only her tenant\'s runs');
    assert.equal(await page.locator('#tenant-select').count(), 0, 'a member has no tenant selector');
    const cookie = await sessionCookie(page);
    assert.ok(cookie, 'a kahn_session cookie');
    assert.ok(cookie.httpOnly, 'HttpOnly');
    assert.equal(cookie.sameSite, 'Lax');
    assert.equal(cookie.path, '/');
    assert.equal(cookie.secure, false, 'no Secure flag on a loopback http server');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('kahn.viewer.token')), null, 'nothing kept in storage');
    assert.equal(await page.evaluate(() => document.cookie), '', 'the session is not readable by script');
    const who = await (await whoamiWith(cookie.value)).json();
    assert.equal(who.principal.kind, 'session');
    assert.equal(who.principal.sub, 'alice');
    assert.equal(who.principal.name, 'Alice Member');
    assert.equal(who.tenant_id, tenants.alice.id);
    assertSessionReads(page);
    await shot(page, '03-alice-signed-in');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(b) bob, of organisation acme, lands on the org tenant', async () => {
    const page = await newPage();
    // Opened at a run: after the provider's pages, the viewer comes back to that run.
    await ssoSignIn(page, 'bob', servers.main.url, '/#/runs/acme-build-7');
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    assert.match(page.url(), /#\/runs\/acme-build-7$/);
    assert.equal(await text(page, 'main h1'), 'acme-build-7');
    const who = await (await whoamiWith((await sessionCookie(page)).value)).json();
    assert.deepEqual(who.principal, {
      kind: 'session', sub: 'bob', email: 'bob@acme.example.test', name: 'Bob Builder', role: 'member', org_id: 'acme',
    });
    assert.equal(who.tenant_source, 'org');
    await page.goto(`${servers.main.url}/#/`);
    await page.locator('tr[data-run="acme-build-7"]').waitFor({ timeout: WAIT });
    assert.equal(await text(page, '[data-testid="who"]'), 'Bob Builder');
    assert.match(await text(page, '[data-testid="tenant"]'), /^acme-team\s*$/);
    assert.match(await text(page, '[data-testid="tenant-source"]'), /org_id/);
    assert.equal(await page.locator('tbody tr').count(), 1);
    await page.locator('tr[data-run="acme-build-7"] a').click();
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    assert.equal(await text(page, '[data-testid="run-status"]'), 'failed');
    assertSessionReads(page);
    await shot(page, '04-bob-org-run');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(c) root, an admin, switches tenant and reads another tenant\'s run, read-only', async () => {
    const page = await newPage();
    await ssoSignIn(page, 'root');
    assert.equal(await text(page, '[data-testid="role"]'), 'admin');
    await page.locator('#tenant-select').waitFor({ timeout: WAIT });
    await page.locator('[data-empty="no-tenant"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-tenant"]'), /selector/);
    await page.selectOption('#tenant-select', tenants.other.id);
    await page.locator('tr[data-run="other-nightly-3"]').waitFor({ timeout: WAIT });
    assert.ok(await page.locator('#override').isVisible(), 'the override is shown');
    assert.match(await text(page, '#override'), /Read-only admin view[\s\S]*other-team/);
    assert.match(await text(page, '[data-testid="tenant-source"]'), /admin override, read-only/);
    await page.locator('tr[data-run="other-nightly-3"] a').click();
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    const overridden = page.requests.filter((r) => r.url.endsWith('/v1/runs/other-nightly-3'));
    assert.ok(overridden.length > 0 && overridden.every((r) => r.headers['x-kahn-tenant'] === tenants.other.id),
      'the run is read with X-KAHN-Tenant');
    const writes = page.requests.filter((r) => r.method !== 'GET' && new URL(r.url).origin === servers.main.url);
    assert.deepEqual(writes, [], 'reading as an admin sends only GETs to kahn');
    assertSessionReads(page);
    await shot(page, '05-admin-other-tenant-run');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(d) nobody has no tenant and is told so', async () => {
    const page = await newPage();
    await ssoSignIn(page, 'nobody');
    await page.locator('[data-empty="no-tenant"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-tenant"]'), /--owner-sub nobody/);
    assert.match(await text(page, '[data-testid="tenant-source"]'), /no tenant/);
    await shot(page, '06-nobody-no-tenant');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(e) signing out ends the session: the old cookie value is refused', async () => {
    const page = await newPage();
    await ssoSignIn(page, 'alice');
    await page.locator('tr[data-run="alice-run-1"]').waitFor({ timeout: WAIT });
    const old = (await sessionCookie(page)).value;
    assert.equal((await whoamiWith(old)).status, 200, 'the cookie value signs requests outside the browser too');
    const logout = page.waitForResponse((r) => r.url() === `${servers.main.url}/auth/logout`, { timeout: WAIT });
    await page.getByRole('button', { name: 'Sign out' }).click();
    const res = await logout;
    assert.equal(res.request().method(), 'POST');
    assert.equal(res.status(), 204);
    await page.locator('[data-empty="signed-out"]').waitFor({ timeout: WAIT });
    assert.ok(await page.getByTestId('sso-signin').isVisible(), 'back on the sign-in page');
    assert.equal(await sessionCookie(page), undefined, 'the cookie is cleared');
    const refused = await whoamiWith(old);
    assert.equal(refused.status, 401, 'the old session value is refused');
    await page.reload();
    await page.getByTestId('sso-signin').waitFor({ timeout: WAIT });
    assert.equal(await page.locator('.problem').count(), 0);
    await shot(page, '07-signed-out');
    // The old value planted back in the browser: the server refuses it, and the page says so.
    await page.context().addCookies([{ name: 'kahn_session', value: old, url: servers.main.url, httpOnly: true, sameSite: 'Lax' }]);
    await page.reload();
    await page.locator('[data-empty="signed-out"] .problem').waitFor({ timeout: WAIT });
    assert.match(await text(page, '.problem'), /^Signed out: .*session/);
    assert.equal(await page.locator('#identity [data-testid="tenant-source"]').count(), 0, 'nothing read');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(f) a replayed callback URL is refused', async () => {
    const page = await newPage();
    const callback = await ssoSignIn(page, 'bob');
    assert.match(callback, /[?&]code=/);
    assert.match(callback, /[?&]state=/);
    const again = await page.goto(callback);
    assert.equal(again.status(), 400, 'the same code and state a second time');
    assert.ok(await page.locator('a[href="/"]').count() > 0, 'a link back to the viewer');
    await shot(page, '08-replayed-callback');
    // And from elsewhere, with no cookie at all.
    const bare = await fetch(callback, { redirect: 'manual' });
    assert.equal(bare.status, 400);
    assertNoProblems(page);
    await page.context().close();
  });

  test('(g) a callback with a wrong state, or none, is refused', async () => {
    const page = await newPage();
    // A real sign-in at the provider; the browser's way back to kahn is held and altered,
    // so the code in it is valid and unused.
    const holding = holdNext(page, `${servers.main.url}/auth/callback`);
    await page.goto(`${servers.main.url}/auth/login`);
    await atProvider(page, 'alice');
    const held = await holding;
    assert.match(held, /[?&]code=/, 'the provider sent the browser back with a code');
    const wrong = new URL(held);
    wrong.searchParams.set('state', crypto.randomBytes(16).toString('base64url'));
    let res = await page.goto(wrong.href);
    assert.equal(res.status(), 400, 'a state kahn never issued');
    assert.ok(await page.locator('a[href="/"]').count() > 0);
    await shot(page, '09-wrong-state');
    const none = new URL(held);
    none.searchParams.delete('state');
    res = await page.goto(none.href);
    assert.equal(res.status(), 400, 'no state at all');
    // A state kahn issued to another browser (its kahn_login cookie is not this one's).
    const other = await fetch(`${servers.main.url}/auth/login`, { redirect: 'manual' });
    assert.equal(other.status, 302);
    const foreignState = new URL(other.headers.get('location')).searchParams.get('state');
    const foreign = new URL(held);
    foreign.searchParams.set('state', foreignState);
    res = await page.goto(foreign.href);
    assert.equal(res.status(), 400, 'a state bound to another browser\'s login cookie');
    assert.equal(await sessionCookie(page), undefined, 'no session from any of them');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(h) a provider error is shown as text, its HTML escaped', async () => {
    const page = await newPage();
    // The provider's own error: the person cancels on its login page.
    await page.goto(`${servers.main.url}/`);
    await page.getByTestId('sso-signin').click();
    await page.locator('input[name="login"]').waitFor({ timeout: WAIT });
    const back = page.waitForResponse((r) => r.url().startsWith(`${servers.main.url}/auth/callback`), { timeout: WAIT });
    await page.getByRole('link', { name: /Cancel/ }).click();
    const cancelled = await back;
    assert.equal(cancelled.status(), 400);
    assert.match(new URL(cancelled.url()).search, /error=access_denied/);
    await page.waitForLoadState();
    assert.match(await page.locator('body').innerText(), /access_denied|aborted/i);
    assert.ok(await page.locator('a[href="/"]').count() > 0);
    await shot(page, '10-provider-cancelled');

    // An error whose description carries markup: a state kahn issued to this browser, then
    // the provider-style error redirect with HTML in error_description.
    // (The browser context's own request client: its kahn_login cookie lands in the browser.)
    const login = await page.context().request.get(`${servers.main.url}/auth/login`, { maxRedirects: 0 });
    assert.equal(login.status(), 302);
    const held = login.headers().location;
    assert.ok(held.startsWith(`${provider.issuer}/`), 'kahn sends the browser to the provider');
    const state = new URL(held).searchParams.get('state');
    const evil = '<img src=x id="injected" onerror="alert(1)"><script id="injected-script">alert(2)</script><b id="bold">bold</b>';
    const cb = new URL(`${servers.main.url}/auth/callback`);
    cb.searchParams.set('error', 'access_denied');
    cb.searchParams.set('error_description', evil);
    cb.searchParams.set('state', state);
    const res = await page.goto(cb.href);
    assert.equal(res.status(), 400);
    assert.match(res.headers()['content-type'] || '', /^text\/html/);
    assert.equal(await page.locator('#injected, #injected-script, #bold, img').count(), 0, 'no element injected');
    assert.ok((await page.locator('body').innerText()).includes('<img src=x id="injected"'), 'the description is shown, as text');
    assert.ok(await page.locator('a[href="/"]').count() > 0);
    await shot(page, '11-provider-error-escaped');
    assert.deepEqual(page.dialogs, [], 'no script ran');
    assert.equal(await sessionCookie(page), undefined);
    await page.context().close();
  });

  test('(i) a bearer ID token from the provider: another audience is refused, kahn\'s is accepted', async () => {
    const forOther = await codeFlowByFetch({
      client: OTHER_CLIENT.id, secret: OTHER_CLIENT.secret, redirectUri: OTHER_CLIENT.redirectUri, login: 'alice',
    });
    assert.equal(jwtPart(forOther.id_token, 1).aud, 'other');
    const refused = await fetch(`${servers.bearer.url}/v1/whoami`, { headers: { Authorization: `Bearer ${forOther.id_token}` } });
    assert.equal(refused.status, 401, 'an ID token for client other');

    const forKahn = await codeFlowByFetch({
      client: 'kahn', secret: fs.readFileSync(SECRET_FILE, 'utf8').trim(),
      redirectUri: `http://127.0.0.1:${kahnPorts.bearer}/auth/callback`, login: 'alice',
    });
    const claims = jwtPart(forKahn.id_token, 1);
    assert.equal(claims.aud, 'kahn');
    assert.equal(jwtPart(forKahn.id_token, 0).alg, 'RS256');
    const ok = await fetch(`${servers.bearer.url}/v1/whoami`, { headers: { Authorization: `Bearer ${forKahn.id_token}` } });
    assert.equal(ok.status, 200, await ok.clone().text());
    const who = await ok.json();
    assert.equal(who.principal.kind, 'jwt');
    assert.equal(who.principal.sub, 'alice');
    assert.equal(who.tenant_id, tenants.alice.id);
    // A token whose signature does not verify is refused.
    const tampered = `${forKahn.id_token.slice(0, -4)}AAAA`;
    assert.equal((await fetch(`${servers.bearer.url}/v1/whoami`, { headers: { Authorization: `Bearer ${tampered}` } })).status, 401);
  });

  test('a public client (no secret: PKCE only) with ES256 ID tokens signs people in too', async () => {
    const cfg = await (await fetch(`${servers.public.url}/auth/config`)).json();
    assert.deepEqual(cfg, { oidc: { name: new URL(provider.issuer).hostname, login_url: '/auth/login' } }, 'named after the issuer\'s host name by default');
    const page = await newPage();
    await ssoSignIn(page, 'bob', servers.public.url);
    await page.locator('tr[data-run="acme-build-7"]').waitFor({ timeout: WAIT });
    assert.equal(await text(page, '[data-testid="who"]'), 'Bob Builder');
    // What the provider issues to this client: ES256 ID tokens.
    const issued = await codeFlowByFetch({
      client: 'kahn-public', secret: null, redirectUri: `http://127.0.0.1:${kahnPorts.public}/auth/callback`, login: 'bob',
    });
    assert.equal(jwtPart(issued.id_token, 0).alg, 'ES256');
    assert.match(await text(page, '[data-testid="via"]'), new RegExp(`via ${new URL(provider.issuer).hostname.replaceAll('.', '\\.')}$`));
    assertNoProblems(page);
    await page.context().close();
  });

  test('(j) a session past its lifetime signs the viewer out, saying why', async () => {
    const page = await newPage();
    await ssoSignIn(page, 'alice', servers.ttl.url);
    await page.locator('tr[data-run="alice-run-1"]').waitFor({ timeout: WAIT });
    const cookie = (await sessionCookie(page, servers.ttl.url)).value;
    await page.waitForTimeout((SESSION_TTL + 1) * 1000);
    const expired = await whoamiWith(cookie, servers.ttl.url);
    assert.equal(expired.status, 401);
    assert.match((await expired.json()).message, /session expired/i);
    // The browser dropped the cookie with the session (its Max-Age): the page remembers this
    // tab was signed in, and says why it no longer is.
    await page.reload();
    await page.locator('[data-empty="signed-out"] .problem').waitFor({ timeout: WAIT });
    assert.match(await text(page, '.problem'), /session expired/i);
    assert.ok(await page.getByTestId('sso-signin').isVisible());
    await shot(page, '12-session-expired');
    assertNoProblems(page);
    await page.context().close();
  });

  test('(k) keys rotated at the provider mid-session: the next sign-in works without restarting kahn', async () => {
    const page = await newPage();
    await ssoSignIn(page, 'bob');
    await page.locator('tr[data-run="acme-build-7"]').waitFor({ timeout: WAIT });
    const signedInAt = Date.now();
    const oldKids = (await (await fetch(`${provider.issuer}/jwks`)).json()).keys.map((k) => k.kid);

    // The provider restarts on the same port with new keys only.
    await stop(provider.proc);
    const keys2 = path.join(tmp, 'provider-keys-2.json');
    writeJwks(keys2);
    const issuer = provider.issuer;
    provider = await startProvider(provider.port, keys2);
    assert.equal(provider.issuer, issuer, 'the same issuer');
    provider.port = new URL(provider.issuer).port;
    const newKids = (await (await fetch(`${provider.issuer}/jwks`)).json()).keys.map((k) => k.kid);
    assert.equal(newKids.filter((k) => oldKids.includes(k)).length, 0, 'no old key is left');

    // The session kahn already issued is kahn's own: it still reads.
    await page.reload();
    await page.locator('tr[data-run="acme-build-7"]').waitFor({ timeout: WAIT });

    // kahn refetches the keys for an unknown kid at most once per 5 s: sign in after that.
    const wait = signedInAt + (JWKS_REFRESH_SECS + 1) * 1000 - Date.now();
    if (wait > 0) await page.waitForTimeout(wait);
    const fresh = await newPage();
    await ssoSignIn(fresh, 'alice');
    await fresh.locator('tr[data-run="alice-run-1"]').waitFor({ timeout: WAIT });
    assert.equal(await text(fresh, '[data-testid="who"]'), 'Alice Member');
    await shot(fresh, '13-after-key-rotation');
    // And a bearer ID token signed with the new key, on the JWKS-URL server.
    const forKahn = await codeFlowByFetch({
      client: 'kahn', secret: fs.readFileSync(SECRET_FILE, 'utf8').trim(),
      redirectUri: `http://127.0.0.1:${kahnPorts.bearer}/auth/callback`, login: 'bob',
    });
    assert.ok(newKids.includes(jwtPart(forKahn.id_token, 0).kid), 'signed with a rotated key');
    const ok = await fetch(`${servers.bearer.url}/v1/whoami`, { headers: { Authorization: `Bearer ${forKahn.id_token}` } });
    assert.equal(ok.status, 200, await ok.clone().text());
    assertNoProblems(page);
    assertNoProblems(fresh);
    await page.context().close();
    await fresh.context().close();
  });
});

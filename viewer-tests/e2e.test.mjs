// End-to-end tests of the KAHN history viewer: headless Chromium (Debian's package, driven by
// playwright-core) against a real `kahn serve` over a temporary SQLite database seeded with the
// kahn CLI. Screenshots of every state land in target/viewer-screenshots/ (or
// $KAHN_SCREENSHOTS).
//
// Needs: the kahn binary ($KAHN_BIN, else $CARGO_TARGET_DIR/debug/kahn, else
// target/debug/kahn) and /usr/bin/chromium ($CHROMIUM). Run through scripts/test-viewer.sh.
// A missing browser or binary fails the run; nothing is skipped.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KAHN = process.env.KAHN_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug', 'kahn');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.KAHN_SCREENSHOTS || path.join(ROOT, 'target', 'viewer-screenshots');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const WAIT = 15000;

// ------------------------------------------------------------------ seeding with the CLI

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kahn-viewer-'));
const DB = `sqlite://${path.join(tmp, 'kahn.db')}`;

function kahn(...args) {
  return execFileSync(KAHN, args, { encoding: 'utf8', env: { ...process.env, KAHN_LOG: 'warn' } });
}

function provision(name, ...flags) {
  const out = JSON.parse(kahn('tenant', 'provision', name, '--db', DB, '--json', ...flags));
  return { id: out.tenant.id, key: out.api_key };
}

/** Writes a run directory (transitions.ndjson, graph.json) and returns its path. */
function runDir(id, { source, labels, graph, steps, start = Date.now() - 3600_000 }) {
  const dir = path.join(tmp, 'runs', id);
  fs.mkdirSync(dir, { recursive: true });
  const lines = [JSON.stringify({ kind: 'run', source, labels })];
  steps.forEach(([node, from, to, attrs], i) => {
    const t = { ts: new Date(start + i * 7000).toISOString(), node, to };
    if (from) t.from = from;
    if (attrs) t.attrs = attrs;
    lines.push(JSON.stringify(t));
  });
  fs.writeFileSync(path.join(dir, 'transitions.ndjson'), `${lines.join('\n')}\n`);
  if (graph) fs.writeFileSync(path.join(dir, 'graph.json'), JSON.stringify(graph));
  return dir;
}

function push(dir, key, target) {
  return JSON.parse(kahn('push', dir, '--key', key, '--json', ...target));
}

const DIAMOND = {
  nodes: ['plan', { id: 'build', label: 'build' }, 'test', 'lint', 'deploy'],
  edges: [['plan', 'build'], ['plan', 'lint'], ['build', 'test'], ['test', 'deploy'], ['lint', 'deploy']],
};
const NIGHTLY_STEPS = [
  ['plan', 'pending', 'running'],
  ['plan', 'running', 'succeeded', { duration_ms: 812, planner: 'choco/2.1' }],
  ['build', 'pending', 'running'],
  ['lint', 'pending', 'running'],
  ['lint', 'running', 'succeeded', { warnings: 0 }],
  ['build', 'running', 'succeeded', { artifact: 'app-1.4.2.tar.gz', 'bytes': 1048576, 'é-unicode': 'naïve ☃' }],
  ['test', 'pending', 'running'],
  ['test', 'running', 'failed', { failed: ['auth::login', 'db::migrate'], exit_code: 101, ratio: 0.25 }],
];

/** A ~300-node layered DAG and a 200,000-transition log over it (the perf scenario). */
const BIG_TRANSITIONS = 200000;
function bigRun(id) {
  const layers = 15;
  const width = 20;
  const nodes = [];
  const edges = [];
  for (let l = 0; l < layers; l++) {
    for (let i = 0; i < width; i++) {
      const name = `L${String(l).padStart(2, '0')}-task-${String(i).padStart(2, '0')}`;
      nodes.push(name);
      if (l > 0) {
        edges.push([`L${String(l - 1).padStart(2, '0')}-task-${String(i).padStart(2, '0')}`, name]);
        if (i % 3 === 0) edges.push([`L${String(l - 1).padStart(2, '0')}-task-${String((i + 7) % width).padStart(2, '0')}`, name]);
      }
    }
  }
  const failing = new Set(['L03-task-07', 'L09-task-12']);
  const start = Date.now() - 6 * 3600_000;
  const perNode = Math.floor(BIG_TRANSITIONS / nodes.length);
  const events = [];
  nodes.forEach((name, k) => {
    const l = Math.floor(k / width);
    const t0 = start + l * 20 * 60_000 + (k % width) * 15_000;
    const span = 8 * 60_000 + (k % 7) * 90_000;
    const extra = k < BIG_TRANSITIONS - perNode * nodes.length ? 1 : 0;
    const n = perNode + extra;
    events.push([t0, { node: name, from: 'pending', to: 'running' }]);
    for (let j = 1; j < n - 1; j++) {
      events.push([t0 + Math.floor((span * j) / n), { node: name, from: 'running', to: 'running', attrs: { progress: j } }]);
    }
    events.push([t0 + span, failing.has(name)
      ? { node: name, from: 'running', to: 'failed', attrs: { exit_code: 1, reason: `${name} broke` } }
      : { node: name, from: 'running', to: 'succeeded', attrs: { rows: k * 10 } }]);
  });
  events.sort((a, b) => a[0] - b[0]);
  const dir = path.join(tmp, 'runs', id);
  fs.mkdirSync(dir, { recursive: true });
  const lines = [JSON.stringify({ kind: 'run', source: 'warehouse', labels: { team: 'data' } })];
  for (const [ts, body] of events) lines.push(JSON.stringify({ ts: new Date(ts).toISOString(), ...body }));
  fs.writeFileSync(path.join(dir, 'transitions.ndjson'), `${lines.join('\n')}\n`);
  fs.writeFileSync(path.join(dir, 'graph.json'), JSON.stringify({ nodes, edges }));
  return dir;
}

const LIVE_START = Date.now() - 600_000;
const LIVE_GRAPH = { nodes: ['fetch', 'compile', 'lint', 'test'], edges: [['fetch', 'compile'], ['fetch', 'lint'], ['compile', 'test']] };
const LIVE_STEPS = [
  ['fetch', null, 'running'], ['fetch', 'running', 'succeeded', { files: 12 }],
  ['compile', null, 'running', { target: 'x86_64' }], ['lint', null, 'failed', { exit_code: 2 }],
];

// ------------------------------------------------------------------ JWTs signed here

const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
const PUB_PEM = path.join(tmp, 'idp-ed25519.pub.pem');
fs.writeFileSync(PUB_PEM, publicKey.export({ type: 'spki', format: 'pem' }));

// The server requires both (kahn serve refuses a JWT key without them).
const JWT_ISSUER = 'https://idp.test';
const JWT_AUDIENCE = 'kahn';
const b64url = (buf) => Buffer.from(buf).toString('base64url');
function jwt(claims) {
  const header = b64url(JSON.stringify({ alg: 'EdDSA', typ: 'JWT' }));
  const now = Math.floor(Date.now() / 1000);
  const payload = b64url(JSON.stringify({
    iss: JWT_ISSUER, aud: JWT_AUDIENCE, iat: now, exp: now + 3600, nonce: crypto.randomUUID(), ...claims,
  }));
  const sig = crypto.sign(null, Buffer.from(`${header}.${payload}`), privateKey);
  return `${header}.${payload}.${b64url(sig)}`;
}

// ------------------------------------------------------------------ the server

/** Starts `kahn serve` on an ephemeral port; resolves with `{url, proc}` once it listens. */
function serve(listen = '127.0.0.1:0') {
  return new Promise((resolve, reject) => {
    const proc = spawn(KAHN, ['serve', '--db', DB, '--listen', listen,
      '--jwt-public-key', PUB_PEM, '--jwt-issuer', JWT_ISSUER, '--jwt-audience', JWT_AUDIENCE,
      // The empty states for a person with no tenant at all are under test here; a personal
      // tenant created on first sign-in renders as the provisioned one (scenario "personal
      // tenant"), and its creation is tested in kahn-http's API tests.
      '--retention-interval-secs', '0', '--no-personal-tenants'],
    { env: { ...process.env, KAHN_LOG: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`kahn serve did not start in 20 s:\n${out}\n${err}`)), 20000);
    proc.stderr.on('data', (d) => { err += d; });
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/serving (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1], proc });
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kahn serve exited with ${code}:\n${out}\n${err}`));
    });
  });
}

async function stop(proc) {
  if (!proc || proc.exitCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (proc.exitCode === null) proc.kill('SIGKILL');
}

// ------------------------------------------------------------------ browser helpers

let browser;
let server;
const tenants = {};

/** A fresh page (own session storage) that records every request and every page problem. */
async function newPage(viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport, reducedMotion: 'reduce' });
  const page = await context.newPage();
  page.requests = [];
  page.problems = [];
  page.on('request', (r) => page.requests.push({ method: r.method(), url: r.url() }));
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) page.problems.push(`console: ${m.text()}`);
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
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page, token, base = server.url) {
  await page.goto(`${base}/`);
  await page.locator('[data-empty="signed-out"]').waitFor({ timeout: WAIT });
  await page.fill('#token', token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#identity [data-testid="tenant-source"]').waitFor({ timeout: WAIT });
}

const text = (page, sel) => page.locator(sel).first().innerText();

/** No write action anywhere: only GETs were sent, and nothing in the page posts or uploads. */
async function assertReadOnly(page) {
  const writes = page.requests.filter((r) => r.method !== 'GET');
  assert.deepEqual(writes, [], 'the viewer sent only GET requests');
  const offending = await page.evaluate(() => {
    const bad = [];
    for (const f of document.querySelectorAll('form')) {
      if (f.getAttribute('method') || f.getAttribute('action')) bad.push(`form ${f.outerHTML.slice(0, 80)}`);
    }
    for (const i of document.querySelectorAll('input[type=file], textarea')) bad.push(`input ${i.outerHTML.slice(0, 80)}`);
    for (const el of document.querySelectorAll('button, a, [role=button]')) {
      const t = (el.textContent || '').toLowerCase();
      if (/\b(delete|remove|push|upload|edit|save|revoke|rotate|provision|purge|create)\b/.test(t)) bad.push(`control "${t.trim()}"`);
    }
    return bad;
  });
  assert.deepEqual(offending, [], 'the page offers no write action');
}

function assertNoProblems(page) {
  assert.deepEqual(page.problems, [], 'no script error or CSP violation');
}

// ------------------------------------------------------------------ the tests

describe('KAHN viewer in headless Chromium', () => {
  before(async () => {
    assert.ok(fs.existsSync(KAHN), `the kahn binary is missing at ${KAHN}: run scripts/test-viewer.sh`);
    assert.ok(fs.existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: run scripts/ensure-chromium.sh`);
    // A browser that cannot start fails the run here: nothing is skipped.
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 60000 });

    tenants.choco = provision('choco');
    tenants.team = provision('team-stratt', '--org', 'org-acme');
    tenants.alice = provision('alice', '--owner-sub', 'user-alice');
    tenants.empty = provision('empty-team');
    push(runDir('nightly-41', {
      source: 'choco', labels: { branch: 'main' }, graph: DIAMOND, start: Date.now() - 86400_000,
      steps: [['plan', 'pending', 'running'], ['plan', 'running', 'succeeded'], ['build', 'pending', 'running'],
        ['build', 'running', 'succeeded'], ['lint', 'pending', 'succeeded'], ['test', 'pending', 'succeeded'],
        ['deploy', 'pending', 'running'], ['deploy', 'running', 'succeeded']],
    }), tenants.choco.key, ['--db', DB]);
    push(runDir('nightly-42', {
      source: 'choco', labels: { branch: 'main', commit: '9f3c2ab' }, graph: DIAMOND, steps: NIGHTLY_STEPS,
    }), tenants.choco.key, ['--db', DB]);
    push(runDir('ci-lint-7', {
      source: 'stratt', graph: { nodes: ['lint'], edges: [] }, start: Date.now() - 7200_000,
      steps: [['lint', null, 'running'], ['lint', 'running', 'succeeded']],
    }), tenants.choco.key, ['--db', DB]);
    // RFC 8785 edge cases the page must canonicalise exactly as the server did: key order by
    // UTF-16 code units (RFC 8785 §3.2.3's example), escapes, and ECMAScript number forms.
    push(runDir('jcs-edge', {
      source: 'jcs', start: Date.now() - 5 * 86400_000,
      steps: [['keys', null, 'running', {
        '\u20ac': 'Euro Sign', '\r': 'Carriage Return', '\ufb33': 'Hebrew Letter Dalet With Dagesh', 1: 'One',
        '\ud83d\ude00': 'Emoji: Grinning Face', '\u0080': 'Control', '\u00f6': 'Latin Small Letter O With Diaeresis',
      }], ['numbers', null, 'succeeded', {
        big: 1e21, small: 1e-7, third: 1 / 3, neg: -1.5e-300, max: 9007199254740992, whole: 4.0,
        esc: 'tab\tquote"back\\slash\u0001\u001f\u007f\u2028', nested: [{ z: null, a: [true, false] }],
      }]],
    }), tenants.choco.key, ['--db', DB]);
    push(runDir('release-7', {
      source: 'stratt', labels: { team: 'acme' },
      graph: { nodes: [{ id: 'fetch' }, { id: 'package' }, { id: 'sign' }, { id: 'publish' }],
        edges: [{ from: 'fetch', to: 'package' }, { from: 'package', to: 'sign' }, { from: 'sign', to: 'publish' }] },
      steps: [['fetch', 'pending', 'succeeded'], ['package', 'pending', 'succeeded'], ['sign', 'pending', 'running']],
    }), tenants.team.key, ['--db', DB]);

    // Issue 13's viewer scenarios live in tenants of their own, so the lists above stay as they are.
    tenants.lab = provision('lab-a');
    tenants.labB = provision('lab-b');
    tenants.adminHome = provision('admins-home', '--org', 'org-admins');
    const t0 = Date.now();
    push(bigRun('big-1'), tenants.lab.key, ['--db', DB]);
    console.log(`# seeded big-1 (${BIG_TRANSITIONS} transitions) in ${Date.now() - t0} ms`);
    push(runDir('live-1', { source: 'ci', labels: { repository: 'https://github.com/acme/app' }, graph: LIVE_GRAPH, start: LIVE_START, steps: LIVE_STEPS }),
      tenants.lab.key, ['--db', DB]);
    push(runDir('labelled-1', {
      source: 'ci', start: Date.now() - 9000_000,
      labels: {
        repository: 'https://github.com/acme/app', commit: '9f3c2ab41d0e', docs: 'https://docs.acme.test/runs?id=1',
        evil: 'javascript:alert(1)', ftp: 'ftp://files.acme.test/x', branch: 'main',
      },
      steps: [['build', null, 'running'], ['build', 'running', 'succeeded']],
    }), tenants.lab.key, ['--db', DB]);
    for (const key of [tenants.lab.key, tenants.labB.key]) {
      push(runDir('shared-1', {
        source: 'ci', graph: { nodes: ['one', 'two'], edges: [['one', 'two']] }, start: Date.now() - 8000_000,
        steps: [['one', null, 'running'], ['one', 'running', 'succeeded'], ['two', null, 'succeeded']],
      }), key, ['--db', DB]);
    }
    push(runDir('only-in-b', { source: 'ci', start: Date.now() - 7000_000, steps: [['x', null, 'succeeded']] }),
      tenants.labB.key, ['--db', DB]);

    server = await serve();
  });

  after(async () => {
    if (browser) await browser.close();
    await stop(server && server.proc);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('the page is served with a strict CSP and no external resource', async () => {
    const res = await fetch(`${server.url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/html/);
    assert.match(res.headers.get('content-security-policy'), /default-src 'self'/);
    const page = await newPage();
    await page.goto(`${server.url}/`);
    await page.locator('[data-empty="signed-out"]').waitFor({ timeout: WAIT });
    const origins = new Set(page.requests.map((r) => new URL(r.url).origin));
    assert.deepEqual([...origins], [server.url], 'every request goes to the KAHN server itself');
    await page.context().close();
  });

  test('the API reference at /docs renders this server\'s OpenAPI document, same origin only', async () => {
    const page = await newPage();
    await page.goto(`${server.url}/docs`);
    await page.locator('[data-testid="operation"]').first().waitFor({ timeout: WAIT });
    const ops = await page.locator('[data-testid="operation"] h3').allTextContents();
    for (const want of ['POST /v1/ingest/transitions', 'GET /v1/runs', 'GET /v1/whoami', 'GET /healthz']) {
      assert.ok(ops.some((t) => t.replace(/\s+/g, ' ').includes(want)), `${want} in ${ops.join(' | ')}`);
    }
    assert.ok(ops.some((t) => /GET\s*\/healthz.*public/.test(t)), 'public operations say so');
    assert.ok(await page.locator('#schema-RunView').count() === 1, 'schemas are listed, linked by name');
    const origins = new Set(page.requests.map((r) => new URL(r.url).origin));
    assert.deepEqual([...origins], [server.url], 'no CDN: every request goes to the KAHN server');
    assert.deepEqual(page.problems, [], 'no console error');
    await shot(page, '00-api-docs');
    await page.context().close();
  });

  test('not signed in: says so, and a refused credential is explained', async () => {
    const page = await newPage();
    await page.goto(`${server.url}/`);
    await page.locator('[data-empty="signed-out"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, 'main h2'), /Not signed in/);
    assert.match(await text(page, '#identity'), /Not signed in/);
    await shot(page, '01-signed-out');
    await page.fill('#token', 'kahn_live_sk_not-a-real-key-000000000000000000000000');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('.problem').waitFor({ timeout: WAIT });
    assert.match(await text(page, '.problem'), /refused/);
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused credential is not kept');
    await shot(page, '02-refused-credential');
    assert.ok(!page.requests.some((r) => r.url.includes('kahn_live_sk_')), 'the credential never appears in a URL');
    assertNoProblems(page);
    await page.context().close();
  });

  test('producer key: runs newest first, filters, open a run, graph and verified chain', async () => {
    const page = await newPage();
    await signIn(page, tenants.choco.key);
    assert.equal(await text(page, '[data-testid="who"]'), 'API key');
    assert.equal(await text(page, '[data-testid="role"]'), 'producer key');
    assert.match(await text(page, '#identity'), new RegExp(tenants.choco.id));
    assert.match(await text(page, '[data-testid="tenant"]'), /^choco\s*$/, 'the header names the tenant');
    assert.match(await text(page, '[data-testid="tenant-source"]'), /API key/);
    assert.equal(await page.locator('#tenant-select').count(), 0, 'no tenant selector for a key');
    await page.locator('[data-testid="runs-table"]').waitFor({ timeout: WAIT });
    const ids = await page.locator('tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.run));
    assert.deepEqual(ids, ['nightly-42', 'ci-lint-7', 'nightly-41', 'jcs-edge'], 'newest activity first');
    assert.match(await text(page, 'tr[data-run="nightly-42"]'), /choco[\s\S]*failed[\s\S]*8/);
    await shot(page, '03-runs-producer-key');

    // Filters by source and by status.
    await page.fill('#f-source', 'stratt');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.waitForFunction(() => document.querySelectorAll('tbody tr').length === 1);
    assert.equal(await page.locator('tbody tr').first().getAttribute('data-run'), 'ci-lint-7');
    await page.goto(`${server.url}/#/?status=nonexistent`);
    await page.locator('[data-empty="no-match"]').waitFor({ timeout: WAIT });
    await shot(page, '04-runs-no-match');
    await page.getByRole('link', { name: 'Clear the filters' }).click();
    await page.locator('tr[data-run="nightly-42"]').waitFor({ timeout: WAIT });

    // Keyboard: tab to the run's link and open it with Enter.
    let onLink = false;
    for (let i = 0; i < 40 && !onLink; i++) {
      await page.keyboard.press('Tab');
      onLink = await page.evaluate(() => document.activeElement?.getAttribute('href') === '#/runs/nightly-42');
    }
    assert.ok(onLink, 'the run link is reachable with Tab');
    await page.keyboard.press('Enter');
    await page.locator('[data-testid="graph"] svg.dag').waitFor({ timeout: WAIT });

    assert.equal(await text(page, 'main h1'), 'nightly-42');
    assert.equal(await text(page, '[data-testid="run-status"]'), 'failed');
    const nodes = await page.locator('svg.dag g.node').evaluateAll((gs) =>
      Object.fromEntries(gs.map((g) => [g.dataset.node, g.dataset.state])));
    assert.deepEqual(nodes, { plan: 'succeeded', build: 'succeeded', lint: 'succeeded', test: 'failed', deploy: 'none' });
    assert.equal(await page.locator('svg.dag path.edge').count(), 5);
    // Layered: plan above build above test above deploy.
    const ys = await page.locator('svg.dag g.node').evaluateAll((gs) =>
      Object.fromEntries(gs.map((g) => [g.dataset.node, g.transform.baseVal[0].matrix.f])));
    assert.ok(ys.plan < ys.build && ys.build < ys.test && ys.test < ys.deploy, JSON.stringify(ys));

    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    assert.match(await text(page, '[data-testid="verify"]'), /Verified: this page recomputed 8 content hashes/);
    const api = await (await fetch(`${server.url}/v1/runs/nightly-42`, { headers: { Authorization: `Bearer ${tenants.choco.key}` } })).json();
    assert.equal(await text(page, '[data-testid="head-hash"]'), api.head_hash);

    // The timeline: every transition, attrs expandable.
    assert.equal(await page.locator('[data-testid="timeline"] li').count(), 8);
    const last = page.locator('li.step[data-seq="7"]');
    assert.match(await last.innerText(), /#7[\s\S]*test[\s\S]*running[\s\S]*failed/);
    await last.locator('summary').click();
    assert.match(await last.locator('pre').innerText(), /auth::login/);
    await shot(page, '05-run-page');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SHOTS, 'viewer-run.png') });

    // The page's RFC 8785 agrees with the server's on the awkward cases too.
    await page.goto(`${server.url}/#/runs/jcs-edge`);
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    // And the mark is earned: a body altered on the way in is caught at its seq.
    const tampered = '**/v1/runs/nightly-41/transitions*';
    await page.route(tampered, async (route) => {
      const res = await route.fetch();
      const json = await res.json();
      json.transitions[3].body.to = 'failed';
      await route.fulfill({ response: res, json });
    });
    await page.goto(`${server.url}/#/runs/nightly-41`);
    await page.waitForSelector('[data-testid="verify"][data-verified="false"]', { timeout: WAIT });
    assert.match(await text(page, '[data-testid="verify"]'), /Not verified: seq 3: the body hashes to/);
    await shot(page, '05b-run-not-verified');
    await page.unroute(tampered);
    await page.goto(`${server.url}/#/runs/nightly-42`);
    await page.locator('svg.dag g.node[data-node="build"]').waitFor({ timeout: WAIT });

    // A node chosen in the graph (with the keyboard) filters the timeline to it.
    await page.locator('svg.dag g.node[data-node="build"]').focus();
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="timeline"] li').length === 2);
    assert.equal(await page.inputValue('#node-filter'), 'build');
    await assertReadOnly(page);
    assertNoProblems(page);
    await page.context().close();
  });

  test('a pushed run appears on its own within seconds', async () => {
    const page = await newPage();
    await signIn(page, tenants.choco.key);
    await page.locator('[data-testid="runs-table"]').waitFor({ timeout: WAIT });
    assert.equal(await page.locator('tr[data-run="hotfix-1"]').count(), 0);
    push(runDir('hotfix-1', { source: 'choco', start: Date.now() - 1000, steps: [['patch', 'pending', 'running']] }),
      tenants.choco.key, ['--url', server.url]);
    await page.locator('tr[data-run="hotfix-1"]').waitFor({ timeout: 12000 });
    assert.equal(await page.locator('tbody tr').first().getAttribute('data-run'), 'hotfix-1');
    // A run without graph.json says so.
    await page.getByRole('link', { name: 'hotfix-1' }).click();
    await page.locator('[data-empty="no-graph"]').waitFor({ timeout: WAIT });
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    await shot(page, '06-run-without-graph');
    assertNoProblems(page);
    await page.context().close();
  });

  test('paging walks every run', async () => {
    const page = await newPage();
    await signIn(page, tenants.choco.key);
    // Page size is 25 in the viewer; 28 more runs make two pages.
    const batch = [];
    for (let i = 0; i < 26; i++) {
      batch.push(runDir(`bulk-${String(i).padStart(2, '0')}`, { source: 'bulk', start: Date.now() - 600_000 - i * 1000, steps: [['x', null, 'succeeded']] }));
    }
    for (const dir of batch) push(dir, tenants.choco.key, ['--url', server.url]);
    await page.reload();
    await page.locator('[data-testid="runs-table"]').waitFor({ timeout: WAIT });
    await page.waitForFunction(() => document.querySelectorAll('tbody tr').length === 25, null, { timeout: WAIT });
    const first = await page.locator('tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.run));
    await page.getByRole('button', { name: 'Older →' }).click();
    await page.getByRole('button', { name: '← Newer' }).waitFor({ timeout: WAIT });
    const second = await page.locator('tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.run));
    assert.equal(first.length + second.length, 31, 'every run, once');
    assert.equal(new Set([...first, ...second]).size, 31);
    await page.getByRole('button', { name: '← Newer' }).click();
    await page.waitForFunction(() => document.querySelectorAll('tbody tr').length === 25);
    await page.context().close();
  });

  test('non-admin JWT: org tenant, no selector, readable at 400 px', async () => {
    const page = await newPage({ width: 400, height: 800 });
    await signIn(page, jwt({ sub: 'user-bob', email: 'bob@acme.test', name: 'Bob', role: 'member', org_id: 'org-acme' }));
    assert.equal(await text(page, '[data-testid="who"]'), 'Bob');
    assert.equal(await text(page, '[data-testid="role"]'), 'member');
    assert.match(await text(page, '[data-testid="tenant-source"]'), /org_id/);
    await page.locator('tr[data-run="release-7"]').waitFor({ timeout: WAIT });
    assert.equal(await page.locator('tbody tr').count(), 1, 'only the org tenant\'s runs');
    assert.equal(await page.locator('#tenant-select').count(), 0, 'a non-admin never sees the selector');
    assert.equal(await page.locator('.admin-select').count(), 0);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `no horizontal scrolling at 400 px (overflow ${overflow})`);
    await shot(page, '07-runs-member-jwt-400px');
    await page.locator('tr[data-run="release-7"] a').click();
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    const overflowRun = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflowRun <= 1, `run page fits 400 px (overflow ${overflowRun})`);
    await shot(page, '08-run-member-jwt-400px');
    // The override header is ignored for a non-admin: another tenant's run stays invisible.
    await page.goto(`${server.url}/#/runs/nightly-42`);
    await page.locator('[data-empty="run-not-found"]').waitFor({ timeout: WAIT });
    await assertReadOnly(page);
    assertNoProblems(page);
    await page.context().close();
  });

  test('personal tenant: empty, and says the data lives in an org tenant', async () => {
    const page = await newPage();
    await signIn(page, jwt({ sub: 'user-alice', email: 'alice@acme.test', role: 'member' }));
    await page.locator('[data-empty="personal-tenant"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-testid="tenant-source"]'), /personal tenant/);
    assert.match(await text(page, '[data-empty="personal-tenant"]'), /org_id/);
    await shot(page, '09-empty-personal-tenant');
    assertNoProblems(page);
    await page.context().close();
  });

  test('no tenant at all, and a tenant with no runs', async () => {
    const page = await newPage();
    await signIn(page, jwt({ sub: 'user-dave', role: 'member', org_id: 'org-unlinked' }));
    await page.locator('[data-empty="no-tenant"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-tenant"]'), /link-org/);
    await shot(page, '10-empty-no-tenant');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('[data-empty="signed-out"]').waitFor({ timeout: WAIT });
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'sign out forgets the credential');
    await signIn(page, tenants.empty.key);
    await page.locator('[data-empty="no-runs"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-runs"]'), /kahn push/);
    await shot(page, '11-empty-tenant');
    assertNoProblems(page);
    await page.context().close();
  });

  test('admin JWT: tenant selector, switch tenant read-only, no write action', async () => {
    const page = await newPage();
    await signIn(page, jwt({ sub: 'admin-carol', email: 'carol@kahn.test', name: 'Carol', role: 'admin' }));
    assert.equal(await text(page, '[data-testid="role"]'), 'admin');
    await page.locator('#tenant-select').waitFor({ timeout: WAIT });
    assert.match(await text(page, '.admin-select'), /read-only/);
    // Carol owns no tenant: the truthful empty state points at the selector.
    await page.locator('[data-empty="no-tenant"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-tenant"]'), /selector/);
    const options = await page.locator('#tenant-select option').allInnerTexts();
    assert.ok(options.some((o) => o.startsWith('choco')) && options.some((o) => o.startsWith('team-stratt')), options.join('|'));

    await page.selectOption('#tenant-select', tenants.team.id);
    await page.locator('tr[data-run="release-7"]').waitFor({ timeout: WAIT });
    assert.equal(await page.locator('tbody tr').count(), 1);
    assert.ok(await page.locator('#override').isVisible(), 'the override is visible');
    assert.match(await text(page, '#override'), /Read-only admin view[\s\S]*team-stratt/);
    assert.match(await text(page, '[data-testid="tenant-source"]'), /admin override, read-only/);
    await shot(page, '12-admin-team-stratt');

    await page.selectOption('#tenant-select', tenants.choco.id);
    await page.locator('tr[data-run="hotfix-1"]').waitFor({ timeout: WAIT });
    await page.fill('#f-source', 'choco');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.locator('tr[data-run="nightly-42"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '#override'), /choco/);
    const sent = page.requests.filter((r) => r.url.includes('/v1/runs'));
    assert.ok(sent.length > 0);
    await page.locator('tr[data-run="nightly-42"] a').click();
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    assert.ok(await page.locator('#override').isVisible(), 'still visible on the run page');
    await shot(page, '13-admin-run-page');
    await assertReadOnly(page);

    // Back to no override.
    await page.getByRole('button', { name: 'Back to my tenant' }).click();
    await page.locator('[data-empty="no-tenant"]').waitFor({ timeout: WAIT });
    assert.ok(!(await page.locator('#override').isVisible()));
    await assertReadOnly(page);
    assertNoProblems(page);
    await page.context().close();
  });

  test('run page: Gantt from the node summaries, failed first, details on hover and on keyboard focus', async () => {
    const page = await newPage();
    await signIn(page, tenants.choco.key);
    await page.goto(`${server.url}/#/runs/nightly-42`);
    await page.locator('[data-testid="gantt"] .gantt-row').first().waitFor({ timeout: WAIT });
    const order = await page.locator('.gantt-row').evaluateAll((rs) => rs.map((r) => [r.dataset.node, r.dataset.class]));
    assert.deepEqual(order[0], ['test', 'failed'], `failed nodes first: ${JSON.stringify(order)}`);
    assert.equal(order.length, 4, 'one bar per node with a transition');
    // Bars sit on the run's time axis: plan starts at the left edge, test ends at the right.
    const geo = await page.locator('.gantt-row').evaluateAll((rs) => Object.fromEntries(rs.map((r) => {
      const t = r.querySelector('.track').getBoundingClientRect();
      const b = r.querySelector('.bar').getBoundingClientRect();
      return [r.dataset.node, [(b.left - t.left) / t.width, (b.right - t.left) / t.width]];
    })));
    assert.ok(geo.plan[0] < 0.02, JSON.stringify(geo));
    assert.ok(geo.test[1] > 0.98, JSON.stringify(geo));
    assert.ok(geo.build[0] > geo.plan[1] - 0.01, 'build starts after plan ends');
    // Hover: state, start, duration, attempts, then the latest transition's attrs, fetched lazily.
    const before = page.requests.filter((r) => r.url.includes('/transitions')).length;
    await page.locator('.gantt-row[data-node="test"] .bar').hover();
    await page.locator('.gantt-tip pre[data-loaded="true"]').waitFor({ timeout: WAIT });
    const tip = await text(page, '.gantt-tip');
    assert.match(tip, /test[\s\S]*failed[\s\S]*start[\s\S]*duration[\s\S]*7\.0 s[\s\S]*attempts\s*1/);
    assert.match(tip, /auth::login/);
    const lazy = page.requests.filter((r) => r.url.includes('/transitions')).slice(before);
    assert.equal(lazy.length, 1, 'one request for the hovered node');
    assert.match(lazy[0].url, /after_seq=6&limit=1/);
    await shot(page, '15-gantt-hover');
    // Keyboard focus shows the same, for another node.
    await page.mouse.move(0, 0);
    await page.locator('.gantt-row[data-node="build"] .bar').focus();
    await page.waitForFunction(() => document.querySelector('.gantt-tip')?.dataset.node === 'build'
      && /app-1\.4\.2/.test(document.querySelector('.gantt-tip pre').textContent), null, { timeout: WAIT });
    assert.ok(await page.locator('.gantt-tip').isVisible());
    await page.keyboard.press('Escape');
    assert.ok(!(await page.locator('.gantt-tip').isVisible()), 'Escape closes the details');
    // Enter on a bar shows that node's transitions.
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="timeline"] li').length === 2);
    assert.equal(await page.inputValue('#node-filter'), 'build');
    await page.selectOption('#node-filter', '');
    // The hash-chain panel comes after the graph, the transitions after both.
    const order2 = await page.evaluate(() => ['[data-testid="gantt"]', '[data-testid="graph"]', '.integrity', '.steps']
      .map((q) => document.querySelector(q)).every((el, i, all) => i === 0
        || Boolean(all[i - 1].compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING)));
    assert.ok(order2, 'Gantt, graph, hash chain, transitions, in that order');
    assert.match(await text(page, '[data-testid="transition-count"]'), /showing 8 of 8/);
    assertNoProblems(page);
    await page.context().close();
  });

  test('a 200,000-transition run paints from the node summary (time measured, not asserted)', async () => {
    const page = await newPage();
    await signIn(page, tenants.lab.key);
    const t0 = Date.now();
    await page.goto(`${server.url}/#/runs/big-1`);
    await page.locator('[data-testid="gantt"] .gantt-row').first().waitFor({ state: 'visible', timeout: 60000 });
    const ganttMs = Date.now() - t0;
    await page.locator('svg.dag g.node').first().waitFor({ timeout: 60000 });
    const graphMs = Date.now() - t0;
    await page.waitForFunction(() => /showing 1000 of 200000/.test(document.querySelector('[data-testid="transition-count"]')?.textContent || ''), null, { timeout: 60000 });
    const listMs = Date.now() - t0;
    const perf = { run: 'big-1', transitions: BIG_TRANSITIONS, nodes: 300, navigation_to_gantt_visible_ms: ganttMs,
      navigation_to_graph_ms: graphMs, navigation_to_first_transition_page_ms: listMs };
    fs.mkdirSync(SHOTS, { recursive: true });
    fs.writeFileSync(path.join(SHOTS, 'perf.json'), `${JSON.stringify(perf, null, 2)}\n`);
    console.log(`# perf: ${JSON.stringify(perf)}`);
    assert.equal(await page.locator('.gantt-row').count(), 300);
    const first = await page.locator('.gantt-row').evaluateAll((rs) => rs.slice(0, 2).map((r) => r.dataset.class));
    assert.deepEqual(first, ['failed', 'failed'], 'the two failed nodes head the Gantt');
    assert.equal(await page.locator('svg.dag g.node').count(), 300);
    assert.equal(await text(page, '[data-testid="run-status"]'), 'failed');
    // Only the first page of transitions was fetched; the rest comes on demand.
    const pages = page.requests.filter((r) => /\/transitions\?/.test(r.url));
    assert.equal(pages.length, 1, pages.map((r) => r.url).join(' '));
    assert.equal(await page.locator('[data-testid="timeline"] li').count(), 1000);
    assert.match(await text(page, '[data-testid="verify"]'), /Not verified in the page yet[\s\S]*1000 of 200000/);
    await shot(page, '16-big-run');
    await page.getByTestId('load-more').click();
    await page.waitForFunction(() => /showing 2000 of 200000/.test(document.querySelector('[data-testid="transition-count"]').textContent), null, { timeout: WAIT });
    assert.match(page.requests.filter((r) => /\/transitions\?/.test(r.url)).pop().url, /after_seq=999&limit=1000/);
    // A 300-node DAG is readable: it starts at actual size in a pannable box, and zooms.
    // It opens scrolled to the first failed node.
    assert.ok(await page.getByTestId('graph-scroll').evaluate((el) => {
      const g = el.querySelector('g.node[data-state="failed"]').getBoundingClientRect();
      const b = el.getBoundingClientRect();
      return g.top >= b.top && g.bottom <= b.bottom && g.left >= b.left && g.right <= b.right;
    }), 'the first failed node is in view');
    const w0 = Number(await page.locator('svg.dag').getAttribute('width'));
    await page.getByTestId('zoom-out').click();
    const w1 = Number(await page.locator('svg.dag').getAttribute('width'));
    assert.ok(w1 < w0, `zoom out shrinks (${w0} → ${w1})`);
    await page.getByTestId('zoom-in').click();
    await page.getByTestId('zoom-in').click();
    assert.ok(Number(await page.locator('svg.dag').getAttribute('width')) > w0, 'zoom in grows');
    const scroll = page.getByTestId('graph-scroll');
    const box = await scroll.boundingBox();
    await scroll.evaluate((el) => { el.scrollLeft = 0; el.scrollTop = 0; });
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width / 2 - 200, box.y + box.height / 2 - 100, { steps: 4 });
    await page.mouse.up();
    assert.ok(await scroll.evaluate((el) => el.scrollLeft > 0 || el.scrollTop > 0), 'dragging pans the graph');
    await page.locator('[data-testid="graph"]').screenshot({ path: path.join(SHOTS, '17-big-graph.png') });
    assertNoProblems(page);
    await page.context().close();
  });

  test('a live run updates in place: new rows, moved bars, scroll and expansion kept', async () => {
    const page = await newPage({ width: 1280, height: 600 });
    await signIn(page, tenants.lab.key);
    await page.goto(`${server.url}/#/runs/live-1`);
    await page.locator('li.step[data-seq="3"]').waitFor({ timeout: WAIT });
    assert.ok(await page.getByTestId('live').isVisible(), 'a live indicator');
    assert.equal(await text(page, '[data-testid="run-status"]'), 'running · 1 failed');
    assert.match(await page.locator('.gantt-row[data-node="lint"] .track').getAttribute('data-empty'), /never ran · failed/,
      'a node that never became active has no invented bar');
    // The user expands a row and scrolls; the page marks its elements to prove they survive.
    await page.locator('li.step[data-seq="1"] summary').click();
    await page.evaluate(() => {
      document.querySelector('.gantt-row[data-node="compile"]').dataset.mark = 'kept';
      document.querySelector('svg.dag')?.setAttribute('data-mark', 'kept');
      document.querySelector('[data-testid="timeline"]').dataset.mark = 'kept';
    });
    await page.evaluate(() => window.scrollTo(0, 400));
    assert.ok(await page.evaluate(() => window.scrollY) > 100, 'the page scrolled');
    // What the user looks at stays where it is on screen (rows added above move the scroll
    // offset by exactly their height: the browser's scroll anchoring, not a jump to the top).
    const anchor = () => page.locator('li.step[data-seq="1"]').evaluate((el) => el.getBoundingClientRect().top);
    const top0 = await anchor();
    push(runDir('live-1', { source: 'ci', labels: { repository: 'https://github.com/acme/app' }, graph: LIVE_GRAPH, start: LIVE_START,
      steps: [...LIVE_STEPS, ['compile', 'running', 'running', { progress: 50 }], ['test', null, 'running']] }),
    tenants.lab.key, ['--url', server.url]);
    await page.locator('li.step[data-seq="5"]').waitFor({ timeout: 12000 });
    await page.locator('.gantt-row[data-node="test"]').waitFor({ timeout: WAIT });
    assert.ok(Math.abs((await anchor()) - top0) <= 2, `the expanded row stays put on screen (${top0} → ${await anchor()})`);
    assert.ok(await page.evaluate(() => window.scrollY) > 100, 'not scrolled back to the top');
    assert.ok(await page.locator('li.step[data-seq="1"] details').evaluate((d) => d.open), 'the expanded row stays expanded');
    assert.equal(await page.locator('.gantt-row[data-node="compile"]').getAttribute('data-mark'), 'kept', 'bars are updated, not redrawn');
    assert.equal(await page.locator('[data-testid="timeline"]').getAttribute('data-mark'), 'kept', 'rows are appended, not redrawn');
    assert.match(await text(page, '[data-testid="transition-count"]'), /showing 6 of 6/);
    await shot(page, '18-live-run');
    // A hidden tab does not poll; it catches up as soon as it is visible again.
    const setHidden = (hidden) => page.evaluate((v) => {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => v });
      document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
    const runPolls = () => page.requests.filter((r) => r.url.endsWith('/v1/runs/live-1')).length;
    await setHidden(true);
    await page.waitForTimeout(500);
    const hiddenAt = runPolls();
    await page.waitForTimeout(4000);
    assert.equal(runPolls(), hiddenAt, 'no polling while the page is hidden');
    await setHidden(false);
    for (let i = 0; i < 20 && runPolls() === hiddenAt; i++) await page.waitForTimeout(100);
    assert.ok(runPolls() > hiddenAt, 'visible again: it polls at once');
    // The run ends: the status follows and polling stops.
    push(runDir('live-1', { source: 'ci', labels: { repository: 'https://github.com/acme/app' }, graph: LIVE_GRAPH, start: LIVE_START,
      steps: [...LIVE_STEPS, ['compile', 'running', 'running', { progress: 50 }], ['test', null, 'running'],
        ['compile', 'running', 'succeeded'], ['test', 'running', 'succeeded']] }),
    tenants.lab.key, ['--url', server.url]);
    await page.waitForFunction(() => document.querySelector('[data-testid="run-status"]').textContent === 'failed', null, { timeout: 12000 });
    await page.getByTestId('live').waitFor({ state: 'hidden', timeout: WAIT });
    assert.equal(await page.locator('.gantt-row[data-node="compile"]').getAttribute('data-class'), 'succeeded');
    assert.equal(await page.locator('svg.dag g.node[data-node="compile"]').getAttribute('data-state'), 'succeeded', 'the graph is recoloured');
    assert.equal(await page.locator('svg.dag').getAttribute('data-mark'), 'kept', 'the graph is not redrawn');
    const polls = page.requests.filter((r) => r.url.endsWith('/v1/runs/live-1')).length;
    await page.waitForTimeout(4000);
    assert.equal(page.requests.filter((r) => r.url.endsWith('/v1/runs/live-1')).length, polls, 'a terminal run is not polled');
    assertNoProblems(page);
    await page.context().close();
  });

  test('list: label links, commit links, run id search, sort of the loaded page, failed counts, durations', async () => {
    const page = await newPage();
    await signIn(page, tenants.lab.key);
    await page.locator('tr[data-run="labelled-1"]').waitFor({ timeout: WAIT });
    const row = page.locator('tr[data-run="labelled-1"]');
    assert.equal(await row.locator('a[href="https://github.com/acme/app/commit/9f3c2ab41d0e"]').count(), 1, 'commit → repository/commit/sha');
    assert.equal(await row.locator('a[href="https://docs.acme.test/runs?id=1"]').count(), 1, 'an https label is a link');
    assert.equal(await row.locator('a[href="https://github.com/acme/app"]').count(), 1);
    for (const k of ['evil', 'ftp', 'branch']) {
      assert.equal(await row.locator(`li[data-label="${k}"] a`).count(), 0, `${k} stays text`);
    }
    assert.match(await row.locator('li[data-label="evil"]').innerText(), /javascript:alert\(1\)/);
    assert.match(await text(page, 'tr[data-run="live-1"] [data-testid="status-cell"]'), /running · 1 failed|failed/);
    assert.match(await text(page, 'tr[data-run="labelled-1"] td[data-label="Duration"]'), /7\.0 s/);
    await shot(page, '19-list-labels');
    // Sort the loaded rows: the UI says it sorts this page only.
    assert.match(await text(page, '.filters .sort'), /sorts the rows loaded on this page/);
    await page.selectOption('#f-sort', 'duration');
    await page.locator('.runs-body[data-sort="duration"]').waitFor({ timeout: WAIT });
    // The redraw follows the hash change: wait for the sorted table, then read it.
    await page.waitForFunction(() => {
      const v = [...document.querySelectorAll('tbody td[data-label="Duration"]')].map((t) => Number(t.dataset.ms || -1));
      return v.length > 1 && v.every((x, i) => i === 0 || v[i - 1] >= x);
    }, null, { timeout: WAIT });
    const ms = await page.locator('tbody td[data-label="Duration"]').evaluateAll((tds) => tds.map((t) => Number(t.dataset.ms || -1)));
    assert.equal(ms[0], Math.max(...ms), `longest first: ${ms}`);
    assert.equal(await page.locator('#f-sort').inputValue(), 'duration', 'the choice is kept across the redraw');
    await page.selectOption('#f-sort', 'failed');
    await page.locator('.runs-body[data-sort="failed"]').waitFor({ timeout: WAIT });
    await page.waitForFunction(() => document.querySelector('tbody tr')?.dataset.class === 'failed', null, { timeout: WAIT });
    // Search by run id prefix, on the server.
    await page.fill('#f-prefix', 'big');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.waitForFunction(() => [...document.querySelectorAll('tbody tr')].map((r) => r.dataset.run).join() === 'big-1', null, { timeout: WAIT });
    assert.ok(page.requests.some((r) => r.url.includes('run_id_prefix=big')), 'the search is the API\'s run_id_prefix');
    await shot(page, '20-list-search');
    await page.fill('#f-prefix', 'zzz');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.locator('[data-empty="no-match"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-match"]'), /starting with “zzz”/);
    // A prefix the server refuses is explained next to the filters, which stay usable.
    await page.fill('#f-prefix', 'a b');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.getByTestId('filter-problem').waitFor({ timeout: WAIT });
    assert.ok(await page.locator('#f-prefix').isVisible());
    // On the run page the labels link too.
    await page.goto(`${server.url}/#/runs/labelled-1`);
    await page.locator('.facts a[href="https://github.com/acme/app/commit/9f3c2ab41d0e"]').waitFor({ timeout: WAIT });
    await assertReadOnly(page);
    assertNoProblems(page);
    await page.context().close();
  });

  test('admin with an empty own tenant: pointed at the selector; a tenant switch repaints the same run or says why not', async () => {
    const page = await newPage();
    await signIn(page, jwt({ sub: 'admin-erin', name: 'Erin', role: 'admin', org_id: 'org-admins' }));
    await page.locator('[data-empty="no-runs"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-empty="no-runs"]'), /administrator[\s\S]*selector/);
    await shot(page, '21-admin-empty-own-tenant');
    await page.selectOption('#tenant-select', tenants.lab.id);
    await page.locator('tr[data-run="shared-1"]').waitFor({ timeout: WAIT });
    await page.locator('tr[data-run="shared-1"] a').click();
    await page.waitForSelector('[data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    // The same run id exists in lab-b: the run page is painted again, in that tenant.
    await page.selectOption('#tenant-select', tenants.labB.id);
    await page.waitForFunction(() => /lab-b/.test(document.querySelector('#override')?.textContent || ''), null, { timeout: WAIT });
    await page.waitForSelector('article.run-view[data-run="shared-1"] [data-testid="verify"][data-verified="true"]', { timeout: WAIT });
    assert.match(page.url(), /#\/runs\/shared-1$/);
    const head = await (await fetch(`${server.url}/v1/runs/shared-1`, { headers: { Authorization: `Bearer ${tenants.labB.key}` } })).json();
    assert.equal(await text(page, '[data-testid="head-hash"]'), head.head_hash, 'lab-b\'s copy of the run');
    // choco has no such run: its list, with a one-line note.
    await page.selectOption('#tenant-select', tenants.choco.id);
    await page.locator('[data-testid="note"]').waitFor({ timeout: WAIT });
    assert.match(await text(page, '[data-testid="note"]'), /shared-1[\s\S]*not in tenant choco/);
    await page.locator('[data-testid="runs-table"] tbody tr').first().waitFor({ timeout: WAIT });
    assert.match(await text(page, '#override'), /choco/);
    await shot(page, '22-admin-switch-note');
    await assertReadOnly(page);
    assertNoProblems(page);
    await page.context().close();
  });

  test('server unreachable: says so, and recovers when it is back', async () => {
    const own = await serve();
    let again = null;
    const page = await newPage();
    try {
      await signIn(page, tenants.choco.key, own.url);
      await page.locator('[data-testid="runs-table"]').waitFor({ timeout: WAIT });
      await stop(own.proc);
      await page.locator('[data-empty="unreachable"]').waitFor({ timeout: 15000 });
      assert.match(await text(page, '[data-empty="unreachable"]'), /unreachable/);
      await shot(page, '14-server-unreachable');
      assert.ok(await page.evaluate(() => Boolean(sessionStorage.getItem('kahn.viewer.token'))),
        'the credential is kept: the server, not the key, is the problem');
      // The same server comes back on the same port: the page notices on its own.
      again = await serve(new URL(own.url).host);
      await page.locator('[data-testid="runs-table"]').waitFor({ timeout: 15000 });
    } finally {
      await stop(own.proc);
      await stop(again && again.proc);
      await page.context().close();
    }
  });
});

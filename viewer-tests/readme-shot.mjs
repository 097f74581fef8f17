// The README's viewer screenshot, made the way a new user gets there: the README's first-run
// steps (a tenant, `kahn push examples/runs/nightly-42` and `examples/runs/deploy-1187`) into a
// fresh SQLite file, `kahn serve`, sign in with the key, open the failed run. Writes
// docs/viewer-run.png (the run page, Gantt visible) and docs/viewer-list.png (the run list).
// Run through scripts/readme-screenshots.sh.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const KAHN = process.env.KAHN_BIN || path.join(ROOT, 'target', 'debug', 'kahn');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kahn-readme-'));
const DB = `sqlite://${path.join(tmp, 'kahn.db')}`;
const env = { ...process.env, KAHN_DATABASE_URL: DB, KAHN_CACHE_DIR: path.join(tmp, 'cache') };
const kahn = (...args) => execFileSync(KAHN, args, { env, encoding: 'utf8' });

// README step 1: a tenant and its key; steps 2 and 5: the example runs.
const key = JSON.parse(kahn('tenant', 'provision', 'my-team', '--json')).api_key;
env.KAHN_API_KEY = key;
kahn('push', path.join(ROOT, 'examples/runs/nightly-42'));
kahn('push', path.join(ROOT, 'examples/runs/deploy-1187'));

const server = spawn(KAHN, ['serve', '--listen', '127.0.0.1:0'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
let exitCode = 1;
try {
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`kahn serve printed no URL: ${out}`)), 30000);
    const scan = (chunk) => {
      out += chunk;
      const m = out.match(/http:\/\/127\.0\.0\.1:\d+/);
      if (m) { clearTimeout(timer); resolve(m[0]); }
    };
    server.stdout.on('data', scan);
    server.stderr.on('data', scan);
  });
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  await page.goto(`${url}/`);
  await page.fill('#token', key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('tr[data-run="deploy-1187"]').waitFor({ timeout: 15000 });
  await page.screenshot({ path: path.join(ROOT, 'docs', 'viewer-list.png') });
  await page.goto(`${url}/#/runs/deploy-1187`);
  await page.locator('[data-testid="gantt"] .gantt-row').first().waitFor({ timeout: 15000 });
  await page.locator('[data-testid="graph"] svg').first().waitFor({ timeout: 15000 });
  await page.screenshot({ path: path.join(ROOT, 'docs', 'viewer-run.png') });
  await browser.close();
  console.log('wrote docs/viewer-run.png and docs/viewer-list.png');
  exitCode = 0;
} finally {
  server.kill();
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(exitCode);

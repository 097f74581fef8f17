// The KAHN history viewer: sign in, list runs, open a run (graph, timeline, verified chain).
// Read-only by construction: it only ever sends GET requests to the public read API (and,
// signed in through the identity provider, one POST to end that session).

import { ApiError, authConfig, createApi, logout } from './api.js';
import { ago, h, mount, stateClass } from './dom.js';
import { createGantt, formatDuration } from './gantt.js';
import { parseGraph, renderGraph } from './graph.js';
import { verifyChain } from './verify.js';

const TOKEN_KEY = 'kahn.viewer.token';
const TENANT_KEY = 'kahn.viewer.tenant';
const RETURN_KEY = 'kahn.viewer.return';
const SSO_KEY = 'kahn.viewer.sso';
const REFRESH_MS = 5000;
const PAGE_SIZE = 25;
const TRANSITION_PAGE = 1000;
const LIVE_MS = 3000;

const main = document.getElementById('main');
const identityEl = document.getElementById('identity');
const overrideEl = document.getElementById('override');

const app = {
  /** How people sign in here (`GET /auth/config`): null until the server has answered. */
  auth: null,
  api: null,
  who: null,
  tenants: null,
  timer: null,
  generation: 0,
  cursors: [],
  note: null,
  switching: false,
  onVisible: null,
};

const store = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  setToken: (t) => (t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY)),
  tenant: () => sessionStorage.getItem(TENANT_KEY),
  setTenant: (t) => (t ? sessionStorage.setItem(TENANT_KEY, t) : sessionStorage.removeItem(TENANT_KEY)),
  /** The view (`#/runs/…`) to come back to after the identity provider's sign-in. */
  returnTo: () => sessionStorage.getItem(RETURN_KEY),
  setReturnTo: (h) => (h ? sessionStorage.setItem(RETURN_KEY, h) : sessionStorage.removeItem(RETURN_KEY)),
  /** This tab was signed in by a session (and did not sign out): a 401 now means it ended. */
  wasSession: () => sessionStorage.getItem(SSO_KEY) === '1',
  setWasSession: (v) => (v ? sessionStorage.setItem(SSO_KEY, '1') : sessionStorage.removeItem(SSO_KEY)),
};

/** An administrator: role admin, signed in with a JWT or through the identity provider. */
function isAdminPrincipal(p) {
  return Boolean(p) && (p.kind === 'jwt' || p.kind === 'session') && p.role === 'admin';
}

/**
 * What the sign-in page says after a 401 with no pasted credential: the server's words when
 * it refused a session cookie (expired, or not known after a restart); when the browser sent
 * none although this tab was signed in, the cookie's lifetime (the session's) ran out — or
 * another tab signed out. A first visit says nothing.
 */
function sessionEnded(err) {
  const was = store.wasSession();
  store.setWasSession(false);
  if (/session/i.test(err.message)) return `Signed out: ${err.message}.`;
  if (was) return 'Signed out: your session expired (or you signed out in another tab); sign in again.';
  return undefined;
}

const SOURCE_TEXT = {
  api_key: 'from the API key',
  org: "from the token's org_id (organisation tenant)",
  sub: "your personal tenant (from the token's sub)",
  admin_override: 'admin override, read-only',
  none: 'no tenant resolved',
};

function stopTimer() {
  if (app.timer) clearInterval(app.timer);
  app.timer = null;
}

function every(ms, fn) {
  stopTimer();
  app.timer = setInterval(fn, ms);
}

/** The current route from the hash: `#/` (runs, with filters) or `#/runs/<id>`. */
function route() {
  const raw = window.location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = raw.split('?');
  const params = new URLSearchParams(query);
  const m = path.match(/^\/runs\/(.+)$/);
  if (m) return { name: 'run', id: decodeURIComponent(m[1]) };
  return {
    name: 'runs', source: params.get('source') || '', status: params.get('status') || '',
    prefix: params.get('q') || '', sort: params.get('sort') || '',
  };
}

function runsHash(source, status, prefix = '', sort = '') {
  const q = new URLSearchParams();
  if (prefix) q.set('q', prefix);
  if (source) q.set('source', source);
  if (status) q.set('status', status);
  if (sort) q.set('sort', sort);
  const qs = q.toString();
  return qs ? `#/?${qs}` : '#/';
}

function tenantName(id) {
  const t = app.tenants && app.tenants.find((x) => x.id === id);
  return t ? t.name : null;
}

function focusMain() {
  main.focus({ preventScroll: true });
}

// ---------------------------------------------------------------- empty and error states

function emptyState(kind, title, ...body) {
  return h('section', { class: 'empty', 'data-empty': kind, role: 'status' },
    h('h2', {}, title), ...body);
}

function showUnreachable(err) {
  identityEl.dataset.state = 'unreachable';
  mount(main, emptyState('unreachable', 'The KAHN server is unreachable',
    h('p', {}, err.message),
    h('p', {}, 'Nothing is wrong with your credential. Check that `kahn serve` is running and that this page was opened from it; the viewer retries every few seconds.'),
    h('p', {}, h('button', { type: 'button', onclick: () => render() }, 'Retry now'))));
  every(REFRESH_MS, async () => {
    try {
      const res = await fetch('/healthz', { cache: 'no-store', credentials: 'omit' });
      if (res.ok) render();
    } catch {
      /* still down */
    }
  });
}

function showError(err) {
  if (err instanceof ApiError && err.kind === 'unreachable') return showUnreachable(err);
  if (err instanceof ApiError && err.kind === 'unauthorized') {
    const session = Boolean(app.api && app.api.session);
    store.setToken(null);
    app.tenants = null;
    if (session) return renderSignIn(sessionEnded(err));
    return renderSignIn(`The server refused this credential: ${err.message}`);
  }
  mount(main, emptyState('error', 'The server answered with an error',
    h('p', {}, `${err.status ? `HTTP ${err.status}: ` : ''}${err.message}`),
    h('p', {}, h('a', { href: '#/' }, 'Back to the runs'))));
  return undefined;
}

// ---------------------------------------------------------------- sign-in and header

function renderSignIn(problem) {
  stopTimer();
  app.who = null;
  renderIdentity();
  renderOverride();
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, 'aria-describedby': 'token-help', placeholder: 'kahn_live_sk_… or eyJ…',
  });
  const form = h('form', {
    class: 'signin', 'aria-labelledby': 'signin-title',
    onsubmit: (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      store.setToken(token);
      store.setTenant(null);
      app.tenants = null;
      render();
    },
  },
  h('label', { for: 'token' }, 'API key or JWT'),
  input,
  h('p', { id: 'token-help', class: 'help' },
    'Kept in this tab\'s session storage only, sent only as an Authorization header to this server, never put in a URL, and forgotten when the tab closes.'),
  h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  const oidc = app.auth && app.auth.oidc;
  // Single sign-on is a plain link: the server redirects to the provider's own login page.
  // The view asked for (a run's hash) is kept in this tab for the way back.
  const sso = oidc
    ? h('div', { class: 'sso' },
      h('a', {
        href: oidc.login_url, class: 'sso-signin', 'data-testid': 'sso-signin',
        onclick: () => store.setReturnTo(window.location.hash && window.location.hash !== '#/' ? window.location.hash : null),
      }, `Sign in with ${oidc.name}`),
      h('p', { class: 'help' }, `Your organisation's identity provider signs you in; this server then keeps a session for this browser.`),
      h('p', { class: 'or', role: 'presentation' }, h('span', {}, 'or paste a credential')))
    : null;
  mount(main, emptyState('signed-out', 'Not signed in',
    problem ? h('p', { class: 'problem', role: 'alert' }, problem) : null,
    sso,
    h('p', {}, 'Paste a producer API key (kahn_live_sk_…) to see its tenant\'s runs, or a JWT from your identity provider to see your organisation\'s or your personal tenant\'s runs.'),
    form));
  if (!oidc) input.focus();
}

async function signOut() {
  const session = Boolean(app.api && app.api.session);
  store.setToken(null);
  store.setTenant(null);
  app.tenants = null;
  app.api = null;
  app.generation += 1;
  stopTimer();
  let problem;
  store.setWasSession(false);
  if (session) {
    // The server revokes the session and clears its cookie; only then is it over.
    try {
      await logout();
    } catch (e) {
      problem = `Signing out may not have ended the session: ${e.message}`;
    }
  }
  if (window.location.hash && window.location.hash !== '#/') {
    history.replaceState(null, '', '#/');
  }
  renderSignIn(problem);
}

function principalText(p) {
  if (p.kind === 'api_key') return { who: 'API key', role: 'producer key' };
  const who = p.name || p.email || p.sub || (p.kind === 'session' ? 'signed-in user' : 'JWT');
  return { who, role: p.role || 'member', email: p.name && p.email ? p.email : null };
}

function renderIdentity() {
  delete identityEl.dataset.state;
  if (!app.who) {
    mount(identityEl, h('span', { class: 'muted', 'data-testid': 'who' }, 'Not signed in'));
    return;
  }
  const { principal, tenant_id: tenant, tenant_source: source, message } = app.who;
  const p = principalText(principal);
  // The server names the tenant (/v1/whoami); an admin's listing is the fallback.
  const name = tenant ? (app.who.tenant_name || tenantName(tenant)) : null;
  const isAdmin = isAdminPrincipal(principal);
  const sso = principal.kind === 'session';
  const parts = [
    h('div', { class: 'who', 'data-auth': sso ? 'session' : 'credential' },
      h('span', { class: 'k' }, 'Signed in'), h('strong', { 'data-testid': 'who' }, p.who),
      p.email ? h('span', { class: 'muted' }, ` ${p.email}`) : null,
      sso ? h('span', { class: 'muted via', 'data-testid': 'via' }, ` via ${(app.auth && app.auth.oidc && app.auth.oidc.name) || 'single sign-on'}`) : null),
    h('div', { class: 'role' },
      h('span', { class: 'k' }, 'Role'), h('strong', { 'data-testid': 'role' }, p.role)),
    h('div', { class: 'tenant', title: message },
      h('span', { class: 'k' }, 'Tenant'),
      h('strong', { 'data-testid': 'tenant' }, tenant ? (name ? `${name} ` : '') : 'none'),
      tenant ? h('code', { class: 'id' }, tenant) : null,
      h('span', { class: `source src-${source}`, 'data-testid': 'tenant-source' }, `${SOURCE_TEXT[source] || source}`)),
  ];
  if (isAdmin && app.tenants) parts.push(tenantSelector());
  parts.push(h('button', { type: 'button', class: 'signout', onclick: signOut }, 'Sign out'));
  mount(identityEl, ...parts);
}

function tenantSelector() {
  const current = store.tenant() || '';
  const select = h('select', {
    id: 'tenant-select', 'aria-describedby': 'tenant-select-help',
    onchange: () => switchTenant(select.value || null),
  },
  h('option', { value: '' }, 'My own tenant (no override)'),
  app.tenants.map((t) => h('option', { value: t.id, selected: t.id === current },
    `${t.name} — ${t.run_count} run${t.run_count === 1 ? '' : 's'}`)));
  return h('div', { class: 'admin-select' },
    h('label', { for: 'tenant-select' }, 'Admin: read tenant'),
    select,
    h('span', { id: 'tenant-select-help', class: 'muted' }, 'read-only'));
}

/** An admin reads another tenant (or their own again). The current view is painted again
 * in the new tenant: the same run when it exists there, else that tenant's runs with a note;
 * a list keeps its filters but starts at the first page. */
function switchTenant(id) {
  store.setTenant(id);
  app.cursors = [];
  app.switching = route().name === 'run';
  render();
}

function renderOverride() {
  const id = app.who && app.who.tenant_source === 'admin_override' ? app.who.tenant_id : null;
  document.body.classList.toggle('has-override', Boolean(id));
  if (!id) {
    overrideEl.hidden = true;
    overrideEl.replaceChildren();
    return;
  }
  overrideEl.hidden = false;
  mount(overrideEl,
    h('strong', {}, 'Read-only admin view'),
    ` of tenant ${tenantName(id) || ''} `,
    h('code', {}, id),
    '. Every request carries X-KAHN-Tenant and is audited; nothing here can change data. ',
    h('button', { type: 'button', onclick: () => switchTenant(null) }, 'Back to my tenant'));
}

// ---------------------------------------------------------------- labels

/** The labels that may hold a repository's web address, checked in this order, for `commit`. */
const REPO_LABELS = ['repository', 'repository_url', 'repo', 'repo_url'];

function httpUrl(v) {
  if (typeof v !== 'string' || !/^https?:\/\//i.test(v)) return null;
  try {
    const u = new URL(v);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u : null;
  } catch {
    return null;
  }
}

/** A label's value: a link when it is an http(s) URL, a commit link when the run names its
 * repository's URL, text otherwise. */
function labelValue(k, v, labels) {
  const text = String(v);
  const url = httpUrl(text);
  const ext = { rel: 'noopener noreferrer', target: '_blank' };
  if (url) return h('a', { href: url.href, class: 'label-link', ...ext }, text);
  if (k === 'commit' && /^[0-9a-f]{4,64}$/i.test(text)) {
    const repoKey = REPO_LABELS.find((r) => httpUrl(String((labels || {})[r] || '')));
    if (repoKey) {
      const base = String(labels[repoKey]).replace(/\/+$/, '');
      return h('a', { href: `${base}/commit/${encodeURIComponent(text)}`, class: 'label-link commit', ...ext }, h('code', {}, text.slice(0, 12)));
    }
    return h('code', {}, text.slice(0, 12));
  }
  return text;
}

function labelChips(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return h('ul', { class: 'chips' }, entries.map(([k, v]) =>
    h('li', { 'data-label': k, title: `${k}: ${v}` }, h('span', { class: 'k' }, `${k} `), labelValue(k, v, labels))));
}

// ---------------------------------------------------------------- runs

function noRunsState(filtered, r) {
  const who = app.who;
  const origin = window.location.origin;
  if (filtered) {
    return emptyState('no-match', 'No runs match these filters',
      h('p', {}, `Nothing in this tenant has ${[r.prefix && `a run id starting with “${r.prefix}”`, r.source && `source “${r.source}”`, r.status && `status “${r.status}”`].filter(Boolean).join(' and ')}.`),
      h('p', {}, h('a', { href: '#/' }, 'Clear the filters')));
  }
  const src = who.tenant_source;
  if (src === 'none') {
    const isAdmin = isAdminPrincipal(who.principal);
    return emptyState('no-tenant', 'No tenant for this session',
      h('p', {}, who.message + '.'),
      h('p', {}, isAdmin
        ? 'As an administrator, choose a tenant to read in the selector above.'
        : `Ask an operator to link your organisation (kahn tenant link-org NAME ${who.principal.org_id || 'ORG_ID'}) or to provision your personal tenant (kahn tenant provision NAME --owner-sub ${who.principal.sub}).`));
  }
  if (src === 'sub') {
    const org = who.principal.org_id;
    return emptyState('personal-tenant', 'Your personal tenant has no runs',
      h('p', {}, 'This session is scoped to your personal tenant (from your token\'s sub), and nothing has been pushed to it. ',
        org
          ? `Your token names organisation “${org}”, but no tenant is linked to it, so your team's runs are not visible here.`
          : 'Your token carries no org_id, so your team\'s runs, which live in your organisation\'s tenant, are not visible here.'),
      h('p', {}, org
        ? `Ask an operator to link it: kahn tenant link-org TEAM_TENANT ${org}; then sign in again.`
        : 'Sign in with a token issued for your organisation (one carrying its org_id), or with the producer API key of the team\'s tenant.'));
  }
  const admin = isAdminPrincipal(who.principal) && src !== 'admin_override';
  return emptyState('no-runs', 'No runs yet in this tenant',
    admin ? h('p', { class: 'admin-hint' }, 'You are an administrator: to read another tenant\'s runs, choose it in the “Admin: read tenant” selector above.') : null,
    h('p', {}, src === 'admin_override'
      ? 'The tenant you are reading has no runs.'
      : 'Nothing has been pushed to this tenant so far. Runs appear here within seconds of a push:'),
    src === 'admin_override' ? null : h('pre', {}, `kahn push ./runs/my-run --url ${origin}`));
}

function runDuration(r) {
  if (r.duration_ms !== null && r.duration_ms !== undefined) return r.duration_ms;
  return r.started_at && !r.ended_at ? Date.now() - Date.parse(r.started_at) : null;
}

const SORTS = {
  '': { label: 'Newest activity (server order)', fn: null },
  duration: { label: 'Longest duration first', fn: (a, b) => (runDuration(b) ?? -1) - (runDuration(a) ?? -1) },
  failed: {
    label: 'Failed first',
    fn: (a, b) => (Number(b.status_class === 'failed') - Number(a.status_class === 'failed'))
      || ((b.node_counts?.failed || 0) - (a.node_counts?.failed || 0)),
  },
};

function runsTable(runs) {
  return h('table', { class: 'runs', 'data-testid': 'runs-table' },
    h('caption', { class: 'sr-only' }, 'Runs'),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Run'), h('th', { scope: 'col' }, 'Source'),
      h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col', class: 'num' }, 'Duration'),
      h('th', { scope: 'col', class: 'num' }, 'Transitions'),
      h('th', { scope: 'col' }, 'Labels'),
      h('th', { scope: 'col' }, 'Last activity'))),
    h('tbody', {}, runs.map((r) => {
      const d = runDuration(r);
      return h('tr', { 'data-run': r.run_id, 'data-class': r.status_class || '' },
        h('td', { 'data-label': 'Run' }, h('a', { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.run_id)),
        h('td', { 'data-label': 'Source' }, r.source || '—'),
        h('td', { 'data-label': 'Status', 'data-testid': 'status-cell' },
          h('span', { class: `badge cls-${r.status_class} ${stateClass(r.status)}` }, statusText(r))),
        h('td', { 'data-label': 'Duration', class: 'num', 'data-ms': d ?? '' },
          d === null ? '—' : `${formatDuration(d)}${r.ended_at ? '' : ' so far'}`),
        h('td', { 'data-label': 'Transitions', class: 'num' }, String(r.transition_count)),
        h('td', { 'data-label': 'Labels', class: 'labels' }, labelChips(r.labels)),
        h('td', { 'data-label': 'Last activity' }, h('time', { datetime: r.last_ts || '', title: r.last_ts || '' }, ago(r.last_ts))));
    })));
}

async function renderRuns(r, gen) {
  const sources = new Set();
  const statuses = new Set();
  const prefixIn = h('input', {
    id: 'f-prefix', name: 'q', value: r.prefix, autocomplete: 'off', spellcheck: 'false',
    type: 'search', placeholder: 'run id starts with…',
  });
  const sourceIn = h('input', { id: 'f-source', name: 'source', value: r.source, list: 'sources', autocomplete: 'off' });
  const statusIn = h('input', { id: 'f-status', name: 'status', value: r.status, list: 'statuses', autocomplete: 'off' });
  const sortIn = h('select', { id: 'f-sort', name: 'sort', 'aria-describedby': 'sort-help' },
    Object.entries(SORTS).map(([k, v]) => h('option', { value: k, selected: k === r.sort }, v.label)));
  const sourceList = h('datalist', { id: 'sources' });
  const statusList = h('datalist', { id: 'statuses' });
  const go = () => {
    app.cursors = [];
    window.location.hash = runsHash(sourceIn.value.trim(), statusIn.value.trim(), prefixIn.value.trim(), sortIn.value);
  };
  const filters = h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Find runs',
    onsubmit: (e) => {
      e.preventDefault();
      go();
    },
  },
  h('div', { class: 'grow' }, h('label', { for: 'f-prefix' }, 'Run id'), prefixIn),
  h('div', {}, h('label', { for: 'f-source' }, 'Source'), sourceIn, sourceList),
  h('div', {}, h('label', { for: 'f-status' }, 'Status'), statusIn, statusList),
  h('button', { type: 'submit' }, 'Filter'),
  (r.source || r.status || r.prefix) ? h('a', { href: '#/', class: 'clear' }, 'Clear') : null,
  h('div', { class: 'sort' }, h('label', { for: 'f-sort' }, 'Sort'), sortIn,
    h('span', { id: 'sort-help', class: 'help' }, 'sorts the rows loaded on this page')));
  sortIn.addEventListener('change', go);
  const note = app.note ? h('p', { class: 'note', role: 'status', 'data-testid': 'note' }, app.note) : null;
  app.note = null;
  const body = h('div', { class: 'runs-body', 'aria-live': 'polite', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading runs…'));
  const status = h('p', { class: 'refresh muted', 'data-testid': 'refresh' });
  mount(main, h('section', { class: 'runs-view' },
    h('div', { class: 'title-row' }, h('h1', {}, 'Runs'), status),
    note, filters, body));

  const cursor = app.cursors[app.cursors.length - 1];
  const load = async (first) => {
    let page;
    try {
      page = await app.api.runs({
        source: r.source, status: r.status, run_id_prefix: r.prefix, limit: PAGE_SIZE, cursor,
      });
    } catch (e) {
      if (gen !== app.generation) return;
      if (e instanceof ApiError && e.status === 400) {
        // A filter the server refuses (say, a character no run id has): say so next to them.
        mount(body, h('p', { class: 'problem', role: 'alert', 'data-testid': 'filter-problem' }, `The server refused these filters: ${e.message}`));
        body.setAttribute('aria-busy', 'false');
        stopTimer();
        return;
      }
      showError(e);
      return;
    }
    if (gen !== app.generation) return;
    const { runs: serverRuns, next_cursor: next } = page.body;
    const sort = SORTS[r.sort] || SORTS[''];
    const runs = sort.fn ? [...serverRuns].sort(sort.fn) : serverRuns;
    for (const run of runs) {
      if (run.source) sources.add(run.source);
      if (run.status) statuses.add(run.status);
    }
    mount(sourceList, [...sources].sort().map((v) => h('option', { value: v })));
    mount(statusList, [...statuses].sort().map((v) => h('option', { value: v })));
    const filtered = Boolean(r.source || r.status || r.prefix);
    const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
      app.cursors.length ? h('button', { type: 'button', onclick: () => { app.cursors.pop(); render(); } }, '← Newer') : null,
      app.cursors.length ? h('button', { type: 'button', onclick: () => { app.cursors = []; render(); } }, 'First page') : null,
      next ? h('button', { type: 'button', onclick: () => { app.cursors.push(next); render(); } }, 'Older →') : null);
    const content = runs.length === 0 && !cursor ? noRunsState(filtered, r) : [runsTable(runs), pager];
    // Keep keyboard focus where it was when a refresh redraws the table.
    const focused = document.activeElement && body.contains(document.activeElement)
      ? document.activeElement.getAttribute('href') || document.activeElement.textContent : null;
    mount(body, content);
    body.setAttribute('aria-busy', 'false');
    body.dataset.sort = r.sort || 'server';
    if (focused) {
      const again = [...body.querySelectorAll('a, button')].find((el) =>
        (el.getAttribute('href') || el.textContent) === focused);
      if (again) again.focus();
    }
    status.textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
    if (first) main.dataset.view = 'runs';
  };
  await load(true);
  if (gen === app.generation && !app.timer) every(REFRESH_MS, () => load(false));
}

// ---------------------------------------------------------------- one run

const LIVE_CLASSES = new Set(['active', 'waiting']);
const isLive = (run) => LIVE_CLASSES.has(run.status_class);

function notFoundState(id) {
  return emptyState('run-not-found', 'No such run in this tenant',
    h('p', {}, `Run “${id}” is not in tenant ${app.who.tenant_id || '(none)'} (${SOURCE_TEXT[app.who.tenant_source] || app.who.tenant_source}). It may belong to another tenant, or have been removed by retention.`),
    h('p', {}, h('a', { href: '#/' }, '← All runs')));
}

function transitionRow(t) {
  const b = t.body;
  const CORE = new Set(['ts', 'node', 'from', 'to', 'attrs']);
  const extra = Object.fromEntries(Object.entries(b).filter(([k]) => !CORE.has(k)));
  const details = {};
  if (b.attrs !== undefined) details.attrs = b.attrs;
  Object.assign(details, extra);
  return h('li', { class: 'step', 'data-seq': t.seq },
    h('span', { class: 'seq' }, `#${t.seq}`),
    h('time', { datetime: b.ts, class: 'ts' }, b.ts),
    h('span', { class: 'node' }, b.node !== undefined ? String(b.node) : '(run)'),
    h('span', { class: 'move' },
      b.from !== undefined ? h('span', { class: `badge ${stateClass(b.from)}` }, String(b.from)) : h('span', { class: 'muted' }, '∅'),
      h('span', { class: 'arrow', 'aria-label': 'to' }, ' → '),
      h('span', { class: `badge ${stateClass(b.to)}` }, String(b.to))),
    Object.keys(details).length
      ? h('details', { class: 'attrs' },
        h('summary', {}, b.attrs !== undefined ? 'attrs' : 'fields'),
        h('pre', {}, JSON.stringify(details, null, 2)))
      : null);
}

/**
 * The raw transition list, one page (1000) at a time and only on demand: it never downloads
 * the whole run first. `append` adds rows at the end (a live run), keeping what is expanded.
 */
function createTransitionList(run) {
  const loaded = [];
  let total = run.transition_count;
  let filter = '';
  let busy = false;
  const list = h('ol', { class: 'timeline', 'data-testid': 'timeline' });
  const count = h('p', { class: 'count muted', 'data-testid': 'transition-count', role: 'status' });
  const more = h('button', { type: 'button', class: 'more', 'data-testid': 'load-more' });
  const nodeSelect = h('select', { id: 'node-filter' }, h('option', { value: '' }, 'All nodes'),
    (run.nodes || []).map((n) => h('option', { value: n.node }, n.node)));
  const empty = h('div', {});
  const matches = (t) => !filter || String(t.body.node) === filter;
  const lastSeq = () => (loaded.length ? loaded[loaded.length - 1].seq : -1);
  const complete = () => lastSeq() + 1 >= total;
  const refresh = () => {
    const shown = filter ? loaded.filter(matches).length : loaded.length;
    count.textContent = filter
      ? `showing ${shown} transitions of node “${filter}” among the ${loaded.length} loaded of ${total}`
      : `showing ${loaded.length} of ${total} transitions`;
    more.hidden = complete();
    more.textContent = busy ? 'Loading…' : `Load ${Math.min(TRANSITION_PAGE, total - loaded.length)} more`;
    mount(empty, loaded.length && shown === 0
      ? emptyState('no-transitions', 'No transitions', h('p', {}, `Node “${filter}” has no transitions among the loaded ones.`))
      : (total === 0 ? emptyState('no-transitions', 'No transitions', h('p', {}, 'This run has no transitions yet.')) : null));
  };
  const add = (rows) => {
    const fresh = rows.filter((t) => t.seq > lastSeq());
    loaded.push(...fresh);
    list.append(...fresh.filter(matches).map(transitionRow));
    return fresh.length;
  };
  const loadMore = async () => {
    if (busy || complete()) return;
    busy = true;
    refresh();
    try {
      const page = await app.api.transitions(run.run_id, loaded.length ? lastSeq() : undefined, TRANSITION_PAGE);
      add(page.body.transitions);
    } finally {
      busy = false;
      refresh();
    }
  };
  more.addEventListener('click', () => loadMore().catch(showError));
  const showNode = (id) => {
    filter = id || '';
    nodeSelect.value = filter;
    mount(list, loaded.filter(matches).map(transitionRow));
    refresh();
  };
  nodeSelect.addEventListener('change', () => showNode(nodeSelect.value));
  const el = h('section', { class: 'steps', 'aria-labelledby': 'timeline-title' },
    h('div', { class: 'title-row' },
      h('h2', { id: 'timeline-title' }, 'Transitions'),
      h('div', { class: 'node-filter' }, h('label', { for: 'node-filter' }, 'Node'), nodeSelect)),
    count, list, empty, more);
  return {
    el,
    loaded,
    loadMore,
    showNode,
    complete,
    /** A fresh summary arrived: new total, new nodes in the filter; new rows when at the end. */
    async follow(now) {
      const wasComplete = complete();
      total = now.transition_count;
      const known = new Set([...nodeSelect.options].map((o) => o.value));
      for (const n of now.nodes || []) if (!known.has(n.node)) nodeSelect.append(h('option', { value: n.node }, n.node));
      let added = 0;
      if (wasComplete && !complete() && !busy) {
        busy = true;
        try {
          const page = await app.api.transitions(run.run_id, loaded.length ? lastSeq() : undefined, TRANSITION_PAGE);
          added = add(page.body.transitions);
        } finally {
          busy = false;
        }
      }
      refresh();
      return added;
    },
    refresh,
  };
}

function integrityPanel(run) {
  const mark = h('p', { class: 'verify', 'data-testid': 'verify', 'data-verified': 'pending', role: 'status' },
    'Verifying the hash chain in this page…');
  const head = h('code', { class: 'hash', 'data-testid': 'head-hash' }, run.head_hash);
  return {
    el: h('section', { class: 'integrity', 'aria-labelledby': 'integrity-title' },
      h('h2', { id: 'integrity-title' }, 'Hash chain'),
      h('p', {}, h('span', { class: 'k' }, 'Head hash '), head),
      mark),
    mark,
    head,
  };
}

async function verifyInto(integrity, list, run, gen) {
  if (!list.complete()) {
    integrity.mark.dataset.verified = 'partial';
    integrity.mark.className = 'verify';
    integrity.mark.textContent = `Not verified in the page yet: it checks the chain once every transition is loaded (${list.loaded.length} of ${run.transition_count} are). Load the rest below, or use kahn verify ${run.run_id}.`;
    return;
  }
  const v = await verifyChain(list.loaded, run.head_hash);
  if (gen !== app.generation) return;
  integrity.mark.dataset.verified = String(v.ok);
  integrity.mark.className = `verify ${v.ok ? 'ok' : 'bad'}`;
  integrity.mark.textContent = v.ok
    ? `✓ Verified: this page recomputed ${v.checked} content hash${v.checked === 1 ? '' : 'es'} (SHA-256 of RFC 8785 JSON) and the chain, and it ends at the head hash above.`
    : `✗ Not verified: ${v.problem}.`;
}

function statesOf(run) {
  return new Map((run.nodes || []).map((n) => [n.node, n.state]));
}

/** Recolours the drawn graph in place from fresh node states. */
function recolourGraph(box, states) {
  for (const g of box.querySelectorAll('g.node')) {
    const st = states.get(g.dataset.node);
    if ((st || 'none') === g.dataset.state) continue;
    g.setAttribute('class', `node ${stateClass(st)}`);
    g.dataset.state = st || 'none';
    const label = g.querySelector('text.state');
    if (label) label.textContent = st || '—';
  }
}

function graphSectionFor(run, onSelect) {
  const graph = parseGraph(run.graph);
  const states = statesOf(run);
  if (!graph) {
    return {
      el: h('section', { class: 'graph', 'data-testid': 'graph' },
        h('h2', {}, 'Graph'),
        emptyState('no-graph', 'No graph for this run',
          h('p', {}, 'The producer sent no graph.json (or one with no nodes). The timeline above has every node.'))),
      update: () => {},
      reveal: () => {},
    };
  }
  const known = new Set(graph.nodes.map((n) => n.id));
  for (const id of states.keys()) if (!known.has(id)) graph.nodes.push({ id, label: id });
  const svg = renderGraph(graph, states, onSelect);
  const natural = { w: Number(svg.getAttribute('width')), h: Number(svg.getAttribute('height')) };
  const box = h('div', { class: 'graph-scroll', 'data-testid': 'graph-scroll' }, svg);
  let zoom = 0; // 0 = fit to width
  const zoomLabel = h('span', { class: 'zoom-label muted', 'aria-live': 'polite' });
  const apply = () => {
    if (zoom === 0) {
      box.classList.remove('actual');
      svg.setAttribute('width', natural.w);
      svg.setAttribute('height', natural.h);
      zoomLabel.textContent = 'fit';
    } else {
      box.classList.add('actual');
      svg.setAttribute('width', Math.round(natural.w * zoom));
      svg.setAttribute('height', Math.round(natural.h * zoom));
      zoomLabel.textContent = `${Math.round(zoom * 100)} %`;
    }
  };
  const current = () => (zoom || Math.min(1, box.clientWidth / natural.w || 1));
  const zoomBy = (f) => {
    zoom = Math.max(0.1, Math.min(4, current() * f));
    apply();
  };
  const btn = (label, title, fn, extra = {}) => h('button', { type: 'button', title, 'aria-label': title, onclick: fn, ...extra }, label);
  const controls = h('div', { class: 'zoom', role: 'group', 'aria-label': 'Zoom' },
    btn('−', 'Zoom out', () => zoomBy(1 / 1.25), { 'data-testid': 'zoom-out' }),
    zoomLabel,
    btn('+', 'Zoom in', () => zoomBy(1.25), { 'data-testid': 'zoom-in' }),
    btn('Fit', 'Fit to width', () => { zoom = 0; apply(); }, { class: 'fit' }),
    btn('1:1', 'Actual size', () => { zoom = 1; apply(); }));
  // Drag to pan (the box scrolls); a drag that moved does not also click the node under it.
  let drag = null;
  box.addEventListener('pointerdown', (e) => {
    if (e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, l: box.scrollLeft, t: box.scrollTop, moved: false };
  });
  window.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 5) return;
    drag.moved = true;
    box.classList.add('panning');
    box.scrollLeft = drag.l - dx;
    box.scrollTop = drag.t - dy;
  });
  window.addEventListener('pointerup', () => {
    box.classList.remove('panning');
    if (drag && drag.moved) {
      const swallow = (e) => { e.stopPropagation(); e.preventDefault(); };
      box.addEventListener('click', swallow, { capture: true, once: true });
      setTimeout(() => box.removeEventListener('click', swallow, { capture: true }), 0);
    }
    drag = null;
  });
  // A large DAG starts readable (actual size, scrollable) rather than shrunk to a smudge.
  if (graph.nodes.length > 40) zoom = 1;
  apply();
  const legend = h('ul', { class: 'legend', 'aria-label': 'Legend' });
  const drawLegend = (st) => mount(legend,
    [...new Set(st.values())].sort().map((x) => h('li', {}, h('span', { class: `swatch ${stateClass(x)}` }), x)),
    h('li', {}, h('span', { class: 'swatch st-none' }), 'no transition yet'),
    graph.nodes.length > 40 ? h('li', { class: 'muted' }, 'drag to pan, − / + to zoom') : null);
  drawLegend(states);
  return {
    el: h('section', { class: 'graph', 'aria-labelledby': 'graph-title', 'data-testid': 'graph' },
      h('div', { class: 'title-row' },
        h('h2', { id: 'graph-title' }, `Graph · ${graph.nodes.length} nodes`), controls),
      box, legend),
    /** A large graph opens scrolled to its first failed node, the one a reader looks for. */
    reveal: () => {
      const failed = (run.nodes || []).find((n) => n.class === 'failed');
      if (!failed || zoom === 0) return;
      const g = [...box.querySelectorAll('g.node')].find((x) => x.dataset.node === failed.node);
      const m = g && g.transform.baseVal.consolidate();
      if (!m) return;
      box.scrollLeft = Math.max(0, m.matrix.e * zoom - box.clientWidth / 2);
      box.scrollTop = Math.max(0, m.matrix.f * zoom - box.clientHeight / 3);
    },
    update: (now) => {
      const st = statesOf(now);
      recolourGraph(box, st);
      drawLegend(st);
    },
  };
}

function statusText(run) {
  const failed = run.node_counts ? run.node_counts.failed : 0;
  const base = run.status || 'pending';
  return failed && run.status_class !== 'failed' ? `${base} · ${failed} failed` : base;
}

function factsOf(run) {
  const labels = Object.entries(run.labels || {});
  const dur = run.duration_ms ?? (run.started_at ? Date.now() - Date.parse(run.started_at) : null);
  return [
    h('div', {}, h('dt', {}, 'Source'), h('dd', {}, run.source || '—')),
    h('div', {}, h('dt', {}, 'Transitions'), h('dd', { 'data-testid': 'fact-count' }, String(run.transition_count))),
    h('div', {}, h('dt', {}, 'Started'), h('dd', {}, run.started_at || run.first_ts || '—')),
    h('div', {}, h('dt', {}, run.ended_at ? 'Ended' : 'Last activity'), h('dd', {}, run.ended_at || run.last_ts || '—')),
    h('div', {}, h('dt', {}, 'Duration'), h('dd', { 'data-testid': 'run-duration' },
      `${formatDuration(dur)}${run.ended_at || !run.started_at ? '' : ' so far'}`)),
    labels.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, labelValue(k, v, run.labels)))),
  ];
}

async function renderRun(r, gen) {
  mount(main, h('p', { class: 'muted' }, 'Loading run…'));
  let run;
  try {
    run = (await app.api.run(r.id)).body;
  } catch (e) {
    if (gen !== app.generation) return;
    if (app.switching) {
      // An admin switched tenant on a run page and the run is not there: the list, with a note.
      app.note = `Run “${r.id}” is not in tenant ${tenantName(app.who.tenant_id) || app.who.tenant_id || '(none)'}; here are its runs instead.`;
      app.switching = false;
      window.location.hash = '#/';
      return;
    }
    if (e instanceof ApiError && e.kind === 'not_found') {
      mount(main, notFoundState(r.id));
      return;
    }
    showError(e);
    return;
  }
  if (gen !== app.generation) return;
  app.switching = false;

  const fetchLatest = async (n) => {
    const page = await app.api.transitions(run.run_id, n.last_seq > 0 ? n.last_seq - 1 : undefined, 1);
    return page.body.transitions[0];
  };
  const list = createTransitionList(run);
  const gantt = createGantt(run, fetchLatest, (id) => {
    list.showNode(id);
    list.el.scrollIntoView({ block: 'nearest' });
  });
  const graph = graphSectionFor(run, (id) => {
    list.showNode(id);
    list.el.scrollIntoView({ block: 'nearest' });
  });
  const integrity = integrityPanel(run);
  const badge = h('span', { class: `badge big cls-${run.status_class} ${stateClass(run.status)}`, 'data-testid': 'run-status' }, statusText(run));
  const live = h('span', { class: 'live', 'data-testid': 'live', role: 'status', hidden: !isLive(run) },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), 'Live · following new transitions');
  const facts = h('dl', { class: 'facts' }, factsOf(run));
  mount(main, h('article', { class: 'run-view', 'data-run': run.run_id },
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All runs')),
    h('div', { class: 'title-row' },
      h('h1', {}, run.run_id),
      h('div', { class: 'status-row' }, live, badge)),
    facts,
    gantt.el,
    graph.el,
    integrity.el,
    list.el));
  main.dataset.view = 'run';
  graph.reveal();

  try {
    await list.loadMore();
  } catch (e) {
    if (gen === app.generation) showError(e);
    return;
  }
  if (gen !== app.generation) return;
  await verifyInto(integrity, list, run, gen);

  // Follow a live run: poll the summary, append the new rows, move the bars; nothing redrawn.
  let inFlight = false;
  const poll = async () => {
    if (document.hidden || gen !== app.generation || inFlight) return;
    inFlight = true;
    try {
      await pollOnce();
    } finally {
      inFlight = false;
    }
  };
  const pollOnce = async () => {
    let now;
    try {
      now = (await app.api.run(r.id)).body;
    } catch (e) {
      if (gen === app.generation && e instanceof ApiError && e.kind === 'unreachable') showError(e);
      return;
    }
    if (gen !== app.generation) return;
    if (now.next_seq !== run.next_seq || now.status !== run.status) {
      gantt.update(now);
      graph.update(now);
      badge.className = `badge big cls-${now.status_class} ${stateClass(now.status)}`;
      badge.textContent = statusText(now);
      mount(facts, factsOf(now));
      integrity.head.textContent = now.head_hash;
      await list.follow(now);
      if (gen !== app.generation) return;
      run = now;
      await verifyInto(integrity, list, run, gen);
    } else if (isLive(now)) {
      gantt.update(now); // the running bars grow with the clock
    }
    if (!isLive(now)) {
      live.hidden = true;
      stopTimer();
    }
  };
  if (isLive(run)) every(LIVE_MS, poll);
  app.onVisible = () => { if (isLive(run) && gen === app.generation) poll(); };
}

// ---------------------------------------------------------------- main loop

async function render() {
  app.generation += 1;
  const gen = app.generation;
  stopTimer();
  app.onVisible = null;
  if (!app.auth) {
    try {
      app.auth = await authConfig();
    } catch (e) {
      if (gen === app.generation) showError(e);
      return;
    }
    if (gen !== app.generation) return;
  }
  // A pasted credential wins; without one, the single sign-on session (if there is one).
  const token = store.token();
  if (!token && !app.auth.oidc) {
    renderSignIn();
    return;
  }
  app.api = createApi(token, store.tenant());
  try {
    app.who = (await app.api.whoami()).body;
    const isAdmin = isAdminPrincipal(app.who.principal);
    if (isAdmin && !app.tenants) app.tenants = (await app.api.tenants()).body.tenants;
    if (!isAdmin) {
      app.tenants = null;
      store.setTenant(null);
    }
  } catch (e) {
    if (gen !== app.generation) return;
    if (e instanceof ApiError && e.kind === 'not_found' && store.tenant()) {
      // The override names a tenant that no longer exists: drop it and read our own.
      store.setTenant(null);
      render();
      return;
    }
    if (!token && e instanceof ApiError && e.kind === 'unauthorized') {
      // No session (or no longer one): the sign-in page, saying why when one ended.
      app.who = null;
      app.tenants = null;
      store.setTenant(null);
      renderSignIn(sessionEnded(e));
      return;
    }
    app.who = null;
    renderIdentity();
    renderOverride();
    showError(e);
    return;
  }
  if (gen !== app.generation) return;
  if (app.api.session) store.setWasSession(true);
  const back = app.api.session ? store.returnTo() : null;
  if (back) {
    // Back from the identity provider: the view the sign-in started from.
    store.setReturnTo(null);
    if (/^#\/runs\//.test(back) && back !== window.location.hash) {
      history.replaceState(null, '', back);
    }
  }
  renderIdentity();
  renderOverride();
  const r = route();
  if (r.name === 'run') await renderRun(r, gen);
  else await renderRuns(r, gen);
}

// A hidden page does not poll; it catches up as soon as it is visible again.
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && app.onVisible) app.onVisible();
});

window.addEventListener('hashchange', () => {
  render().then(focusMain);
});
render();

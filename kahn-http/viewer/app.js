// The KAHN history viewer: sign in, list runs, open a run (graph, timeline, verified chain).
// Read-only by construction: it only ever sends GET requests to the public read API.

import { ApiError, createApi } from './api.js';
import { ago, h, mount, stateClass } from './dom.js';
import { parseGraph, renderGraph } from './graph.js';
import { verifyChain } from './verify.js';

const TOKEN_KEY = 'kahn.viewer.token';
const TENANT_KEY = 'kahn.viewer.tenant';
const REFRESH_MS = 5000;
const PAGE_SIZE = 25;
const TRANSITION_PAGE = 1000;
const MAX_TRANSITIONS = 50000;

const main = document.getElementById('main');
const identityEl = document.getElementById('identity');
const overrideEl = document.getElementById('override');

const app = {
  api: null,
  who: null,
  tenants: null,
  timer: null,
  generation: 0,
  cursors: [],
};

const store = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  setToken: (t) => (t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY)),
  tenant: () => sessionStorage.getItem(TENANT_KEY),
  setTenant: (t) => (t ? sessionStorage.setItem(TENANT_KEY, t) : sessionStorage.removeItem(TENANT_KEY)),
};

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
  return { name: 'runs', source: params.get('source') || '', status: params.get('status') || '' };
}

function runsHash(source, status) {
  const q = new URLSearchParams();
  if (source) q.set('source', source);
  if (status) q.set('status', status);
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
    store.setToken(null);
    app.tenants = null;
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
  mount(main, emptyState('signed-out', 'Not signed in',
    h('p', {}, 'Paste a producer API key (kahn_live_sk_…) to see its tenant\'s runs, or a JWT from your identity provider to see your organisation\'s or your personal tenant\'s runs.'),
    problem ? h('p', { class: 'problem', role: 'alert' }, problem) : null,
    form));
  input.focus();
}

function signOut() {
  store.setToken(null);
  store.setTenant(null);
  app.tenants = null;
  app.api = null;
  window.location.hash = '#/';
  renderSignIn();
}

function principalText(p) {
  if (p.kind === 'api_key') return { who: 'API key', role: 'producer key' };
  const who = p.name || p.email || p.sub || 'JWT';
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
  const isAdmin = principal.kind === 'jwt' && principal.role === 'admin';
  const parts = [
    h('div', { class: 'who' },
      h('span', { class: 'k' }, 'Signed in'), h('strong', { 'data-testid': 'who' }, p.who),
      p.email ? h('span', { class: 'muted' }, ` ${p.email}`) : null),
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

/** An admin reads another tenant (or their own again): run ids and filters are per tenant,
 * so the view starts over at that tenant's runs. */
function switchTenant(id) {
  store.setTenant(id);
  app.cursors = [];
  if (window.location.hash && window.location.hash !== '#/') window.location.hash = '#/';
  else render();
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

// ---------------------------------------------------------------- runs

function noRunsState(filtered, r) {
  const who = app.who;
  const origin = window.location.origin;
  if (filtered) {
    return emptyState('no-match', 'No runs match these filters',
      h('p', {}, `Nothing in this tenant has ${[r.source && `source “${r.source}”`, r.status && `status “${r.status}”`].filter(Boolean).join(' and ')}.`),
      h('p', {}, h('a', { href: '#/' }, 'Clear the filters')));
  }
  const src = who.tenant_source;
  if (src === 'none') {
    const isAdmin = who.principal.role === 'admin';
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
  return emptyState('no-runs', 'No runs yet in this tenant',
    h('p', {}, src === 'admin_override'
      ? 'The tenant you are reading has no runs.'
      : 'Nothing has been pushed to this tenant so far. Runs appear here within seconds of a push:'),
    src === 'admin_override' ? null : h('pre', {}, `kahn push ./runs/my-run --url ${origin}`));
}

function runsTable(runs) {
  return h('table', { class: 'runs', 'data-testid': 'runs-table' },
    h('caption', { class: 'sr-only' }, 'Runs, newest activity first'),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Run'), h('th', { scope: 'col' }, 'Source'),
      h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col', class: 'num' }, 'Transitions'),
      h('th', { scope: 'col' }, 'Last activity'))),
    h('tbody', {}, runs.map((r) => h('tr', { 'data-run': r.run_id },
      h('td', { 'data-label': 'Run' }, h('a', { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.run_id)),
      h('td', { 'data-label': 'Source' }, r.source || '—'),
      h('td', { 'data-label': 'Status' }, h('span', { class: `badge ${stateClass(r.status)}` }, r.status || 'empty')),
      h('td', { 'data-label': 'Transitions', class: 'num' }, String(r.transition_count)),
      h('td', { 'data-label': 'Last activity' }, h('time', { datetime: r.last_ts || '', title: r.last_ts || '' }, ago(r.last_ts)))))));
}

async function renderRuns(r, gen) {
  const sources = new Set();
  const statuses = new Set();
  const sourceIn = h('input', { id: 'f-source', name: 'source', value: r.source, list: 'sources', autocomplete: 'off' });
  const statusIn = h('input', { id: 'f-status', name: 'status', value: r.status, list: 'statuses', autocomplete: 'off' });
  const sourceList = h('datalist', { id: 'sources' });
  const statusList = h('datalist', { id: 'statuses' });
  const filters = h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Filter runs',
    onsubmit: (e) => {
      e.preventDefault();
      app.cursors = [];
      window.location.hash = runsHash(sourceIn.value.trim(), statusIn.value.trim());
    },
  },
  h('div', {}, h('label', { for: 'f-source' }, 'Source'), sourceIn, sourceList),
  h('div', {}, h('label', { for: 'f-status' }, 'Status'), statusIn, statusList),
  h('button', { type: 'submit' }, 'Filter'),
  (r.source || r.status) ? h('a', { href: '#/', class: 'clear' }, 'Clear') : null);
  const body = h('div', { class: 'runs-body', 'aria-live': 'polite', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading runs…'));
  const status = h('p', { class: 'refresh muted', 'data-testid': 'refresh' });
  mount(main, h('section', { class: 'runs-view' },
    h('div', { class: 'title-row' }, h('h1', {}, 'Runs'), status),
    filters, body));

  const cursor = app.cursors[app.cursors.length - 1];
  const load = async (first) => {
    let page;
    try {
      page = await app.api.runs({ source: r.source, status: r.status, limit: PAGE_SIZE, cursor });
    } catch (e) {
      if (gen !== app.generation) return;
      showError(e);
      return;
    }
    if (gen !== app.generation) return;
    const { runs, next_cursor: next } = page.body;
    for (const run of runs) {
      if (run.source) sources.add(run.source);
      if (run.status) statuses.add(run.status);
    }
    mount(sourceList, [...sources].sort().map((v) => h('option', { value: v })));
    mount(statusList, [...statuses].sort().map((v) => h('option', { value: v })));
    const filtered = Boolean(r.source || r.status);
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

async function loadTransitions(id, count) {
  const all = [];
  let after;
  while (all.length < Math.min(count, MAX_TRANSITIONS)) {
    const page = await app.api.transitions(id, after, TRANSITION_PAGE);
    const rows = page.body.transitions;
    all.push(...rows);
    if (rows.length < TRANSITION_PAGE) break;
    after = rows[rows.length - 1].seq;
  }
  return all;
}

function latestStates(transitions) {
  const states = new Map();
  for (const t of transitions) if (t.body.node !== undefined) states.set(String(t.body.node), t.body.to);
  return states;
}

function timeline(transitions, nodeFilter) {
  const rows = nodeFilter ? transitions.filter((t) => String(t.body.node) === nodeFilter) : transitions;
  if (rows.length === 0) {
    return emptyState('no-transitions', 'No transitions', h('p', {}, nodeFilter
      ? `Node “${nodeFilter}” has no transitions yet.`
      : 'This run has no transitions yet.'));
  }
  const CORE = new Set(['ts', 'node', 'from', 'to', 'attrs']);
  return h('ol', { class: 'timeline', 'data-testid': 'timeline' }, rows.map((t) => {
    const b = t.body;
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
  }));
}

function integrityPanel(run) {
  const mark = h('p', { class: 'verify', 'data-testid': 'verify', 'data-verified': 'pending', role: 'status' },
    'Verifying the hash chain in this page…');
  return {
    el: h('section', { class: 'integrity', 'aria-labelledby': 'integrity-title' },
      h('h2', { id: 'integrity-title' }, 'Hash chain'),
      h('p', {}, h('span', { class: 'k' }, 'Head hash '), h('code', { class: 'hash', 'data-testid': 'head-hash' }, run.head_hash)),
      mark),
    mark,
  };
}

async function renderRun(r, gen) {
  mount(main, h('p', { class: 'muted' }, 'Loading run…'));
  let run;
  let transitions;
  try {
    run = (await app.api.run(r.id)).body;
    transitions = await loadTransitions(r.id, run.transition_count);
  } catch (e) {
    if (gen !== app.generation) return;
    if (e instanceof ApiError && e.kind === 'not_found') {
      mount(main, emptyState('run-not-found', 'No such run in this tenant',
        h('p', {}, `Run “${r.id}” is not in tenant ${app.who.tenant_id || '(none)'} (${SOURCE_TEXT[app.who.tenant_source] || app.who.tenant_source}). It may belong to another tenant, or have been removed by retention.`),
        h('p', {}, h('a', { href: '#/' }, '← All runs'))));
      return;
    }
    showError(e);
    return;
  }
  if (gen !== app.generation) return;

  const states = latestStates(transitions);
  const graph = parseGraph(run.graph);
  if (graph) {
    const known = new Set(graph.nodes.map((n) => n.id));
    for (const id of states.keys()) if (!known.has(id)) graph.nodes.push({ id, label: id });
  }
  const timelineBox = h('div', { class: 'timeline-box' });
  const nodeSelect = h('select', { id: 'node-filter' },
    h('option', { value: '' }, 'All nodes'),
    [...new Set(transitions.filter((t) => t.body.node !== undefined).map((t) => String(t.body.node)))]
      .map((n) => h('option', { value: n }, n)));
  const showNode = (id) => {
    nodeSelect.value = id || '';
    mount(timelineBox, timeline(transitions, id || ''));
  };
  nodeSelect.addEventListener('change', () => showNode(nodeSelect.value));
  showNode('');

  const graphBox = h('div', { class: 'graph-scroll' });
  let graphSection;
  if (graph) {
    graphBox.append(renderGraph(graph, states, (id) => {
      showNode(id);
      timelineBox.scrollIntoView({ block: 'nearest' });
    }));
    const seenStates = [...new Set(states.values())].sort();
    const fit = h('button', { type: 'button', 'aria-pressed': 'true', class: 'fit' }, 'Fit to width');
    fit.addEventListener('click', () => {
      const on = fit.getAttribute('aria-pressed') !== 'true';
      fit.setAttribute('aria-pressed', String(on));
      graphBox.classList.toggle('actual', !on);
    });
    graphSection = h('section', { class: 'graph', 'aria-labelledby': 'graph-title', 'data-testid': 'graph' },
      h('div', { class: 'title-row' }, h('h2', { id: 'graph-title' }, 'Graph'), fit),
      graphBox,
      h('ul', { class: 'legend', 'aria-label': 'Legend' },
        seenStates.map((st) => h('li', {}, h('span', { class: `swatch ${stateClass(st)}` }), st)),
        h('li', {}, h('span', { class: 'swatch st-none' }), 'no transition yet')));
  } else {
    graphSection = h('section', { class: 'graph', 'data-testid': 'graph' },
      h('h2', {}, 'Graph'),
      emptyState('no-graph', 'No graph for this run',
        h('p', {}, 'The producer sent no graph.json (or one with no nodes). The timeline below has every transition.')));
  }

  const integrity = integrityPanel(run);
  const labels = Object.entries(run.labels || {});
  mount(main, h('article', { class: 'run-view', 'data-run': run.run_id },
    h('p', {}, h('a', { href: '#/' }, '← All runs')),
    h('div', { class: 'title-row' },
      h('h1', {}, run.run_id),
      h('span', { class: `badge big ${stateClass(run.status)}`, 'data-testid': 'run-status' }, run.status || 'empty')),
    h('dl', { class: 'facts' },
      h('div', {}, h('dt', {}, 'Source'), h('dd', {}, run.source || '—')),
      h('div', {}, h('dt', {}, 'Transitions'), h('dd', {}, String(run.transition_count))),
      h('div', {}, h('dt', {}, 'First'), h('dd', {}, run.first_ts || '—')),
      h('div', {}, h('dt', {}, 'Last'), h('dd', {}, run.last_ts || '—')),
      labels.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, String(v))))),
    integrity.el,
    graphSection,
    h('section', { class: 'steps', 'aria-labelledby': 'timeline-title' },
      h('div', { class: 'title-row' },
        h('h2', { id: 'timeline-title' }, 'Timeline'),
        h('div', { class: 'node-filter' }, h('label', { for: 'node-filter' }, 'Node'), nodeSelect)),
      timelineBox)));
  main.dataset.view = 'run';

  if (transitions.length < run.transition_count) {
    integrity.mark.dataset.verified = 'false';
    integrity.mark.textContent = `Not verified in the page: the run has ${run.transition_count} transitions, more than the ${MAX_TRANSITIONS} this page checks. Use kahn verify ${run.run_id}.`;
  } else {
    const v = await verifyChain(transitions, run.head_hash);
    if (gen !== app.generation) return;
    integrity.mark.dataset.verified = String(v.ok);
    integrity.mark.className = `verify ${v.ok ? 'ok' : 'bad'}`;
    integrity.mark.textContent = v.ok
      ? `✓ Verified: this page recomputed ${v.checked} content hash${v.checked === 1 ? '' : 'es'} (SHA-256 of RFC 8785 JSON) and the chain, and it ends at the head hash above.`
      : `✗ Not verified: ${v.problem}.`;
  }

  // Follow a live run: redraw when new transitions arrive.
  every(REFRESH_MS, async () => {
    try {
      const now = (await app.api.run(r.id)).body;
      if (gen === app.generation && now.next_seq !== run.next_seq) render();
    } catch (e) {
      if (gen === app.generation && e instanceof ApiError && e.kind === 'unreachable') showError(e);
    }
  });
}

// ---------------------------------------------------------------- main loop

async function render() {
  app.generation += 1;
  const gen = app.generation;
  stopTimer();
  const token = store.token();
  if (!token) {
    renderSignIn();
    return;
  }
  app.api = createApi(token, store.tenant());
  try {
    app.who = (await app.api.whoami()).body;
    const isAdmin = app.who.principal.kind === 'jwt' && app.who.principal.role === 'admin';
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
    app.who = null;
    renderIdentity();
    renderOverride();
    showError(e);
    return;
  }
  if (gen !== app.generation) return;
  renderIdentity();
  renderOverride();
  const r = route();
  if (r.name === 'run') await renderRun(r, gen);
  else await renderRuns(r, gen);
}

window.addEventListener('hashchange', () => {
  render().then(focusMain);
});
render();

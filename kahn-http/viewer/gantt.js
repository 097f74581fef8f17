// The run's Gantt timeline, drawn from the per-node summaries of GET /v1/runs/{id} (`nodes`):
// one row per node, one bar from its started_at to its ended_at (or now while it runs), on an
// axis from the run's started_at to its ended_at (or now). Failed nodes come first. Rows are
// plain HTML so a live refresh moves bars in place instead of redrawing the chart.

import { h, mount } from './dom.js';

/** Class order: what needs attention first. */
const CLASS_ORDER = { failed: 0, cancelled: 1, active: 2, waiting: 3, other: 4, succeeded: 5, skipped: 6 };

const ms = (ts) => (ts ? Date.parse(ts) : NaN);

/** "1 h 2 min", "3.4 s", "120 ms". */
export function formatDuration(d) {
  if (d === null || d === undefined || Number.isNaN(d)) return '—';
  if (d < 1000) return `${Math.round(d)} ms`;
  const sec = d / 1000;
  if (sec < 60) return `${sec < 10 ? sec.toFixed(1) : Math.round(sec)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${Math.round(sec % 60)} s`;
  const hr = Math.floor(min / 60);
  if (hr < 48) return `${hr} h ${min % 60} min`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

function sortNodes(nodes) {
  return [...nodes].sort((a, b) => (CLASS_ORDER[a.class] ?? 9) - (CLASS_ORDER[b.class] ?? 9)
    || (ms(a.started_at) || Infinity) - (ms(b.started_at) || Infinity)
    || a.first_seq - b.first_seq);
}

/**
 * Creates the Gantt section. `fetchLatest(node)` resolves with the node's latest transition
 * (lazily, on hover or focus). Returns `{el, update(run)}`; `update` moves bars in place and
 * adds rows for new nodes. `onSelect(node)` runs when a bar is clicked or chosen with Enter.
 */
export function createGantt(run, fetchLatest, onSelect = () => {}) {
  const rows = new Map();
  const list = h('div', { class: 'gantt-rows', role: 'list' });
  const axis = h('div', { class: 'gantt-axis', 'aria-hidden': 'true' });
  const tip = h('div', { class: 'gantt-tip', role: 'tooltip', id: 'gantt-tip', hidden: true });
  const summary = h('p', { class: 'muted gantt-summary' });
  const el = h('section', { class: 'gantt', 'aria-labelledby': 'gantt-title', 'data-testid': 'gantt' },
    h('div', { class: 'title-row' }, h('h2', { id: 'gantt-title' }, 'Timeline'), summary),
    axis, list, tip);
  let current = run;
  let span = { start: 0, end: 1 };
  const latest = new Map();

  const showTip = async (row, anchor) => {
    const n = row.node;
    const dur = n.duration_ms ?? (n.started_at && !n.ended_at ? Date.now() - ms(n.started_at) : null);
    const attrsBox = h('pre', { class: 'tip-attrs muted' }, 'loading the latest transition…');
    mount(tip,
      h('strong', {}, n.node),
      h('dl', {},
        h('dt', {}, 'state'), h('dd', {}, h('span', { class: `badge cls-${n.class}` }, n.state)),
        h('dt', {}, 'start'), h('dd', {}, n.started_at || 'never active'),
        h('dt', {}, 'end'), h('dd', {}, n.ended_at || (n.class === 'active' ? 'still running' : '—')),
        h('dt', {}, 'duration'), h('dd', {}, `${formatDuration(dur)}${n.ended_at || !n.started_at ? '' : ' so far'}`),
        h('dt', {}, 'attempts'), h('dd', {}, String(n.attempts)),
        h('dt', {}, 'seqs'), h('dd', {}, `#${n.first_seq} … #${n.last_seq}`)),
      h('div', { class: 'k' }, `attrs of #${n.last_seq}`),
      attrsBox);
    tip.hidden = false;
    tip.dataset.node = n.node;
    const box = anchor.getBoundingClientRect();
    const host = el.getBoundingClientRect();
    tip.style.top = `${box.bottom - host.top + 6}px`;
    tip.style.left = `${Math.max(0, Math.min(box.left - host.left, host.width - 340))}px`;
    const key = `${n.node}\u0000${n.last_seq}`;
    try {
      if (!latest.has(key)) latest.set(key, fetchLatest(n));
      const t = await latest.get(key);
      if (tip.dataset.node !== n.node) return;
      const attrs = t && t.body ? t.body.attrs : undefined;
      attrsBox.textContent = attrs === undefined ? '(none)' : JSON.stringify(attrs, null, 2);
      attrsBox.classList.remove('muted');
      attrsBox.dataset.loaded = 'true';
    } catch (e) {
      latest.delete(key);
      attrsBox.textContent = `could not load: ${e.message}`;
    }
  };
  const hideTip = () => {
    tip.hidden = true;
    delete tip.dataset.node;
  };

  const place = (row) => {
    const n = row.node;
    const s0 = ms(n.started_at);
    const width = span.end - span.start || 1;
    row.el.dataset.class = n.class;
    row.el.dataset.state = n.state;
    row.bar.className = `bar cls-${n.class}`;
    row.stateEl.textContent = n.state;
    row.stateEl.className = `gstate cls-${n.class}`;
    const dur = n.duration_ms ?? (n.started_at && !n.ended_at && n.class === 'active' ? Date.now() - s0 : null);
    row.durEl.textContent = formatDuration(dur);
    const track = row.bar.parentElement;
    if (Number.isNaN(s0)) {
      // Never active (e.g. pending → failed): no period to draw, and no time to guess.
      row.bar.style.left = '0%';
      row.bar.style.width = '100%';
      row.bar.classList.add('unstarted');
      track.dataset.empty = `never ran · ${n.state}`;
    } else {
      delete track.dataset.empty;
      const e0 = n.ended_at ? ms(n.ended_at) : (n.class === 'active' ? Math.max(span.end, s0) : s0);
      const left = Math.max(0, Math.min(100, ((s0 - span.start) / width) * 100));
      const w = Math.max(0, Math.min(100 - left, ((e0 - s0) / width) * 100));
      row.bar.style.left = `${left}%`;
      row.bar.style.width = `max(${w}%, 3px)`;
    }
    row.bar.setAttribute('aria-label',
      `${n.node}: ${n.state}, started ${n.started_at || 'never'}, duration ${formatDuration(dur)}, ${n.attempts} attempt${n.attempts === 1 ? '' : 's'}`);
  };

  const addRow = (n) => {
    const bar = h('div', { class: 'bar', tabindex: 0, role: 'button', 'aria-describedby': 'gantt-tip' });
    const stateEl = h('span', { class: 'gstate' });
    const durEl = h('span', { class: 'gdur' });
    const rowEl = h('div', { class: 'gantt-row', role: 'listitem', 'data-node': n.node },
      h('span', { class: 'gname', title: n.node }, n.node),
      h('div', { class: 'track' }, bar),
      stateEl, durEl);
    const row = { node: n, el: rowEl, bar, stateEl, durEl };
    bar.addEventListener('mouseenter', () => showTip(row, bar));
    bar.addEventListener('focus', () => showTip(row, bar));
    bar.addEventListener('mouseleave', () => { if (document.activeElement !== bar) hideTip(); });
    bar.addEventListener('blur', hideTip);
    bar.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') hideTip();
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        onSelect(row.node.node);
      }
    });
    bar.addEventListener('click', () => onSelect(row.node.node));
    rows.set(n.node, row);
    return row;
  };

  const drawAxis = () => {
    const width = span.end - span.start;
    const ticks = [];
    for (let i = 0; i <= 4; i++) {
      const tick = h('span', {}, i === 0 ? '0' : `+${formatDuration((width * i) / 4)}`);
      tick.style.left = `${i * 25}%`; // CSSOM, which the CSP (style-src 'self') allows
      ticks.push(tick);
    }
    mount(axis, h('span', { class: 'gname' }), h('div', { class: 'track' }, ticks), h('span', {}), h('span', {}));
  };

  /** Applies a fresh run summary: new spans, moved bars, new rows (in order), no redraw. */
  const update = (r) => {
    current = r;
    const nodes = r.nodes || [];
    const starts = nodes.map((n) => ms(n.started_at)).filter((x) => !Number.isNaN(x));
    const start = ms(r.started_at) || Math.min(...starts, Date.now());
    const end = r.ended_at ? ms(r.ended_at) : Math.max(Date.now(), ms(r.last_ts) || 0);
    span = { start, end: Math.max(end, start + 1) };
    let added = false;
    for (const n of nodes) {
      const row = rows.get(n.node);
      if (row) row.node = n;
      else { addRow(n); added = true; }
    }
    const order = sortNodes(nodes).map((n) => rows.get(n.node));
    const same = !added && order.every((row, i) => list.children[i] === row.el);
    if (!same) list.replaceChildren(...order.map((row) => row.el));
    for (const row of rows.values()) place(row);
    drawAxis();
    const c = r.node_counts || {};
    summary.textContent = `${nodes.length} node${nodes.length === 1 ? '' : 's'}`
      + `${c.failed ? ` · ${c.failed} failed` : ''}${c.active ? ` · ${c.active} running` : ''}`
      + ` · ${r.ended_at ? `took ${formatDuration(span.end - span.start)}` : `${formatDuration(span.end - span.start)} so far`}`;
    el.dataset.nodes = String(nodes.length);
    if (nodes.length === 0) {
      mount(list, h('p', { class: 'muted' }, 'No node-level transitions yet: nothing to draw.'));
      rows.clear();
    }
  };

  update(run);
  return { el, update, get run() { return current; } };
}

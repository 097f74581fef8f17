// Tiny DOM helpers. Text is always set as text (never parsed as HTML), so data from the API
// cannot inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/'}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  build(el, {}, children);
  return el;
}

/** "3 minutes ago" style, with the exact time for a title attribute. */
export function ago(ts, now = Date.now()) {
  if (!ts) return '—';
  const t = Date.parse(ts);
  if (Number.isNaN(t)) return ts;
  const d = Math.round((now - t) / 1000);
  const abs = Math.abs(d);
  const fmt = (n, unit) => `${n} ${unit}${n === 1 ? '' : 's'}`;
  let text;
  if (abs < 45) text = fmt(abs, 'second');
  else if (abs < 2700) text = fmt(Math.round(abs / 60), 'minute');
  else if (abs < 64800) text = fmt(Math.round(abs / 3600), 'hour');
  else if (abs < 86400 * 45) text = fmt(Math.round(abs / 86400), 'day');
  else return new Date(t).toISOString().slice(0, 10);
  return d >= 0 ? `${text} ago` : `in ${text}`;
}

/** A CSS-safe class suffix for a state name (`succeeded` → `st-succeeded`). */
export function stateClass(state) {
  if (!state) return 'st-none';
  const known = ['pending', 'queued', 'running', 'succeeded', 'success', 'done', 'completed',
    'failed', 'error', 'cancelled', 'canceled', 'skipped', 'retrying', 'blocked', 'timed_out'];
  const norm = String(state).toLowerCase();
  return known.includes(norm) ? `st-${norm}` : 'st-other';
}

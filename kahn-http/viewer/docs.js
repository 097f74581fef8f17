// The API reference at /docs: this server's own OpenAPI document (/openapi.json), rendered in
// the page. Same origin, no CDN; every value from the document is set as text.

import { h, mount } from './dom.js';

const main = document.getElementById('main');

/** `#/components/schemas/RunView` → `RunView`. */
function refName(ref) {
  return ref.split('/').pop();
}

/** A schema in one line: a type, an array of something, a reference, a union. */
function typeText(schema) {
  if (!schema) return '';
  if (schema.$ref) return refName(schema.$ref);
  if (schema.oneOf || schema.anyOf) return (schema.oneOf || schema.anyOf).map(typeText).join(' | ');
  if (schema.allOf) return schema.allOf.map(typeText).join(' & ');
  let t = Array.isArray(schema.type) ? schema.type.join(' | ') : (schema.type || 'any');
  if (t.includes('array') && schema.items) t = t.replace('array', `${typeText(schema.items)}[]`);
  if (schema.format) t += ` (${schema.format})`;
  if (schema.enum) t += `: ${schema.enum.join(', ')}`;
  return t;
}

function typeCell(schema) {
  if (schema && schema.$ref) return h('a', { href: `#schema-${refName(schema.$ref)}` }, refName(schema.$ref));
  if (schema && schema.items && schema.items.$ref) {
    return h('span', {}, h('a', { href: `#schema-${refName(schema.items.$ref)}` }, refName(schema.items.$ref)), '[]');
  }
  return h('code', {}, typeText(schema));
}

function parameters(op) {
  const params = op.parameters || [];
  if (!params.length) return null;
  return h('table', { class: 'docs-table' },
    h('thead', {}, h('tr', {}, h('th', {}, 'parameter'), h('th', {}, 'in'), h('th', {}, 'type'), h('th', {}, 'description'))),
    h('tbody', {}, params.map((p) => h('tr', {},
      h('td', {}, h('code', {}, p.name), p.required ? h('span', { class: 'req' }, ' required') : null),
      h('td', {}, p.in), h('td', {}, typeCell(p.schema)), h('td', {}, p.description || '')))));
}

function body(op) {
  const content = op.requestBody && op.requestBody.content;
  if (!content) return null;
  return h('p', {}, h('strong', {}, 'Body: '),
    Object.entries(content).map(([type, c], i) => [i ? ', ' : '', h('code', {}, type), c.schema ? [' ', typeCell(c.schema)] : null]));
}

function responses(op) {
  return h('table', { class: 'docs-table' },
    h('thead', {}, h('tr', {}, h('th', {}, 'status'), h('th', {}, 'description'), h('th', {}, 'body'))),
    h('tbody', {}, Object.entries(op.responses || {}).map(([status, r]) => h('tr', {},
      h('td', {}, h('code', {}, status)), h('td', {}, r.description || ''),
      h('td', {}, Object.entries(r.content || {}).map(([type, c], i) => [i ? ', ' : '', h('code', {}, type), c.schema ? [' ', typeCell(c.schema)] : null]))))));
}

function operation(path, method, op, doc) {
  const security = op.security || doc.security || [];
  const open = security.length === 0 || security.every((s) => Object.keys(s).length === 0);
  const id = `op-${method}-${path}`.replace(/[^A-Za-z0-9-]/g, '-');
  return h('section', { class: 'docs-op', id, 'data-testid': 'operation' },
    h('h3', {}, h('span', { class: `method m-${method}` }, method.toUpperCase()), ' ', h('code', {}, path),
      h('span', { class: open ? 'auth open' : 'auth' }, open ? 'public' : 'Authorization: Bearer')),
    op.summary ? h('p', {}, op.summary) : null,
    op.description && op.description !== op.summary ? h('p', { class: 'muted' }, op.description) : null,
    parameters(op), body(op), responses(op));
}

function schemas(doc) {
  const all = (doc.components && doc.components.schemas) || {};
  return Object.entries(all).map(([name, schema]) => h('section', { class: 'docs-schema', id: `schema-${name}` },
    h('h3', {}, h('code', {}, name)),
    schema.description ? h('p', {}, schema.description) : null,
    schema.properties ? h('table', { class: 'docs-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'field'), h('th', {}, 'type'), h('th', {}, 'description'))),
      h('tbody', {}, Object.entries(schema.properties).map(([field, p]) => h('tr', {},
        h('td', {}, h('code', {}, field), (schema.required || []).includes(field) ? h('span', { class: 'req' }, ' required') : null),
        h('td', {}, typeCell(p)), h('td', {}, p.description || ''))))) : h('p', {}, h('code', {}, typeText(schema)))));
}

async function render() {
  let doc;
  try {
    const res = await fetch('/openapi.json', { headers: { Accept: 'application/json' }, credentials: 'omit' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    doc = await res.json();
  } catch (e) {
    mount(main, h('p', { class: 'problem', role: 'alert' }, `The API document could not be read: ${e.message}`));
    return;
  }
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || 'other';
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op, doc));
    }
  }
  mount(main,
    h('h1', {}, `${doc.info.title} API ${doc.info.version || ''}`),
    h('p', {}, doc.info.description || ''),
    h('p', { class: 'muted' }, 'Authenticate with ', h('code', {}, 'Authorization: Bearer <API key or JWT>'),
      '; this page is this server\'s own ', h('a', { href: '/openapi.json' }, 'OpenAPI document'), ', rendered.'),
    h('nav', { class: 'docs-toc', 'aria-label': 'Sections' },
      [...byTag.keys()].map((tag) => h('a', { href: `#tag-${tag}` }, tag)), h('a', { href: '#schemas' }, 'schemas')),
    [...byTag.entries()].map(([tag, ops]) => h('section', { id: `tag-${tag}` }, h('h2', {}, tag), ops)),
    h('section', { id: 'schemas' }, h('h2', {}, 'schemas'), schemas(doc)));
}

render();

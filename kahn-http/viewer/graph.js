// graph.json → a layered DAG drawn in SVG.
//
// Shapes understood: {"nodes": [...], "edges": [...]} where a node is a string or an object
// with `id` (or `name`), optionally `label` and dependency lists (`deps`, `depends_on`,
// `needs`, `after`); `nodes` may also be an object keyed by id. An edge is `[from, to]`,
// `{from, to}` or `{source, target}`.

import { s, stateClass } from './dom.js';

const DEP_KEYS = ['deps', 'depends_on', 'dependencies', 'needs', 'after'];

/** Normalises graph.json into `{nodes: [{id, label}], edges: [[from, to]]}`, or null. */
export function parseGraph(graph) {
  if (!graph || typeof graph !== 'object') return null;
  const nodes = new Map();
  const edges = [];
  const addNode = (id, label) => {
    if (id === undefined || id === null) return;
    const key = String(id);
    if (!nodes.has(key)) nodes.set(key, { id: key, label: label ? String(label) : key });
  };
  const addDeps = (id, obj) => {
    for (const k of DEP_KEYS) {
      const deps = obj && obj[k];
      if (Array.isArray(deps)) for (const d of deps) edges.push([String(d), String(id)]);
      else if (typeof deps === 'string') edges.push([deps, String(id)]);
    }
  };
  const raw = graph.nodes;
  if (Array.isArray(raw)) {
    for (const n of raw) {
      if (typeof n === 'string' || typeof n === 'number') addNode(n);
      else if (n && typeof n === 'object') {
        const id = n.id ?? n.name;
        addNode(id, n.label ?? n.name);
        addDeps(id, n);
      }
    }
  } else if (raw && typeof raw === 'object') {
    for (const [id, n] of Object.entries(raw)) {
      addNode(id, n && typeof n === 'object' ? n.label ?? n.name : undefined);
      if (n && typeof n === 'object') addDeps(id, n);
    }
  }
  if (Array.isArray(graph.edges)) {
    for (const e of graph.edges) {
      if (Array.isArray(e) && e.length >= 2) edges.push([String(e[0]), String(e[1])]);
      else if (e && typeof e === 'object') {
        const from = e.from ?? e.source;
        const to = e.to ?? e.target;
        if (from !== undefined && to !== undefined) edges.push([String(from), String(to)]);
      }
    }
  }
  for (const [a, b] of edges) {
    addNode(a);
    addNode(b);
  }
  if (nodes.size === 0) return null;
  const seen = new Set();
  const unique = edges.filter(([a, b]) => {
    const k = `${a}\u0000${b}`;
    if (a === b || seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  return { nodes: [...nodes.values()], edges: unique };
}

/**
 * Layered layout: layers by longest path from the sources (nodes on a cycle are placed after
 * everything else, and the edges closing it drawn as back edges), order within a layer by a
 * few barycenter sweeps to reduce crossings.
 */
export function layout(g) {
  const ids = g.nodes.map((n) => n.id);
  const succ = new Map(ids.map((id) => [id, []]));
  const pred = new Map(ids.map((id) => [id, []]));
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const [a, b] of g.edges) {
    succ.get(a).push(b);
    pred.get(b).push(a);
    indeg.set(b, indeg.get(b) + 1);
  }
  const layer = new Map();
  const queue = ids.filter((id) => indeg.get(id) === 0);
  for (const id of queue) layer.set(id, 0);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    for (const nx of succ.get(id)) {
      layer.set(nx, Math.max(layer.get(nx) ?? 0, layer.get(id) + 1));
      indeg.set(nx, indeg.get(nx) - 1);
      if (indeg.get(nx) === 0) queue.push(nx);
    }
  }
  // Cycles: whatever Kahn's algorithm could not order goes below, one layer each.
  const ordered = new Set(queue);
  let next = Math.max(-1, ...layer.values()) + 1;
  for (const id of ids) if (!ordered.has(id)) layer.set(id, next++);

  // Compact layer numbers, then route every long forward edge through one virtual point per
  // layer it crosses, so it is ordered with the nodes and drawn around them, not through them.
  const used = [...new Set(ids.map((id) => layer.get(id)))].sort((a, b) => a - b);
  const compact = new Map(used.map((l, i) => [l, i]));
  for (const id of ids) layer.set(id, compact.get(layer.get(id)));
  const rows = used.map(() => []);
  for (const id of ids) rows[layer.get(id)].push(id);
  const up = new Map(ids.map((id) => [id, []]));
  const down = new Map(ids.map((id) => [id, []]));
  const routes = [];
  let virtuals = 0;
  for (const [a, b] of g.edges) {
    const la = layer.get(a);
    const lb = layer.get(b);
    const points = [a];
    let prev = a;
    for (let l = la + 1; l < lb; l++) {
      const v = `\u0000v${virtuals++}`;
      rows[l].push(v);
      layer.set(v, l);
      up.set(v, [prev]);
      down.set(v, []);
      down.get(prev).push(v);
      points.push(v);
      prev = v;
    }
    if (lb > la) {
      down.get(prev).push(b);
      up.get(b).push(prev);
    }
    points.push(b);
    routes.push({ from: a, to: b, points, back: lb <= la });
  }
  const isVirtual = (id) => id.startsWith('\u0000v');

  const pos = new Map();
  const reindex = () => rows.forEach((l) => l.forEach((id, i) => pos.set(id, i)));
  reindex();
  const bary = (id, nbrs) => {
    const ps = nbrs.get(id).map((n) => pos.get(n));
    return ps.length ? ps.reduce((x, y) => x + y, 0) / ps.length : pos.get(id);
  };
  for (let sweep = 0; sweep < 6; sweep++) {
    const downward = sweep % 2 === 0;
    const order = downward ? rows.slice(1) : rows.slice(0, -1).reverse();
    for (const l of order) {
      const b = new Map(l.map((id) => [id, bary(id, downward ? up : down)]));
      l.sort((x, y) => b.get(x) - b.get(y));
      reindex();
    }
  }

  const W = 148;
  const H = 40;
  const VW = 14;
  const GX = 20;
  const GY = 56;
  const PAD = 12;
  const rowWidth = (l) => l.reduce((sum, id) => sum + (isVirtual(id) ? VW : W), 0) + GX * (l.length - 1);
  const width = Math.max(...rows.map(rowWidth)) + 2 * PAD;
  const coords = new Map();
  rows.forEach((l, li) => {
    let x = PAD + (width - 2 * PAD - rowWidth(l)) / 2;
    for (const id of l) {
      const w = isVirtual(id) ? VW : W;
      coords.set(id, { x, y: PAD + li * (H + GY), cx: x + w / 2, layer: li, virtual: isVirtual(id) });
      x += w + GX;
    }
  });
  const height = rows.length * (H + GY) - GY + 2 * PAD;
  return { coords, routes, width, height, W, H };
}

/** An SVG path along a route: vertical S-curves between layers, straight through virtual points. */
function routePath(route, coords, H) {
  const c = route.points.map((id) => coords.get(id));
  const first = c[0];
  const last = c[c.length - 1];
  if (route.back) {
    const x1 = first.cx;
    const x2 = last.cx;
    return `M${x1},${first.y} C${x1 + 70},${first.y - 40} ${x2 + 70},${last.y + H + 40} ${x2},${last.y + H}`;
  }
  let d = `M${first.cx},${first.y + H}`;
  let at = { x: first.cx, y: first.y + H };
  for (const p of c.slice(1)) {
    const mid = (at.y + p.y) / 2;
    d += ` C${at.x},${mid} ${p.cx},${mid} ${p.cx},${p.y}`;
    at = { x: p.cx, y: p.y };
    if (p.virtual) {
      d += ` L${p.cx},${p.y + H}`;
      at = { x: p.cx, y: p.y + H };
    }
  }
  return d;
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * The SVG of `g` with each node coloured by `states` (node id → latest state). `onSelect(id)`
 * is called when a node is clicked or chosen with Enter/Space.
 */
export function renderGraph(g, states, onSelect) {
  const { coords, routes, width, height, W, H } = layout(g);
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const svg = s('svg', {
    class: 'dag', viewBox: `0 0 ${width} ${height}`, width, height, role: 'group',
    'aria-label': `Run graph: ${g.nodes.length} nodes, ${g.edges.length} edges`,
  });
  svg.append(s('defs', {},
    s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));
  const edgeLayer = s('g', { class: 'edges' });
  for (const r of routes) {
    edgeLayer.append(s('path', {
      d: routePath(r, coords, H), class: r.back ? 'edge back' : 'edge', 'marker-end': 'url(#arrow)',
    }, s('title', {}, `${r.from} → ${r.to}`)));
  }
  svg.append(edgeLayer);
  const nodeLayer = s('g', { class: 'nodes' });
  for (const [id, c] of coords) {
    if (c.virtual) continue;
    const node = byId.get(id);
    const state = states.get(id);
    const label = node.label;
    const g1 = s('g', {
      class: `node ${stateClass(state)}`, transform: `translate(${c.x},${c.y})`, tabindex: 0,
      role: 'button', 'data-node': id, 'data-state': state || 'none',
      'aria-label': `${label}: ${state || 'no transition yet'}. Show its transitions.`,
      onclick: () => onSelect(id),
      onkeydown: (e) => {
        if (e.key === 'Enter' || e.key === ' ') {
          e.preventDefault();
          onSelect(id);
        }
      },
    },
    s('title', {}, `${label} — ${state || 'no transition yet'}`),
    s('rect', { width: W, height: H, rx: 7 }),
    s('text', { x: W / 2, y: 16, class: 'label', 'text-anchor': 'middle' }, truncate(label, 20)),
    s('text', { x: W / 2, y: 31, class: 'state', 'text-anchor': 'middle' }, state || '—'));
    nodeLayer.append(g1);
  }
  svg.append(nodeLayer);
  return svg;
}

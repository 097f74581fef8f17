// Recomputes a run's hash chain in the page, independently of the server:
// content_hash = SHA-256(RFC 8785 canonical JSON of the body),
// chain[i] = SHA-256(chain[i-1] || content_hash[i]), chain[-1] = 32 zero bytes.

/**
 * RFC 8785 (JCS) canonical JSON: object keys sorted by UTF-16 code units (the default
 * `Array.prototype.sort` order), no whitespace, strings and numbers exactly as ECMAScript's
 * `JSON.stringify` writes them (which is what RFC 8785 specifies).
 */
export function canonicalize(value) {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error('RFC 8785 has no form for a non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalize).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalize(value[k])}`).join(',')}}`;
  }
  throw new Error(`RFC 8785 has no form for a ${typeof value}`);
}

const encoder = new TextEncoder();

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

/** Lower-case hex of bytes. */
export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The SHA-256 of the canonical form of `body`, as hex. */
export async function contentHash(body) {
  return toHex(await sha256(encoder.encode(canonicalize(body))));
}

/**
 * Verifies `transitions` (seq order, from seq 0) against the server's `headHash`.
 * Answers `{ok, checked, head, problem}`: `head` is the recomputed head hash, `problem` says
 * where the first mismatch is.
 */
export async function verifyChain(transitions, headHash) {
  if (!globalThis.crypto || !crypto.subtle) {
    return { ok: false, checked: 0, head: null,
      problem: 'this browser offers no Web Crypto here (it needs a secure context: https or localhost)' };
  }
  let link = new Uint8Array(32);
  let checked = 0;
  for (const [i, t] of transitions.entries()) {
    if (t.seq !== i) {
      return { ok: false, checked, head: null, problem: `expected seq ${i}, the server sent seq ${t.seq}` };
    }
    const content = await sha256(encoder.encode(canonicalize(t.body)));
    if (toHex(content) !== t.content_hash) {
      return { ok: false, checked, head: null,
        problem: `seq ${t.seq}: the body hashes to ${toHex(content)}, the server says ${t.content_hash}` };
    }
    const joined = new Uint8Array(64);
    joined.set(link, 0);
    joined.set(content, 32);
    link = await sha256(joined);
    if (toHex(link) !== t.chain_hash) {
      return { ok: false, checked, head: null,
        problem: `seq ${t.seq}: the chain link is ${toHex(link)}, the server says ${t.chain_hash}` };
    }
    checked += 1;
  }
  const head = toHex(link);
  if (head !== headHash) {
    return { ok: false, checked, head,
      problem: `the recomputed head ${head} differs from the run's head hash ${headHash}` };
  }
  return { ok: true, checked, head, problem: null };
}

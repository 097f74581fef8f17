// The public read API, and nothing else: every call is a GET to this server's origin with the
// credential the user pasted. The viewer has no write path.

/** Why a call failed: `unreachable`, `unauthorized`, `forbidden`, `not_found` or `http`. */
export class ApiError extends Error {
  constructor(kind, message, status = 0, body = null) {
    super(message);
    this.kind = kind;
    this.status = status;
    this.body = body;
  }
}

const TIMEOUT_MS = 10000;

/**
 * A client for one credential and, for an administrator, one read-only tenant override.
 * `get` answers `{body, tenant, source}`: the JSON body and the effective tenant and its
 * source from `X-KAHN-Effective-Tenant` / `X-KAHN-Tenant-Source`.
 */
export function createApi(token, overrideTenant = null) {
  async function get(path, params = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
    }
    const headers = { Accept: 'application/json', Authorization: `Bearer ${token}` };
    if (overrideTenant) headers['X-KAHN-Tenant'] = overrideTenant;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    let res;
    try {
      res = await fetch(url, {
        method: 'GET', headers, cache: 'no-store', credentials: 'omit',
        redirect: 'error', signal: ctl.signal,
      });
    } catch (e) {
      throw new ApiError('unreachable',
        `The KAHN server at ${window.location.origin} did not answer (${e.name === 'AbortError' ? 'timed out' : 'connection failed'}).`);
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok) {
      const msg = (body && body.message) || `HTTP ${res.status}`;
      const kind = { 401: 'unauthorized', 403: 'forbidden', 404: 'not_found' }[res.status] || 'http';
      throw new ApiError(kind, msg, res.status, body);
    }
    if (body === null) throw new ApiError('http', 'The server answered with no JSON body.', res.status);
    return {
      body,
      tenant: res.headers.get('X-KAHN-Effective-Tenant'),
      source: res.headers.get('X-KAHN-Tenant-Source'),
    };
  }

  return {
    overrideTenant,
    whoami: () => get('/v1/whoami'),
    runs: (q) => get('/v1/runs', q),
    run: (id) => get(`/v1/runs/${encodeURIComponent(id)}`),
    transitions: (id, afterSeq, limit) =>
      get(`/v1/runs/${encodeURIComponent(id)}/transitions`, { after_seq: afterSeq, limit }),
    tenants: () => get('/api/admin/tenants'),
  };
}

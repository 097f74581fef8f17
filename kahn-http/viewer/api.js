// The public read API, and nothing else: every call is a GET to this server's origin, with the
// credential the user pasted or, signed in through the identity provider (single sign-on),
// with the server's session cookie. The viewer has no write path; its only other calls are
// the sign-in configuration (`GET /auth/config`) and ending a session (`POST /auth/logout`).

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

/** One request to this server's origin, with a timeout; a network failure is `unreachable`. */
async function send(url, init) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    return await fetch(url, { cache: 'no-store', redirect: 'error', ...init, signal: ctl.signal });
  } catch (e) {
    throw new ApiError('unreachable',
      `The KAHN server at ${window.location.origin} did not answer (${e.name === 'AbortError' ? 'timed out' : 'connection failed'}).`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * How people sign in here: `{oidc: {name, login_url}}` when the server signs people in
 * through an OpenID provider, `{oidc: null}` otherwise (also from a server that predates
 * single sign-on and has no /auth/config). Unreachable: throws `ApiError('unreachable')`.
 */
export async function authConfig() {
  const res = await send(new URL('/auth/config', window.location.origin), {
    method: 'GET', headers: { Accept: 'application/json' }, credentials: 'omit',
  });
  if (!res.ok) return { oidc: null };
  let body = null;
  try {
    body = await res.json();
  } catch {
    return { oidc: null };
  }
  const o = body && body.oidc;
  // Only a same-origin path is followed: the login link never leaves this server.
  if (!o || typeof o.login_url !== 'string' || !/^\/(?![/\\])/.test(o.login_url)) return { oidc: null };
  return { oidc: { name: String(o.name || 'your identity provider'), login_url: o.login_url } };
}

/** Ends the single sign-on session: the server revokes it and clears its cookie. */
export async function logout() {
  const res = await send(new URL('/auth/logout', window.location.origin), {
    method: 'POST', headers: { Accept: 'application/json' }, credentials: 'same-origin',
  });
  if (!res.ok && res.status !== 401) throw new ApiError('http', `Signing out failed: HTTP ${res.status}`, res.status);
}

/**
 * A client for one credential and, for an administrator, one read-only tenant override.
 * With `token` null it reads as the single sign-on session: no Authorization header, the
 * server's HttpOnly session cookie sent by the browser (same origin only).
 * `get` answers `{body, tenant, source}`: the JSON body and the effective tenant and its
 * source from `X-KAHN-Effective-Tenant` / `X-KAHN-Tenant-Source`.
 */
export function createApi(token, overrideTenant = null) {
  async function get(path, params = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
    }
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (overrideTenant) headers['X-KAHN-Tenant'] = overrideTenant;
    // A pasted credential is the only one sent: no cookie rides along with it.
    const res = await send(url, { method: 'GET', headers, credentials: token ? 'omit' : 'same-origin' });
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
    session: !token,
    overrideTenant,
    whoami: () => get('/v1/whoami'),
    runs: (q) => get('/v1/runs', q),
    run: (id) => get(`/v1/runs/${encodeURIComponent(id)}`),
    transitions: (id, afterSeq, limit) =>
      get(`/v1/runs/${encodeURIComponent(id)}/transitions`, { after_seq: afterSeq, limit }),
    tenants: () => get('/api/admin/tenants'),
  };
}

// Requests to the twin's services with the operator's credentials (an API key or an OAuth2
// bearer token, kept in sessionStorage for this tab only), and errors that say what went wrong.

const STORE_KEY = 'citytwin.credentials';

/** The signed-in credentials: {kind: 'key' | 'token', value, user?, expires?} or null. */
export function credentials() {
  try {
    const c = JSON.parse(sessionStorage.getItem(STORE_KEY));
    if (c && c.expires && Date.now() > c.expires) {
      sessionStorage.removeItem(STORE_KEY);
      return null;
    }
    return c && c.value ? c : null;
  } catch {
    return null;
  }
}

export function setCredentials(c) {
  if (c) sessionStorage.setItem(STORE_KEY, JSON.stringify(c));
  else sessionStorage.removeItem(STORE_KEY);
}

/** The header that authenticates a request to the twin ({} when not signed in). */
export function authHeaders() {
  const c = credentials();
  if (!c) return {};
  return c.kind === 'key' ? { 'X-API-Key': c.value } : { Authorization: `Bearer ${c.value}` };
}

export function sameOrigin(url) {
  try {
    return new URL(url, location.href).origin === location.origin;
  } catch {
    return false;
  }
}

/**
 * An absolute URL on this service (MapLibre's workers need absolute tile URLs); tile templates
 * keep their {z}/{x}/{y} unencoded.
 */
export function absolute(path) {
  return /^[a-z][a-z0-9+.-]*:/i.test(path) ? path : location.origin + (path.startsWith('/') ? '' : '/') + path;
}

export class ApiError extends Error {
  constructor(status, body, url) {
    const said = body && (body.error_description || body.error || body.detail || body.title);
    const message = typeof said === 'string' ? said : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body;
    this.url = url;
    this.hint = body && body.hint;
  }

  /** The endpoint is not there (yet) on this service, or the request never got an answer. */
  get missing() {
    return this.status === 404 || this.status === 405 || this.status === 501 || this.status === 0;
  }
}

/**
 * A request to the service; resolves to the parsed JSON (or text) answer, rejects with ApiError.
 * Credentials go along only to this service's own origin.
 */
export async function request(path, { method = 'GET', body, headers = {}, signal, form } = {}) {
  const url = absolute(path);
  const h = { Accept: 'application/json', ...(sameOrigin(url) ? authHeaders() : {}), ...headers };
  let payload;
  if (form) {
    payload = new URLSearchParams(form);
    h['Content-Type'] = 'application/x-www-form-urlencoded';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    h['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(url, { method, headers: h, body: payload, signal });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { error: `no answer from ${path}: ${err.message}` }, url);
  }
  const type = response.headers.get('content-type') || '';
  const text = await response.text(); // rejects with AbortError when cancelled meanwhile
  let data = text;
  if (type.includes('json')) {
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { error: `${path} answered with malformed JSON` };
      if (response.ok) throw new ApiError(502, data, url);
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, typeof data === 'object' ? data : { error: data }, url);
  }
  return data;
}

export const getJSON = (path, options) => request(path, options);
export const postJSON = (path, body, options = {}) =>
  request(path, { ...options, method: 'POST', body });

/** Sign in with a username and password (OAuth2 password grant). */
export async function signInWithPassword(username, password) {
  const doc = await request('/oauth/token', {
    method: 'POST',
    form: { grant_type: 'password', username, password },
  });
  if (!doc || !doc.access_token) throw new ApiError(500, { error: 'the token answer has no access_token' });
  const expires = doc.expires_in ? Date.now() + 1000 * (Number(doc.expires_in) - 10) : undefined;
  setCredentials({ kind: 'token', value: doc.access_token, user: username, expires });
}

/** Sign in with an API key: checked against /me before it is kept. */
export async function signInWithKey(key) {
  const me = await request('/me', { headers: { 'X-API-Key': key } }).catch((err) => {
    // a service without /me yet: keep the key, the next requests will tell
    if (err instanceof ApiError && err.missing) return {};
    throw err;
  });
  setCredentials({ kind: 'key', value: key, user: me.user || me.username || undefined });
}

/**
 * Follow a server-sent event stream with fetch (EventSource can't send an Authorization
 * header): calls onEvent(name, data, id) per event, reconnects with Last-Event-ID after a
 * break; onState('open' | 'closed' | 'missing'). Returns a function that stops it.
 */
export function eventStream(path, { onEvent, onState = () => {}, retryMs = 2000 } = {}) {
  let stopped = false;
  let lastId = null;
  let controller = null;
  let retry = retryMs;

  async function connect() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const headers = { Accept: 'text/event-stream', ...authHeaders() };
        if (lastId) headers['Last-Event-ID'] = lastId;
        const response = await fetch(absolute(path), { headers, signal: controller.signal });
        if (response.status === 404) {
          onState('missing');
          await sleep(15000);
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState('open');
        await readEvents(response.body, (event) => {
          if (event.retry) retry = event.retry;
          if (event.id) lastId = event.id;
          if (event.data !== undefined || event.event) {
            let data = event.data;
            try {
              data = data ? JSON.parse(data) : null;
            } catch {
              /* not JSON: hand on the text */
            }
            onEvent(event.event || 'message', data, event.id);
          }
        });
      } catch (err) {
        if (stopped || err.name === 'AbortError') return;
      }
      onState('closed');
      if (!stopped) await sleep(retry);
    }
  }

  connect();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

async function readEvents(stream, emit) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (Object.keys(event).length) emit(event);
        event = {};
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'data') event.data = event.data === undefined ? val : `${event.data}\n${val}`;
        else if (field === 'event') event.event = val;
        else if (field === 'id') event.id = val;
        else if (field === 'retry' && /^\d+$/.test(val)) event.retry = Number(val);
      }
    }
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Every call the console makes to the gateway, in one place: when the management API
// changes, this file is the one to follow it. The key lives in sessionStorage and goes
// out only as a Bearer header (never in a URL, never in a cookie).

const KEY_SLOT = 'xaiproxy.key';
export const REFUND_FEE = 0.2; // SPEC 4: base worth kept on every refund and delete

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY_SLOT) || '',
  set: (key) => sessionStorage.setItem(KEY_SLOT, key),
  clear: () => sessionStorage.removeItem(KEY_SLOT),
};

let signedOut = () => {};
/** fn(error) runs when the API refuses the stored key (expired, rotated, deleted). */
export function onSignedOut(fn) {
  signedOut = fn;
}

let busy = () => {};
let pending = 0;
/** fn(true) when the console starts waiting on the gateway, fn(false) when nothing is left. */
export function onBusy(fn) {
  busy = fn;
}

function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'console-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function call(method, path, options) {
  if (pending++ === 0) busy(true);
  try {
    return await request(method, path, options);
  } finally {
    if (--pending === 0) busy(false);
  }
}

async function request(method, path, { query, body, key, money } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  const headers = { Authorization: 'Bearer ' + (key || session.key()), Accept: 'application/json' };
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (money) headers['Idempotency-Key'] = idempotencyKey(); // a double submit applies once
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, 'network_error', 'The gateway did not answer: ' + err.message);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    const failure = new ApiError(resp.status, err.code || 'http_' + resp.status,
      err.message || `${resp.status} ${resp.statusText}`);
    if (resp.status === 401 && !key) signedOut(failure);
    throw failure;
  }
  return { data, headers: resp.headers };
}

const get = async (path, query) => (await call('GET', path, { query })).data;
const send = async (method, path, body, money = false) =>
  (await call(method, path, { body, money })).data;
const id = (ident) => encodeURIComponent(String(ident));

/** A page of a list endpoint: items and the X-Total-Count / X-Total-Pages headers. */
async function paged(path, query) {
  const { data, headers } = await call('GET', path, { query });
  return {
    items: data,
    total: Number(headers.get('X-Total-Count') || data.length),
    page: Number(headers.get('X-Page') || 1),
    pages: Number(headers.get('X-Total-Pages') || 1),
  };
}

// -- the signed-in account --------------------------------------------------
export const status = (key) => call('GET', '/dashboard/x-user-status', { key }).then((r) => r.data);
export const info = () => get('/dashboard/x-user-info');
export const ownBill = (range) => get('/dashboard/bill', range);
export const news = () => get('/dashboard/x-user-news');
export const logs = (query) => get('/dashboard/x-user-logs', query);
export const rotateSelf = (confirm) => send('POST', '/x-self', { confirm });

// -- subaccounts --------------------------------------------------------------
export const children = (query) => paged('/x-users', query);
export const descendants = (query) => paged('/x-dna', query);
export const user = (ident) => get('/x-users/' + id(ident));
export const createUser = (body) => send('POST', '/x-users', body, true);
export const updateUser = (ident, body) =>
  send('PUT', '/x-users/' + id(ident), body, 'CreditGranted' in body);
export const deleteUser = (ident) => send('DELETE', '/x-users/' + id(ident), undefined, true);
export const bill = (query) => get('/x-bill', query);

// -- owners: provider keys and config ----------------------------------------
export const keys = (query) => paged('/x-keys', query);
export const addKey = (body) => send('POST', '/x-keys', body);
export const updateKey = (keyId, body) => send('PUT', '/x-keys/' + id(keyId), body);
export const deleteKey = (keyId) => send('DELETE', '/x-keys/' + id(keyId));
export const overview = () => get('/x-conf');
export const config = () => get('/x-config');
export const saveConfig = (batch) => send('PUT', '/x-config', batch);

// -- news -------------------------------------------------------------------
export const createNews = (target, body) =>
  send('POST', target ? '/x-news/' + id(target) : '/x-news', body);
export const deleteNews = (target) => send('DELETE', target ? '/x-news/' + id(target) : '/x-news');

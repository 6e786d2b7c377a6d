// The console's shell: sign-in, the role-aware menu, and one view at a time (#/name).
import * as api from './api.js';
import { h, field, form, input } from './dom.js';
import * as accounts from './views/accounts.js';
import * as config from './views/config.js';
import * as keys from './views/keys.js';
import * as logs from './views/logs.js';
import * as overview from './views/overview.js';
import * as tenants from './views/tenants.js';

// [hash, menu label, view, who sees it]
const VIEWS = [
  ['overview', 'Overview', overview, () => true],
  ['accounts', 'Subaccounts', accounts, (role) => role.parent],
  ['keys', 'Provider keys', keys, (role) => role.owner],
  ['config', 'Config', config, (role) => role.owner],
  ['logs', 'Logs', logs, () => true],
  ['tenants', 'Tenants & news', tenants, (role) => role.root],
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signOutButton = document.getElementById('signout');
let ctx = null; // {status, role, me}

function roleOf(status, me) {
  const root = status.dna === '.1.';
  return {
    root,
    owner: root || Boolean(me.user.Owner),
    parent: root || me.user.Children > 0 || me.limits.ChildLimit > 0,
  };
}

function showSignIn(message) {
  ctx = null;
  nav.replaceChildren();
  who.textContent = '';
  signOutButton.hidden = true;
  const key = input('key', { type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const node = form({ class: 'form signin', 'aria-label': 'Sign in' }, [
    h('h1', { text: 'Sign in' }),
    h('p', { text: 'Sign in with your API key. It stays in this browser tab only (session storage) and is sent as a Bearer header.' }),
    field('API key', key, 'sk-Xvs…'),
    h('button', { type: 'submit', text: 'Sign in' }),
  ], async () => {
    const value = key.value.trim();
    if (!value) throw new Error('Enter your API key.');
    await api.status(value); // the API's own message if the key is refused
    api.session.set(value);
    key.value = '';
    await start();
  });
  main.replaceChildren(node);
  if (message) node.querySelector('.error').textContent = message;
  key.focus();
}

function signOut(message) {
  api.session.clear();
  if (window.location.hash) history.replaceState(null, '', window.location.pathname);
  showSignIn(message);
}

function menu(current) {
  nav.replaceChildren(h('ul', {}, VIEWS.filter(([, , , allowed]) => allowed(ctx.role)).map(([name, label]) =>
    h('li', {}, h('a', { href: `#/${name}`, text: label, 'aria-current': name === current ? 'page' : null })))));
}

async function show() {
  if (!ctx) return;
  const name = (window.location.hash.match(/^#\/([a-z]+)/) || [])[1] || 'overview';
  const entry = VIEWS.find(([n, , , allowed]) => n === name && allowed(ctx.role)) || VIEWS[0];
  menu(entry[0]);
  document.title = `${entry[1]} · xaiproxy console`;
  main.replaceChildren(h('p', { class: 'loading', text: 'Loading…' }));
  const view = h('div', { class: 'view' });
  try {
    await entry[2].render(view, ctx);
    main.replaceChildren(view);
  } catch (err) {
    if (!ctx) return; // signed out meanwhile (the key was refused)
    main.replaceChildren(view, h('p', { class: 'error', role: 'alert', text: err.message }));
  }
  main.dataset.view = entry[0];
  performance.mark('view-ready');
}

async function start() {
  if (!api.session.key()) return showSignIn();
  try {
    const [status, me] = await Promise.all([api.status(), api.info()]);
    ctx = { status, me, role: roleOf(status, me) };
  } catch (err) {
    if (err.status === 401 || err.status === 403) return signOut(err.message);
    main.replaceChildren(h('p', { class: 'error', role: 'alert', text: err.message }));
    return;
  }
  who.textContent = `${ctx.status.name} · #${ctx.status.id}`;
  signOutButton.hidden = false;
  await show();
}

api.onSignedOut((err) => signOut(err.message));
// Busy while any call is out: assistive tech waits for the re-render (so do the tests).
api.onBusy((on) => main.setAttribute('aria-busy', String(on)));
signOutButton.addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('hashchange', () => show());
start();

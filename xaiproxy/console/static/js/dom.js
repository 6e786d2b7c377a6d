// Building the page. Every value reaches the DOM as text (textContent or a text node):
// nothing here parses HTML, so an account name like "<img onerror=...>" stays a name.

const FORBIDDEN = new Set(['innerHTML', 'outerHTML', 'style']);

/** h('button', {class: 'x', onclick: fn, text: 'Go'}, child, ...) */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (FORBIDDEN.has(name)) throw new Error(`h(): ${name} is not allowed`);
    if (name === 'text') node.textContent = String(value);
    else if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== 'string') node[name] = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let uid = 0;
export const nextId = (prefix) => `${prefix}-${++uid}`;

/** A labelled control: the label names the input (for/id), an optional hint describes it. */
export function field(label, control, hint) {
  control.id = control.id || nextId('f');
  const parts = [h('label', { for: control.id, text: label }), control];
  if (hint) {
    const hintId = nextId('hint');
    control.setAttribute('aria-describedby', hintId);
    parts.push(h('small', { id: hintId, class: 'hint', text: hint }));
  }
  return h('div', { class: 'field' }, parts);
}

export const input = (name, props = {}) => h('input', { name, type: 'text', ...props });
export const textarea = (name, props = {}) => h('textarea', { name, rows: 3, ...props });

export function select(name, options, value) {
  const node = h('select', { name });
  for (const [optValue, label] of options) {
    node.append(h('option', { value: optValue, text: label, selected: optValue === value }));
  }
  return node;
}

/** A place for a form's error: the API's message, read out by screen readers. */
export const errorSlot = () => h('p', { class: 'error', role: 'alert' });
export function showError(slot, err) {
  slot.textContent = err ? err.message || String(err) : '';
}

/** A form whose submit runs fn(form); errors land in its own slot, the button is busy meanwhile. */
export function form(props, children, fn) {
  const slot = errorSlot();
  const node = h('form', { class: 'form', novalidate: true, ...props }, children, slot);
  const run = async () => {
    const buttons = node.querySelectorAll('button');
    buttons.forEach((b) => (b.disabled = true));
    showError(slot, null);
    try {
      await fn(node);
    } catch (err) {
      showError(slot, err);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  };
  node.addEventListener('submit', (event) => {
    event.preventDefault();
    run();
  });
  node.run = run; // submit from code, even before the form is in the page
  return node;
}

export const values = (formNode) => Object.fromEntries(new FormData(formNode).entries());

export function card(title, ...children) {
  return h('section', { class: 'card' }, h('h2', { text: title }), children);
}

/** A table: columns are {title, value(row) -> text|Node, num?}. */
export function table(columns, rows, { caption, empty = 'Nothing yet.', rowClass } = {}) {
  if (!rows.length) return h('p', { class: 'empty', text: empty });
  const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null, text: c.title })));
  const body = rows.map((row) =>
    h('tr', { class: rowClass ? rowClass(row) : null },
      columns.map((c) => h('td', { class: c.num ? 'num' : null, 'data-label': c.title }, c.value(row)))));
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data' }, caption ? h('caption', { text: caption }) : null, h('thead', {}, head), h('tbody', {}, body)));
}

/** A definition list of [label, value] pairs. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
}

export function money(value) {
  if (value === null || value === undefined) return 'unlimited';
  return Number(value).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 });
}

export const count = (value) => Number(value || 0).toLocaleString('en-US');
export const when = (iso) => (iso ? String(iso).replace('T', ' ').replace('Z', ' UTC') : '—');
export const today = () => new Date().toISOString().slice(0, 10);
export const monthStart = () => today().slice(0, 8) + '01';
export const dayOf = (unix) => new Date(unix * 1000).toISOString().slice(0, 10);

/** A short-lived message at the top of the main area. */
export function notice(text, kind = 'ok') {
  const main = document.getElementById('main');
  const old = main.querySelector('.notice');
  if (old) old.remove();
  main.prepend(h('p', { class: `notice ${kind}`, role: 'status', text }));
}

/** Prev / next for a paged list; go(page) reloads it. */
export function pager(page, pages, total, go, what = 'items') {
  return h('div', { class: 'pager' },
    h('button', { type: 'button', text: 'Previous', disabled: page <= 1, onclick: safely(() => go(page - 1)) }),
    h('span', { text: `Page ${page} of ${pages} · ${count(total)} ${what}` }),
    h('button', { type: 'button', text: 'Next', disabled: page >= pages, onclick: safely(() => go(page + 1)) }));
}

/** An event handler whose failure shows the API's message instead of escaping. */
export const safely = (fn) => async (event) => {
  try {
    await fn(event);
  } catch (err) {
    notice(err.message || String(err), 'error');
  }
};

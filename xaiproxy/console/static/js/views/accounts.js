// Subaccounts: the tree (find, page, expand), create, and one account's panel.
import * as api from '../api.js';
import { h, card, field, form, input, money, notice, pager, safely } from '../dom.js';
import { accountPanel } from './account.js';

const PAGE_SIZE = 50;
const MAX_DEPTH_CLASS = 6;

function findQuery(text) {
  const value = text.trim();
  if (/^[0-9]+$/.test(value)) return { id: value };
  if (value.includes('@')) return { email: value };
  return { name: value };
}

function createForm(me, done) {
  const name = input('Name', { required: true, autocomplete: 'off', minlength: 4, maxlength: 63 });
  const email = input('Email', { type: 'email', required: true, autocomplete: 'off' });
  const credit = input('CreditGranted', { type: 'number', min: 0, step: 'any', required: true });
  const days = input('Days', { type: 'number', min: 0, max: 365, step: 'any' });
  const alias = input('Alias', { autocomplete: 'off' });
  const result = h('div', { 'aria-live': 'polite' });
  const node = form({ 'aria-label': 'New subaccount' }, [
    h('div', { class: 'row' },
      field('Name', name, '4-63 letters, digits, - _ . with a letter'),
      field('Email', email),
      field('Credit', credit, `Paid from your balance (${money(me.balance.Balance)})`),
      field('Days valid', days, 'Optional; 365 when empty'),
      field('Alias', alias, 'Optional display name')),
    h('button', { type: 'submit', text: 'Create subaccount' }),
  ], async () => {
    const body = { Name: name.value.trim(), Email: email.value.trim(), CreditGranted: Number(credit.value) };
    if (days.value) body.Days = Number(days.value);
    if (alias.value.trim()) body.Alias = alias.value.trim();
    const answer = await api.createUser(body);
    node.reset();
    result.replaceChildren(
      h('p', { text: `Created ${body.Name} (#${answer.User.ID}). Its key, shown once:` }),
      h('output', { class: 'secret', text: answer.User.SecretKey }));
    notice(`Subaccount ${body.Name} created with ${money(body.CreditGranted)} credit.`);
    await done();
  });
  return card('New subaccount', node, result);
}

/** The tree: a table whose rows expand into their children, page by page. */
class Tree {
  constructor(box, onManage) {
    this.box = box;
    this.onManage = onManage;
    this.page = 1;
    this.find = null;
  }

  async load(page = this.page) {
    this.page = page;
    const query = { page, size: PAGE_SIZE, ...(this.find || {}) };
    const list = this.find ? await api.descendants(query) : await api.children(query);
    this.body = h('tbody');
    for (const acc of list.items) this.body.append(this.row(acc, 0));
    const caption = this.find ? 'Accounts found' : 'Your direct subaccounts (expand a row for its own)';
    const headers = ['', 'Name', 'ID', 'Balance', 'Month spend', 'Status', ''];
    this.box.replaceChildren(
      list.items.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'tree' },
          h('caption', { text: caption }),
          h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
          this.body))
        : h('p', { class: 'empty', text: this.find ? 'No account matches.' : 'No subaccounts yet.' }),
      pager(list.page, list.pages, list.total, (p) => this.load(p), 'accounts'));
    performance.mark('accounts-rendered');
  }

  row(acc, depth) {
    const expand = h('button', {
      type: 'button', class: 'expander', 'aria-expanded': 'false',
      'aria-label': `Show the subaccounts of ${acc.Name}`, text: '▸',
    });
    const tr = h('tr', { class: `depth-${Math.min(depth, MAX_DEPTH_CLASS)}`, 'data-dna': acc.DNA },
      h('td', {}, expand),
      h('td', { 'data-label': 'Name', class: 'name' }, acc.Alias && acc.Alias !== acc.Name ? `${acc.Name} (${acc.Alias})` : acc.Name),
      h('td', { 'data-label': 'ID', text: acc.ID }),
      h('td', { 'data-label': 'Balance', class: 'num', text: money(acc.Balance) }),
      h('td', { 'data-label': 'Month spend', class: 'num', text: money(acc.MonthSpend) }),
      h('td', { 'data-label': 'Status', text: acc.Status ? 'enabled' : 'disabled' }),
      h('td', {}, h('button', { type: 'button', text: 'Manage', 'aria-label': `Manage ${acc.Name}`, onclick: safely(() => this.onManage(acc)) })));
    expand.addEventListener('click', safely(() => this.toggle(tr, expand, acc, depth)));
    return tr;
  }

  async toggle(tr, button, acc, depth) {
    if (button.getAttribute('aria-expanded') === 'true') {
      this.collapse(acc.DNA);
      button.setAttribute('aria-expanded', 'false');
      button.textContent = '▸';
      return;
    }
    button.setAttribute('aria-expanded', 'true');
    button.textContent = '▾';
    await this.expand(tr, acc, depth, 1);
  }

  async expand(after, acc, depth, page) {
    const list = await api.descendants({ dna: acc.DNA, level: acc.Level + 1, page, size: PAGE_SIZE });
    let last = after;
    const add = (node) => {
      last.after(node);
      last = node;
    };
    if (!list.items.length) {
      add(this.note(acc, depth + 1, 'No subaccounts.'));
    }
    for (const child of list.items) add(this.row(child, depth + 1));
    if (list.page < list.pages) {
      const more = this.note(acc, depth + 1, '');
      const button = h('button', {
        type: 'button', class: 'quiet', text: `Show more (${list.total - list.page * PAGE_SIZE} left)`,
        onclick: safely(async () => {
          const anchor = more.previousElementSibling;
          more.remove();
          await this.expand(anchor, acc, depth, page + 1);
        }),
      });
      more.lastChild.append(button);
      add(more);
    }
  }

  note(acc, depth, text) {
    // Marked with a DNA below acc's, so collapsing acc removes it too.
    return h('tr', { class: `note depth-${Math.min(depth, MAX_DEPTH_CLASS)}`, 'data-dna': acc.DNA + '~' },
      h('td', {}), h('td', { colspan: 6, text }));
  }

  collapse(dna) {
    for (const tr of [...this.body.querySelectorAll('tr')]) {
      const rowDna = tr.dataset.dna || '';
      if (rowDna !== dna && rowDna.startsWith(dna)) tr.remove();
    }
  }
}

export async function render(main, ctx) {
  const me = ctx.me || (ctx.me = await api.info());
  const listBox = h('div', { class: 'tree-box' });
  const panel = h('div', { id: 'account-panel' });
  const tree = new Tree(listBox, async (acc) => {
    panel.replaceChildren(await accountPanel(acc, me, async () => tree.load()));
    panel.querySelector('h2').focus();
  });
  const what = input('find', { type: 'search', autocomplete: 'off', placeholder: 'ID, name or email' });
  const finder = form({ class: 'form inline', role: 'search', 'aria-label': 'Find an account' }, [
    field('Find an account anywhere below you', what),
    h('button', { type: 'submit', text: 'Find' }),
    h('button', { type: 'button', class: 'quiet', text: 'Show all', onclick: safely(() => {
      what.value = '';
      tree.find = null;
      return tree.load(1);
    }) }),
  ], async () => {
    tree.find = what.value.trim() ? findQuery(what.value) : null;
    await tree.load(1);
  });
  main.append(h('h1', { text: 'Subaccounts' }),
    card('Accounts', finder, listBox),
    panel,
    createForm(me, async () => tree.load()));
  await tree.load(1);
}

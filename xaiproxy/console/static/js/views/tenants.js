// Root: tenants (its direct children; Owner makes one a tenant with its own keys and config)
// and news, system-wide or for one account or DNA group.
import * as api from '../api.js';
import { h, card, count, field, form, input, money, notice, pager, safely, table, textarea, when } from '../dom.js';

const SIZE = 50;

function tenantsCard() {
  const box = h('div');
  const load = async (page) => {
    const list = await api.children({ page, size: SIZE });
    box.replaceChildren(table([
      { title: 'Name', value: (a) => a.Name },
      { title: 'ID', value: (a) => String(a.ID) },
      { title: 'Tenant', value: (a) => (a.Owner ? 'yes (owner)' : 'no') },
      { title: 'Balance', value: (a) => money(a.Balance), num: true },
      { title: 'Month spend', value: (a) => money(a.MonthSpend), num: true },
      { title: '', value: (a) => h('button', {
        type: 'button', text: a.Owner ? 'Make a plain account' : 'Make a tenant',
        onclick: safely(async () => {
          await api.updateUser(a.ID, { Owner: !a.Owner });
          notice(`${a.Name} is ${a.Owner ? 'no longer' : 'now'} a tenant.`);
          await load(page);
        }),
      }) },
    ], list.items, { caption: 'Accounts directly under root', empty: 'No accounts yet.' }),
    pager(list.page, list.pages, list.total, load, 'accounts'));
  };
  return { node: card('Tenants', h('p', { class: 'hint', text: 'A tenant (Owner) runs its own provider keys, config and prices for its whole subtree.' }), box), load };
}

function newsCard() {
  const list = h('div', { 'aria-live': 'polite' });
  const load = async () => {
    const news = await api.news();
    list.replaceChildren(table([
      { title: 'Title', value: (n) => n.title },
      { title: 'Content', value: (n) => n.content },
      { title: 'Expires', value: (n) => when(n.expires_at) },
    ], news.system_news || [], { caption: 'Live system news', empty: 'No system news.' }));
  };
  const title = input('title', { required: true, maxlength: 200 });
  const content = textarea('content', { rows: 3, required: true });
  const days = input('days', { type: 'number', min: 0, max: 365, step: 'any' });
  const target = input('target', { autocomplete: 'off', placeholder: 'empty = everyone' });
  const post = form({ 'aria-label': 'Post news' }, [
    h('div', { class: 'row' }, field('Title', title), field('Days', days, '7 for system news, 32 for targeted when empty'),
      field('For', target, 'An ID, name, email or DNA group like .1.42.; empty = system news')),
    field('Content', content),
    h('button', { type: 'submit', text: 'Post news' }),
  ], async (node) => {
    const body = { title: title.value.trim(), content: content.value };
    if (days.value) body.days = Number(days.value);
    await api.createNews(target.value.trim(), body);
    notice(`News "${body.title}" posted.`);
    node.reset();
    await load();
  });
  const clear = h('button', { type: 'button', class: 'danger', text: 'Delete all system news', onclick: safely(async () => {
    const answer = await api.deleteNews('');
    notice(`Deleted ${count(answer.deleted ?? 0)} system news items.`);
    await load();
  }) });
  return { node: card('News', post, list, clear), load };
}

export async function render(main) {
  const tenants = tenantsCard();
  const news = newsCard();
  main.append(h('h1', { text: 'Tenants and news' }), tenants.node, news.node);
  await Promise.all([tenants.load(1), news.load()]);
}

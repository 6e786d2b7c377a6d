// Operation logs: what this account did, and what was done to it; filters and paging.
import * as api from '../api.js';
import { h, card, field, form, input, select, table } from '../dom.js';

const ACTIONS = ['add_user', 'update_user', 'recharge_user', 'refund_user', 'delete_user', 'add_key',
  'update_key', 'delete_key', 'update_config', 'delete_config', 'cascade_config', 'rotate_self',
  'rotate_root', 'create_news', 'delete_news'];
const SIZE = 25;

export async function render(main) {
  const box = h('div', { 'aria-live': 'polite' });
  const action = select('action', [['', 'any action'], ...ACTIONS.map((a) => [a, a])], '');
  const target = input('target_id', { inputmode: 'numeric', pattern: '[0-9]*', autocomplete: 'off' });
  const status = select('status', [['', 'any status'], ['success', 'success'], ['failed', 'failed']], '');
  let page = 1;
  const load = async (p) => {
    page = p;
    const answer = await api.logs({ page, size: SIZE, action: action.value, target_id: target.value.trim(), status: status.value });
    const pages = Math.max(1, Math.ceil(answer.total / SIZE));
    box.replaceChildren(table([
      { title: 'When (UTC)', value: (r) => r.created_at },
      { title: 'Action', value: (r) => r.action },
      { title: 'By', value: (r) => `#${r.operator_id}` },
      { title: 'Target', value: (r) => `#${r.target_id}` },
      { title: 'Details', value: (r) => r.details },
      { title: 'Status', value: (r) => r.status },
    ], answer.logs, { caption: `Operations, newest first (${answer.total})`, empty: 'No operations match.' }),
    h('div', { class: 'pager' },
      h('button', { type: 'button', text: 'Newer', disabled: page <= 1, onclick: () => load(page - 1).catch(show) }),
      h('span', { text: `Page ${page} of ${pages}` }),
      h('button', { type: 'button', text: 'Older', disabled: !answer.has_more, onclick: () => load(page + 1).catch(show) })));
  };
  const filters = form({ class: 'form inline', 'aria-label': 'Filter the log' }, [
    field('Action', action), field('Target ID', target), field('Status', status),
    h('button', { type: 'submit', text: 'Filter' }),
  ], () => load(1));
  const show = (err) => box.replaceChildren(h('p', { class: 'error', role: 'alert', text: err.message }));
  main.append(h('h1', { text: 'Operation log' }), card('Filters', filters), card('Log', box));
  await load(1);
}

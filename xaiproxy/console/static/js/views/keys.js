// Owners: provider keys with their state (from /x-conf), add, edit, disable, delete.
import * as api from '../api.js';
import { h, card, count, facts, field, form, input, notice, pager, safely, select, table, when } from '../dom.js';

const PAGE_SIZE = 50;

function state(key, health) {
  if (!key.Status) return 'disabled';
  if (key.Sleeping) return `sleeping until ${when(key.SleepUntil)}: ${key.SleepReason || 'no reason given'}`;
  const failures = (health.failures || {})[key.ID] || [];
  return failures.length ? `awake · ${failures.length} recent failures` : 'awake';
}

function failuresText(list) {
  if (!list || !list.length) return 'none';
  return list.slice(-5).reverse().map((f) => `${when(f.at)} ${f.outcome}`).join('; ');
}

function keyForm(key, done) {
  const name = input('Name', { value: key ? key.Name : '', autocomplete: 'off' });
  const provider = input('Provider', { type: 'url', value: key ? key.Provider : '', required: !key, placeholder: 'https://api.openai.com' });
  const level = input('Level', { type: 'number', min: 0, max: 99, step: 1, value: String(key ? key.Level : 1), required: true });
  const secret = input('SecretKey', { type: 'password', autocomplete: 'new-password', required: !key, spellcheck: 'false' });
  const enabled = select('Status', [['true', 'enabled'], ['false', 'disabled']], key && !key.Status ? 'false' : 'true');
  const label = key ? `Edit key #${key.ID}` : 'Add a provider key';
  return form({ 'aria-label': label }, [
    h('h3', { text: label }),
    h('div', { class: 'row' },
      field('Name', name),
      field('Provider URL', provider),
      field('Level', level, 'Models reach it through LEVEL_MAPPER'),
      field('Status', enabled),
      field(key ? 'New secret' : 'Secret key', secret, key ? `Now ${key.SecretKey}; empty keeps it` : 'At least 20 characters; shown masked afterwards')),
    h('button', { type: 'submit', text: key ? 'Save key' : 'Add key' }),
  ], async (node) => {
    const body = { Name: name.value.trim(), Level: Number(level.value), Status: enabled.value === 'true' };
    if (provider.value.trim() && (!key || provider.value.trim() !== key.Provider)) body.Provider = provider.value.trim();
    if (secret.value) body.SecretKey = secret.value;
    const answer = key ? await api.updateKey(key.ID, body) : await api.addKey(body);
    secret.value = '';
    node.reset();
    const mapped = Object.keys(answer.LevelMapper || {}).length ? ' LEVEL_MAPPER extended for its models.' : '';
    notice(`Key #${answer.Key.ID} saved (${answer.Key.SecretKey}).${mapped}`);
    await done();
  });
}

function levelsSummary(health) {
  const rows = Object.entries(health.levels || {}).map(([level, v]) => ({ level, ...v }));
  return table([
    { title: 'Level', value: (r) => r.level },
    { title: 'Keys', value: (r) => count(r.total), num: true },
    { title: 'Enabled', value: (r) => count(r.enabled), num: true },
    { title: 'Awake', value: (r) => count(r.awake), num: true },
  ], rows, { caption: 'Keys by Level', empty: 'No keys yet: add one below.' });
}

export async function render(main) {
  const box = h('div');
  const editBox = h('div', { 'aria-live': 'polite' });
  const summary = h('div');
  let page = 1;
  const load = async (p = page) => {
    page = p;
    const [health, list] = await Promise.all([api.overview(), api.keys({ page, size: PAGE_SIZE })]);
    summary.replaceChildren(levelsSummary(health));
    box.replaceChildren(table([
      { title: 'ID', value: (k) => String(k.ID) },
      { title: 'Name', value: (k) => k.Name },
      { title: 'Level', value: (k) => String(k.Level), num: true },
      { title: 'Provider', value: (k) => k.Provider },
      { title: 'Secret', value: (k) => k.SecretKey },
      { title: 'State', value: (k) => state(k, health) },
      { title: 'Recent failures', value: (k) => failuresText((health.failures || {})[k.ID]) },
      { title: '', value: (k) => actions(k) },
    ], list.items, { caption: 'Provider keys', empty: 'No provider keys.', rowClass: (k) => (k.Status && !k.Sleeping ? '' : 'muted') }),
    pager(list.page, list.pages, list.total, load, 'keys'));
  };
  const actions = (k) => h('div', { class: 'buttons' },
    h('button', { type: 'button', text: 'Edit', 'aria-label': `Edit key ${k.ID}`, onclick: () => {
      editBox.replaceChildren(card(`Key #${k.ID}`, facts([['Created', when(k.CreatedAt)], ['Updated', when(k.UpdatedAt)]]), keyForm(k, load)));
      editBox.querySelector('input').focus();
    } }),
    h('button', { type: 'button', text: k.Status ? 'Disable' : 'Enable', onclick: safely(async () => {
      await api.updateKey(k.ID, { Status: !k.Status });
      notice(`Key #${k.ID} ${k.Status ? 'disabled' : 'enabled'}.`);
      await load();
    }) }),
    h('button', { type: 'button', class: 'danger', text: 'Delete', 'aria-label': `Delete key ${k.ID}`, onclick: (event) => {
      const button = event.currentTarget;
      const confirm = h('button', { type: 'button', class: 'danger', text: `Confirm delete #${k.ID}`, onclick: safely(async () => {
        await api.deleteKey(k.ID);
        notice(`Key #${k.ID} deleted.`);
        await load();
      }) });
      button.replaceWith(confirm);
      confirm.focus();
    } }));
  main.append(h('h1', { text: 'Provider keys' }),
    card('State', summary, h('p', { class: 'hint', text: 'A key sleeps after a 429 or a failed probe; it wakes by itself, or when you enable it again.' })),
    card('Keys', box),
    editBox,
    card('New key', keyForm(null, () => load(1))));
  await load(1);
}

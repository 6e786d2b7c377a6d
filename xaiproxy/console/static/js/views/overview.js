// Every account: balance and grants, month spend against its limits, usage, limits and
// whitelists (read-only), key rotation, news.
import * as api from '../api.js';
import { billCard } from '../bills.js';
import { h, card, count, facts, field, form, input, money, notice, table, when } from '../dom.js';

function balanceCard(me) {
  const grants = me.balance.CreditBalance || [];
  return card('Balance',
    h('p', { class: 'big', text: money(me.balance.Balance) }),
    table([
      { title: 'Remaining', value: (g) => money(g.Remaining), num: true },
      { title: 'Granted', value: (g) => money(g.Amount), num: true },
      { title: 'Kind', value: (g) => g.Reference },
      { title: 'Granted at', value: (g) => when(g.GrantedAt) },
      { title: 'Expires', value: (g) => when(g.ExpiresAt) },
    ], grants, { caption: 'Credit grants, soonest expiry first', empty: 'No unexpired grants.' }));
}

function spendCard(me) {
  const spent = me.usage.month.cost || 0;
  const { HardLimit: hard, SoftLimit: soft } = me.limits;
  const parts = [h('p', {}, h('strong', { text: money(spent) }), ' spent this month (UTC)')];
  if (hard > 0) {
    const meter = h('meter', { id: 'spend-meter', min: 0, max: hard, low: soft, high: soft, optimum: 0, value: Math.min(spent, hard) });
    parts.push(h('label', { for: 'spend-meter', class: 'gauge-label', text: `Month spend: ${money(spent)} of ${money(hard)}` }), meter);
    parts.push(h('p', { class: 'hint', text: `Soft limit ${money(soft)} (an email when crossed) · hard limit ${money(hard)} (requests refused at it)` }));
  } else {
    parts.push(h('p', { class: 'hint', text: 'No monthly hard limit of its own (the limits above it still apply).' }));
  }
  const today = me.usage.today;
  parts.push(h('p', { class: 'hint', text: `Today: ${money(today.cost || 0)} in ${count(today.requests)} requests` }));
  return card('This month', parts);
}

function limitsCard(me) {
  const l = me.limits;
  const w = me.whitelists;
  const rate = (v) => (v ? count(v) : 'none of its own');
  const models = Object.entries(l.ModelLimits || {}).map(([m, v]) =>
    `${m}: ${Object.entries(v).map(([k, n]) => `${k} ${n}`).join(', ')}`);
  return card('Limits and whitelists',
    facts([
      ['Rates', String(me.user.Rates)],
      ['RPM / RPH / RPD', `${rate(l.RPM)} / ${rate(l.RPH)} / ${rate(l.RPD)}`],
      ['TPM / TPH / TPD', `${rate(l.TPM)} / ${rate(l.TPH)} / ${rate(l.TPD)}`],
      ['Model limits', models.length ? models.join('; ') : 'none of its own'],
      ['Subaccounts allowed', count(l.ChildLimit)],
      ['Allowed IPs', w.AllowIPs || '* (any)'],
      ['Allowed models', w.AllowModels || '* (any)'],
      ['Allowed paths', w.Resources || '* (any)'],
    ]),
    h('p', { class: 'hint', text: 'Set by the account above yours; the limits of every account above apply too.' }));
}

function rotateCard(me) {
  const confirmText = () => new Date().toISOString().slice(0, 10) + '-ROTATE-SELF';
  const box = input('confirm', { autocomplete: 'off', spellcheck: 'false' });
  const result = h('div', { 'aria-live': 'polite' });
  const rotate = form({ 'aria-label': 'Rotate your key' }, [
    h('p', { text: `Your key now starts ${me.user.PartialKey}. A new key replaces it at once; the old one stops working.` }),
    field('Type the confirmation', box, `Type ${confirmText()} (today's UTC date) to confirm`),
    h('button', { type: 'submit', class: 'danger', text: 'Rotate my key' }),
  ], async () => {
    const done = await api.rotateSelf(box.value.trim());
    api.session.set(done.rotate.key); // keep this console signed in with the new key
    box.value = '';
    result.replaceChildren(
      h('p', { text: 'Your new key (shown once; store it now):' }),
      h('output', { class: 'secret', text: done.rotate.key }));
    notice('Key rotated. This console now uses the new key.');
  });
  return card('Your key', rotate, result);
}

function newsCard(news) {
  const items = [...(news.system_news || []).map((n) => ({ ...n, kind: 'System' })),
    ...(news.user_news || []).map((n) => ({ ...n, kind: 'For you' }))];
  if (!items.length) return card('News', h('p', { class: 'empty', text: 'No news.' }));
  return card('News', h('ul', { class: 'news' }, items.map((n) => h('li', {},
    h('h3', { text: n.title }),
    h('p', { class: 'hint', text: `${n.kind} · ${when(n.created_at)} · until ${when(n.expires_at)}` }),
    h('p', { class: 'news-body', text: n.content })))));
}

export async function render(main, ctx) {
  const [me, news] = await Promise.all([api.info(), api.news()]);
  ctx.me = me;
  main.append(h('h1', { text: `Account ${me.user.Alias || me.user.Name}` }),
    h('div', { class: 'grid' }, balanceCard(me), spendCard(me)),
    billCard('Your usage', me.user.Name, (range) => api.ownBill(range)),
    h('div', { class: 'grid' }, limitsCard(me), newsCard(news)),
    rotateCard(me));
}

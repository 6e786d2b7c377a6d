// One subaccount: its facts and grants, recharge, refund, enable/disable, edit, bill, delete.
import * as api from '../api.js';
import { billCard } from '../bills.js';
import { h, card, facts, field, form, input, money, notice, table, textarea, when } from '../dom.js';

const NUMBERS = ['Rates', 'HardLimit', 'SoftLimit', 'RPM', 'RPH', 'RPD', 'TPM', 'TPH', 'TPD', 'ChildLimit'];
const LISTS = ['AllowIPs', 'AllowModels', 'Resources'];
const LIST_HINT = 'Space or comma separated; a list sets, -item removes one, * = any, -* = none';

async function parentRates(acc, me) {
  if (acc.ParentID === me.user.ID) return me.user.Rates;
  return (await api.user(acc.ParentID)).Rates;
}

/** What the parent gets back for `amount` of acc's credit: at base worth, less the fee. */
async function refundPreview(acc, me, amount) {
  const rates = await parentRates(acc, me);
  const base = amount / acc.Rates;
  const fee = Math.min(api.REFUND_FEE, base);
  return { fee: fee * rates, back: (base - fee) * rates };
}

function rechargeForm(acc, refresh) {
  const amount = input('amount', { type: 'number', min: 0, step: 'any', required: true });
  const days = input('days', { type: 'number', min: 0, max: 365, step: 'any' });
  return form({ 'aria-label': 'Recharge' }, [
    h('h3', { text: 'Recharge' }),
    field('Amount', amount, 'Paid from the parent\'s balance'),
    field('Days valid', days, 'Optional; 365 when empty'),
    h('button', { type: 'submit', text: 'Recharge' }),
  ], async () => {
    const body = { CreditGranted: Number(amount.value) };
    if (!(body.CreditGranted > 0)) throw new Error('Enter an amount above 0.');
    if (days.value) body.Days = Number(days.value);
    await api.updateUser(acc.ID, body);
    notice(`Recharged ${acc.Name} with ${money(body.CreditGranted)}.`);
    await refresh();
  });
}

function refundForm(acc, me, refresh) {
  const amount = input('amount', { type: 'number', min: 0, step: 'any', required: true });
  const preview = h('div', { class: 'confirm', 'aria-live': 'polite' });
  const node = form({ 'aria-label': 'Refund' }, [
    h('h3', { text: 'Refund' }),
    field('Amount', amount, `At most its balance, ${money(acc.Balance)}`),
    h('button', { type: 'submit', text: 'Review refund' }),
    preview,
  ], async () => {
    const value = Number(amount.value);
    if (!(value > 0)) throw new Error('Enter an amount above 0.');
    const { fee, back } = await refundPreview(acc, me, value);
    const confirm = h('button', { type: 'button', class: 'danger', text: 'Confirm refund' });
    const slot = h('p', { class: 'error', role: 'alert' });
    confirm.addEventListener('click', async () => {
      confirm.disabled = true;
      try {
        const answer = await api.updateUser(acc.ID, { CreditGranted: -value });
        notice(`Refunded ${money(value)} from ${acc.Name}; the parent received ${money(answer.User.Updates.Refunded)}.`);
        await refresh();
      } catch (err) {
        slot.textContent = err.message;
        confirm.disabled = false;
      }
    });
    preview.replaceChildren(
      h('p', { class: 'fee', text: `Refund ${money(value)} from ${acc.Name}: fee ${money(fee)}, the parent receives ${money(back)} (valid 180 days).` }),
      confirm,
      h('button', { type: 'button', class: 'quiet', text: 'Cancel', onclick: () => preview.replaceChildren() }),
      slot);
    confirm.focus();
  });
  return node;
}

function statusForm(acc, refresh) {
  const enable = !acc.Status;
  return form({ 'aria-label': 'Status' }, [
    h('h3', { text: 'Status' }),
    h('p', { text: acc.Status ? 'Enabled. Disabling stops it and every account below it.' : 'Disabled: it and every account below it are refused.' }),
    h('button', { type: 'submit', class: enable ? '' : 'danger', text: enable ? 'Enable' : 'Disable' }),
  ], async () => {
    await api.updateUser(acc.ID, { Status: enable });
    notice(`${acc.Name} ${enable ? 'enabled' : 'disabled'}.`);
    await refresh();
  });
}

/** ModelLimits as the editor shows it, and the body that makes the API hold exactly the edit. */
const limitsText = (limits) => (Object.keys(limits || {}).length ? JSON.stringify(limits, null, 1) : '');

function modelLimitsEdit(current, text) {
  if (!text.trim()) return '*'; // reset
  let edited;
  try {
    edited = JSON.parse(text);
  } catch {
    return text; // let the API say what is wrong with it
  }
  if (!edited || typeof edited !== 'object' || Array.isArray(edited)) return edited;
  const removed = Object.keys(current || {}).filter((m) => !(m in edited));
  return { ...edited, ...Object.fromEntries(removed.map((m) => [m, null])) };
}

function editForm(acc, refresh) {
  const controls = {};
  const fields = [];
  controls.Alias = input('Alias', { value: acc.Alias || '' });
  controls.BillingEmail = input('BillingEmail', { type: 'email', value: acc.BillingEmail || '' });
  fields.push(field('Alias', controls.Alias), field('Billing email', controls.BillingEmail));
  for (const name of NUMBERS) {
    controls[name] = input(name, { type: 'number', min: 0, step: 'any', value: String(acc[name] ?? 0) });
    fields.push(field(name, controls[name], name === 'Rates' ? 'Price multiplier, at least the parent\'s' : '0 = none of its own'));
  }
  const lists = LISTS.map((name) => {
    controls[name] = textarea(name, { rows: 2 });
    controls[name].value = acc[name] || '';
    return field(name, controls[name], LIST_HINT);
  });
  controls.ModelLimits = textarea('ModelLimits', { rows: 3 });
  controls.ModelLimits.value = limitsText(acc.ModelLimits);
  const done = h('p', { class: 'ok', 'aria-live': 'polite' });
  return form({ 'aria-label': 'Edit limits and whitelists' }, [
    h('h3', { text: 'Limits, whitelists and Rates' }),
    h('div', { class: 'row' }, fields),
    lists,
    field('ModelLimits (JSON)', controls.ModelLimits, '{"gpt-4o": {"rpm": 30, "tpm": 90000}}; empty = none'),
    h('button', { type: 'submit', text: 'Save changes' }),
    done,
  ], async () => {
    done.textContent = '';
    const body = {};
    for (const name of ['Alias', 'BillingEmail', ...LISTS]) {
      if (controls[name].value.trim() !== (acc[name] || '')) body[name] = controls[name].value.trim();
    }
    for (const name of NUMBERS) {
      const value = Number(controls[name].value);
      if (controls[name].value === '' || Number.isNaN(value)) throw new Error(`${name} must be a number.`);
      if (value !== acc[name]) body[name] = value;
    }
    if (controls.ModelLimits.value.trim() !== limitsText(acc.ModelLimits).trim()) {
      body.ModelLimits = modelLimitsEdit(acc.ModelLimits, controls.ModelLimits.value);
    }
    if (!Object.keys(body).length) throw new Error('Nothing changed.');
    const answer = await api.updateUser(acc.ID, body);
    notice(`Saved ${Object.keys(answer.User.Updates).join(', ')} for ${acc.Name}.`);
    await refresh();
  });
}

function deleteForm(acc, me, refresh) {
  const preview = h('div', { class: 'confirm', 'aria-live': 'polite' });
  return form({ 'aria-label': 'Delete' }, [
    h('h3', { text: 'Delete' }),
    h('p', { text: 'Its balance is refunded to its parent; its subaccounts move up to the parent; its usage history stays.' }),
    h('button', { type: 'submit', class: 'danger', text: 'Delete…' }),
    preview,
  ], async () => {
    const { fee, back } = await refundPreview(acc, me, acc.Balance || 0);
    const confirm = h('button', { type: 'button', class: 'danger', text: `Confirm: delete ${acc.Name}` });
    const slot = h('p', { class: 'error', role: 'alert' });
    confirm.addEventListener('click', async () => {
      confirm.disabled = true;
      try {
        const answer = await api.deleteUser(acc.ID);
        notice(`Deleted ${acc.Name}; the parent received ${money(answer.User.Refunded)}.`);
        document.getElementById('account-panel').replaceChildren();
        await refresh();
      } catch (err) {
        slot.textContent = err.message;
        confirm.disabled = false;
      }
    });
    preview.replaceChildren(
      h('p', { class: 'fee', text: `Refund of its balance ${money(acc.Balance)}: fee ${money(Math.max(fee, 0))}, the parent receives about ${money(Math.max(back, 0))} (less what its requests in flight hold).` }),
      confirm,
      h('button', { type: 'button', class: 'quiet', text: 'Cancel', onclick: () => preview.replaceChildren() }),
      slot);
    confirm.focus();
  });
}

export async function accountPanel(summary, me, reloadTree) {
  const acc = await api.user(summary.ID);
  const box = h('div');
  const refresh = async () => {
    await reloadTree();
    const fresh = await accountPanel(acc, me, reloadTree);
    box.replaceWith(fresh);
  };
  box.append(card(`${acc.Name} (#${acc.ID})`,
    facts([
      ['Email', acc.Email],
      ['Alias', acc.Alias],
      ['Status', acc.Status ? 'enabled' : 'disabled'],
      ['Balance', money(acc.Balance)],
      ['Credit granted', money(acc.CreditGranted)],
      ['Month spend', `${money(acc.MonthSpend)} of ${money(acc.HardLimit)} (soft ${money(acc.SoftLimit)})`],
      ['Rates', String(acc.Rates)],
      ['Level / DNA', `${acc.Level} · ${acc.DNA}`],
      ['Key', `${acc.PartialKey}…`],
      ['Created', when(acc.CreatedAt)],
    ]),
    table([
      { title: 'Remaining', value: (g) => money(g.Remaining), num: true },
      { title: 'Granted', value: (g) => money(g.Amount), num: true },
      { title: 'Kind', value: (g) => g.Reference },
      { title: 'Expires', value: (g) => when(g.ExpiresAt) },
    ], acc.CreditBalance, { caption: 'Its credit grants', empty: 'No unexpired grants.' }),
    h('div', { class: 'grid actions' }, rechargeForm(acc, refresh), refundForm(acc, me, refresh), statusForm(acc, refresh)),
    editForm(acc, refresh),
    deleteForm(acc, me, refresh)),
  billCard(`Bill of ${acc.Name}`, acc.Name, (range) => api.bill({ user: acc.ID, ...range })));
  const title = box.querySelector('h2');
  title.tabIndex = -1;
  return box;
}

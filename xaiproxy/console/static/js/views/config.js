// Owners: the config editor. Changed keys go to PUT /x-config as ONE batch, which the API
// validates whole and applies whole (or not at all, with its message shown here).
import * as api from '../api.js';
import { h, card, field, form, input, notice, select, textarea } from '../dom.js';

const MAPPERS = [
  ['MODEL_MAPPER', 'Model aliases: gpt-3.5*=gpt-4o-mini, o*=gpt-4o'],
  ['LEVEL_MAPPER', 'Model to Level: gpt-4*=2, claude*=3 (default Level 1)'],
  ['SWITCH_OVER', 'Level fallback: 1=2, 2=3'],
];
const JSON_KEYS = [
  ['MODEL_LIMITS', '{"gpt-4o": {"rpm": 30, "tpm": 90000}}; empty = none'],
  ['PRICING', '{"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}} USD per million tokens'],
];
const TEXT_KEYS = [
  ['XAI_MAIL', 'Sender address'],
  ['EMAIL_SMTP', 'SMTP host'],
  ['EMAIL_PORT', '25, 465, 587 or 2525'],
  ['EMAIL_AUTH', 'SMTP user name'],
];
const NUMBER_KEYS = [
  ['USER_MIN_BALANCE', 'Least credit a new subaccount starts with (default 2)'],
  ['USER_API_BALANCE', 'Balance an account needs to manage others (default 20)'],
  ['LOW_BALANCE', 'Low-balance email threshold (default 3)'],
];

const pairs = (value) => Object.entries(value || {}).map(([k, v]) => `${k}=${v}`).join(', ');
const pretty = (value) => (value && Object.keys(value).length ? JSON.stringify(value, null, 1) : '');

/** The JSON keys merge on the server; null entries drop the models removed in the editor. */
function mergeEdit(current, text) {
  if (!text.trim()) return '*';
  let edited;
  try {
    edited = JSON.parse(text);
  } catch {
    return text; // the API names what is wrong with it
  }
  if (!edited || typeof edited !== 'object' || Array.isArray(edited)) return edited;
  const removed = Object.keys(current || {}).filter((m) => !(m in edited));
  return { ...edited, ...Object.fromEntries(removed.map((m) => [m, null])) };
}

function editor(cfg, reload) {
  const shown = {};
  const controls = {};
  const rows = [];
  for (const [key, hint] of MAPPERS) {
    shown[key] = pairs(cfg[key]);
    controls[key] = textarea(key, { rows: 2 });
    rows.push(field(key, controls[key], hint));
  }
  shown.RESOURCES = Object.keys(cfg.RESOURCES || {}).join(', ');
  controls.RESOURCES = textarea('RESOURCES', { rows: 2 });
  rows.push(field('RESOURCES', controls.RESOURCES, 'Allowed paths: /v1/chat/completions, /v1/embeddings; empty = all'));
  for (const [key, hint] of JSON_KEYS) {
    shown[key] = pretty(cfg[key]);
    controls[key] = textarea(key, { rows: 4, class: 'code' });
    rows.push(field(key, controls[key], hint));
  }
  const mail = [];
  for (const [key, hint] of [...TEXT_KEYS, ...NUMBER_KEYS]) {
    shown[key] = cfg[key] === undefined ? '' : String(cfg[key]);
    controls[key] = input(key, { autocomplete: 'off' });
    mail.push(field(key, controls[key], hint));
  }
  shown.EMAIL_TLS = cfg.EMAIL_TLS === undefined ? '' : String(cfg.EMAIL_TLS);
  controls.EMAIL_TLS = select('EMAIL_TLS', [['', '(not set)'], ['true', 'true (implicit TLS)'], ['starttls', 'starttls'], ['false', 'false']], shown.EMAIL_TLS);
  controls.EMAIL_PASS = input('EMAIL_PASS', { type: 'password', autocomplete: 'new-password' });
  shown.EMAIL_PASS = '';
  mail.push(field('EMAIL_TLS', controls.EMAIL_TLS),
    field('EMAIL_PASS', controls.EMAIL_PASS, cfg.EMAIL_PASS ? 'Set (never shown); empty keeps it' : 'Not set'));
  for (const [key, value] of Object.entries(shown)) controls[key].value = value;

  const done = h('p', { class: 'ok', 'aria-live': 'polite' });
  return form({ 'aria-label': 'Owner config' }, [
    h('fieldset', {}, h('legend', { text: 'Routing and access' }), rows),
    h('fieldset', {}, h('legend', { text: 'Email and thresholds' }), h('div', { class: 'row' }, mail)),
    h('button', { type: 'submit', text: 'Save config' }),
    done,
  ], async () => {
    done.textContent = '';
    const batch = {};
    for (const [key, control] of Object.entries(controls)) {
      const value = control.value.trim();
      if (value === shown[key].trim()) continue;
      if (key === 'EMAIL_PASS' && !value) continue;
      batch[key] = JSON_KEYS.some(([k]) => k === key) ? mergeEdit(cfg[key], control.value) : value;
    }
    if (!Object.keys(batch).length) throw new Error('Nothing changed.');
    const answer = await api.saveConfig(batch);
    notice(`Config saved as version ${answer.version}: ${Object.keys(batch).join(', ')}.`);
    await reload();
  });
}

export async function render(main) {
  const box = h('div');
  const reload = async () => {
    const cfg = await api.config();
    box.replaceChildren(card(`Config (version ${cfg.version})`, editor(cfg.configs, reload)));
  };
  main.append(h('h1', { text: 'Config' }),
    h('p', { class: 'hint', text: 'Applies to your whole subtree from the next request; no restart.' }), box);
  await reload();
}

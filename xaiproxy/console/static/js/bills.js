// A usage report (the /x-bill and /dashboard/bill shape): range picker, charts, tables, CSV.
import * as charts from './charts.js';
import { h, card, count, dayOf, field, form, input, money, monthStart, table, today } from './dom.js';

/** Totals per model over the whole report, most expensive first. */
export function byModel(report) {
  const models = new Map();
  for (const day of report.data || []) {
    for (const [model, u] of Object.entries(day.usage_details || {})) {
      const m = models.get(model) || { model, requests: 0, prompt: 0, completion: 0, cost: 0 };
      m.requests += u.requests;
      m.prompt += u.prompt;
      m.completion += u.completion;
      m.cost += u.cost;
      models.set(model, m);
    }
  }
  return [...models.values()].sort((a, b) => b.cost - a.cost || b.requests - a.requests);
}

const CSV_HEAD = ['date', 'model', 'requests', 'prompt_tokens', 'completion_tokens', 'cost'];

function cell(value) {
  let text = String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text; // no formulas when opened in a spreadsheet
  return /[",\n\r]/.test(text) ? '"' + text.replaceAll('"', '""') + '"' : text;
}

/** One line per day and model, as the report has them. */
export function toCsv(report) {
  const lines = [CSV_HEAD.join(',')];
  for (const day of report.data || []) {
    for (const [model, u] of Object.entries(day.usage_details || {})) {
      const row = [dayOf(day.aggregation_timestamp), model, u.requests, u.prompt, u.completion, u.cost];
      lines.push(row.map(cell).join(','));
    }
  }
  return lines.join('\r\n') + '\r\n';
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const link = h('a', { href: url, download: name, class: 'hidden' });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

const DAY = 86400;

/** One point per day of the range (days without usage are zero), so the chart has no gaps. */
function everyDay(range, days) {
  const byDay = new Map(days.map((d) => [d.aggregation_timestamp, d]));
  const out = [];
  const first = Date.parse(range.s + 'T00:00:00Z') / 1000;
  const last = Math.min(Date.parse(range.e + 'T00:00:00Z') / 1000, first + 366 * DAY);
  for (let at = first; at <= last; at += DAY) {
    const d = byDay.get(at);
    out.push({
      at,
      cost: d ? Object.values(d.usage_details).reduce((s, u) => s + u.cost, 0) : 0,
      requests: d ? d.n_requests : 0,
    });
  }
  return out;
}

/** The report's charts and tables. */
function render(box, report, range) {
  const label = `${range.s} to ${range.e}`;
  box.replaceChildren();
  const total = report.total_usage || { requests: 0, cost: 0 };
  box.append(h('p', { class: 'totals' },
    h('strong', { text: money(total.cost) }), ` spent in ${count(total.requests)} requests`));
  const days = report.data || [];
  if (!days.length) {
    box.append(h('p', { class: 'empty', text: 'No usage in this range.' }));
    return;
  }
  box.append(h('h3', { text: 'By day' }));
  const series = everyDay(range, days);
  charts.daily(box, series.map((d) => d.at), series.map((d) => d.cost), series.map((d) => d.requests));
  const models = byModel(report);
  box.append(h('h3', { text: 'By model' }));
  charts.bars(box, models.map((m) => m.model), models.map((m) => m.cost), 'Cost');
  box.append(table([
    { title: 'Model', value: (m) => m.model },
    { title: 'Requests', value: (m) => count(m.requests), num: true },
    { title: 'Prompt tokens', value: (m) => count(m.prompt), num: true },
    { title: 'Completion tokens', value: (m) => count(m.completion), num: true },
    { title: 'Cost', value: (m) => money(m.cost), num: true },
  ], models, { caption: `Usage by model · ${label}` }));
  if (report.usage_users && report.usage_users.length) {
    box.append(h('h3', { text: 'By account' }), table([
      { title: 'Account', value: (u) => u.name || `#${u.id}` },
      { title: 'Requests', value: (u) => count(u.total_requests), num: true },
      { title: 'Cost', value: (u) => money(u.total_cost), num: true },
      { title: 'Share', value: (u) => `${u.usage_analysis.cost_percentage}%`, num: true },
    ], report.usage_users));
  }
}

/**
 * A card with a date range and a report; load({s, e}) fetches it.
 * `name` names the CSV file; the export holds exactly what is shown.
 */
export function billCard(title, name, load) {
  const box = h('div', { class: 'bill', 'aria-live': 'polite' });
  let shown = null;
  const start = input('s', { type: 'date', value: monthStart(), required: true });
  const end = input('e', { type: 'date', value: today(), required: true });
  const exportButton = h('button', { type: 'button', class: 'quiet', text: 'Export CSV', disabled: true });
  exportButton.addEventListener('click', () => {
    if (shown) download(`bill-${name}-${shown.range.s}-${shown.range.e}.csv`, toCsv(shown.report));
  });
  const picker = form({ class: 'form inline', 'aria-label': `${title} range` },
    [field('From', start), field('To', end), h('button', { type: 'submit', text: 'Show' }), exportButton],
    async () => {
      const range = { s: start.value, e: end.value };
      const report = await load(range);
      shown = { range, report };
      exportButton.disabled = false;
      render(box, report, range);
    });
  const section = card(title, picker, box);
  picker.run();
  return section;
}

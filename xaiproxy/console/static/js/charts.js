// Charts, drawn by the vendored uPlot (see vendor/uplot-*/README.md).
import uPlot from '../vendor/uplot-1.6.32/uPlot.esm.js';
import { h } from './dom.js';

const COLORS = ['#2563eb', '#d97706', '#059669', '#dc2626', '#7c3aed', '#0891b2'];
const HEIGHT = 220;
const DAY = 86400;
const DAY_STEPS = [DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 365 * DAY];

function mount(container, make) {
  const box = h('div', { class: 'chart' });
  container.append(box);
  const width = () => Math.max(box.clientWidth, 200);
  const plot = make(width());
  box.append(plot.root);
  // Follow the layout (phone rotation, window resize) without a horizontal scroll.
  new ResizeObserver(() => plot.setSize({ width: width(), height: HEIGHT })).observe(box);
  return plot;
}

/** Cost and requests per day: days are unix seconds (UTC midnights). */
export function daily(container, days, cost, requests) {
  return mount(container, (width) => new uPlot({
    width,
    height: HEIGHT,
    series: [
      {},
      { label: 'Cost', stroke: COLORS[0], width: 2, scale: 'cost', value: (u, v) => (v == null ? '—' : v.toFixed(4)) },
      { label: 'Requests', stroke: COLORS[1], width: 2, scale: 'req' },
    ],
    axes: [
      { incrs: DAY_STEPS, values: (u, splits) => splits.map((v) => new Date(v * 1000).toISOString().slice(5, 10)) },
      { scale: 'cost', label: 'Cost', values: axisValues, size: 60 },
      { scale: 'req', side: 1, grid: { show: false }, values: axisValues },
    ],
    scales: { x: { time: true, range: padded }, cost: { range: fromZero }, req: { range: fromZero } },
  }, [days, cost, requests]));
}

/** One bar per label (e.g. cost by model). */
export function bars(container, labels, values, title) {
  const xs = labels.map((_, i) => i);
  return mount(container, (width) => new uPlot({
    width,
    height: HEIGHT,
    series: [
      { value: (u, i) => (i == null ? '—' : labels[i] ?? '') },
      { label: title, fill: COLORS[0] + 'aa', stroke: COLORS[0], paths: uPlot.paths.bars({ size: [0.6, 64] }), points: { show: false } },
    ],
    axes: [
      { splits: () => xs, values: (u, splits) => splits.map((i) => shorten(labels[i] ?? '')), rotate: 0 },
      { label: title, values: axisValues, size: 60 },
    ],
    scales: { x: { time: false, range: [-0.5, Math.max(labels.length - 0.5, 0.5)] }, y: { range: fromZero } },
  }, [xs, values]));
}

// Small costs (fractions of a cent) still get readable ticks.
const axisValues = (u, splits) => splits.map((v) => (v == null ? '' : String(Number(v.toPrecision(3)))));
const fromZero = (u, min, max) => [0, max > 0 ? max * 1.1 : 1];
// A single day still gets a visible span around it.
const padded = (u, min, max) => (max - min < 86400 ? [min - 43200, max + 43200] : [min, max]);

const shorten = (text) => (text.length > 14 ? text.slice(0, 13) + '…' : text);

// A small time-series chart drawn as SVG: the line of the readings, the time and value axes
// with a few round ticks, and the latest value marked.

const SVG = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Round tick values covering [lo, hi], about `count` of them. */
function ticks(lo, hi, count = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function timeLabel(ms, span) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return span > 2 * 86400e3 ? `${d.getMonth() + 1}/${d.getDate()} ${hm}` : hm;
}

/**
 * Draw `points` ([[iso time, value], ...]) into `container` (replacing what it holds).
 * `unit` labels the value axis. Returns the SVG element.
 */
export function drawChart(container, points, { unit = '', width = 320, height = 170, colour = '#1f6fd1' } = {}) {
  container.replaceChildren();
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img' });
  container.append(svg);
  if (!points.length) return svg;
  const xs = points.map((p) => Date.parse(p[0]));
  const ys = points.map((p) => Number(p[1]));
  const m = { left: 44, right: 10, top: 10, bottom: 24 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 60e3;
  if (y1 === y0) {
    y0 -= 1;
    y1 += 1;
  }
  const pad = (y1 - y0) * 0.08;
  y0 -= pad;
  y1 += pad;
  const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * w;
  const sy = (y) => m.top + h - ((y - y0) / (y1 - y0)) * h;

  for (const v of ticks(y0, y1)) {
    svg.append(el('line', { x1: m.left, x2: m.left + w, y1: sy(v), y2: sy(v), class: 'grid' }));
    svg.append(el('text', { x: m.left - 4, y: sy(v) + 3, 'text-anchor': 'end', class: 'tick' }, String(v)));
  }
  const span = x1 - x0;
  const hour = 3600e3;
  const step = [5 * 60e3, 15 * 60e3, 30 * 60e3, hour, 3 * hour, 6 * hour, 12 * hour, 24 * hour]
    .find((s) => span / s <= 5) || 24 * hour;
  for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
    svg.append(el('line', { x1: sx(t), x2: sx(t), y1: m.top, y2: m.top + h, class: 'grid' }));
    const anchor = sx(t) > width - m.right - 16 ? 'end' : 'middle';
    svg.append(el('text', { x: sx(t), y: height - 8, 'text-anchor': anchor, class: 'tick' }, timeLabel(t, span)));
  }
  svg.append(el('text', { x: 4, y: m.top + 2, class: 'unit', 'dominant-baseline': 'hanging' }, unit));
  const d = xs.map((x, i) => `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join('');
  svg.append(el('path', { d, fill: 'none', stroke: colour, 'stroke-width': 1.6, class: 'series' }));
  const last = xs.length - 1;
  svg.append(el('circle', { cx: sx(xs[last]), cy: sy(ys[last]), r: 3, fill: colour }));
  return svg;
}

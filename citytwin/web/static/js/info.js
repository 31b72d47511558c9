// The details panel: a feature's attributes (GET /collections/{cid}/items/{fid}), a sensor's
// latest readings and the chart of one of its datastreams, an alarm's or incident's record.

import { ApiError, getJSON } from './api.js';
import { drawChart } from './chart.js';
import { t, title } from './i18n.js';
import { SEVERITY_COLOURS, STATE_COLOURS } from './map.js';

const HIDDEN = new Set(['geometry_3d', 'props']);

function value(v) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toPrecision(6).replace(/\.?0+$/, '');
  if (Array.isArray(v)) return v.length ? v.map(value).join(', ') : '—';
  if (typeof v === 'object') {
    const parts = Object.entries(v).map(([k, x]) => `${k}: ${value(x)}`);
    return parts.length ? parts.join('; ') : '—';
  }
  return String(v);
}

function table(rows) {
  const tbl = document.createElement('table');
  tbl.className = 'attributes';
  for (const [k, v] of rows) {
    const tr = tbl.insertRow();
    const th = document.createElement('th');
    th.textContent = k;
    const td = tr.insertCell();
    td.textContent = value(v);
    tr.prepend(th);
  }
  return tbl;
}

function heading(text, sub) {
  const h = document.createElement('h3');
  h.textContent = text;
  if (sub) {
    const s = document.createElement('small');
    s.textContent = ` ${sub}`;
    h.append(s);
  }
  return h;
}

function note(text, cls = 'note') {
  const p = document.createElement('p');
  p.className = cls;
  p.textContent = text;
  return p;
}

export class InfoPanel {
  constructor(body, collections) {
    this.body = body;
    this.collections = new Map(collections.map((c) => [c.id, c]));
    this.shown = null;
  }

  clear() {
    this.body.replaceChildren(note(t('click_hint')));
    this.shown = null;
  }

  /** Show a feature of a collection (its attributes from the features service). */
  async showFeature(cid, fid, fallback = {}) {
    this.shown = { cid, fid };
    const coll = this.collections.get(cid);
    this.body.replaceChildren(heading(String(fid), coll ? title(coll) : cid), note('…'));
    let props = fallback;
    let problem = null;
    try {
      const doc = await getJSON(`/collections/${encodeURIComponent(cid)}/items/${encodeURIComponent(fid)}?f=json`);
      props = { ...(doc.properties || {}) };
      if (doc.id !== undefined && props.id === undefined) props.id = doc.id;
    } catch (err) {
      problem = err instanceof ApiError && err.missing && err.status !== 404
        ? t('unavailable', { what: 'features', why: err.message })
        : err.message;
    }
    if (this.shown.fid !== fid) return;
    const rows = Object.entries(props).filter(([k]) => !HIDDEN.has(k));
    this.body.replaceChildren(heading(String(fid), coll ? title(coll) : cid), table(rows));
    if (problem) this.body.append(note(problem, 'error'));
  }

  /** Show a sensor: its state, latest readings and the chart of its first datastream. */
  async showSensor(props) {
    const fid = props.id;
    this.shown = { cid: 'devices', fid };
    const state = props.state || 'no_data';
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.style.background = state === 'alarm' ? SEVERITY_COLOURS[props.severity] || STATE_COLOURS.alarm : STATE_COLOURS[state];
    badge.textContent = t(`state_${state}`);
    const head = heading(props.name || fid, props.class);
    head.append(' ', badge);
    this.body.replaceChildren(head, note('…'));
    let sensor = props;
    try {
      const doc = await getJSON(`/console/api/sensors?ids=${encodeURIComponent(fid)}&readings=true`);
      if (doc.features && doc.features.length) sensor = doc.features[0].properties;
    } catch (err) {
      this.body.append(note(err.message, 'error'));
    }
    if (this.shown.fid !== fid) return;
    const readings = sensor.readings || [];
    const rows = [
      ['id', fid],
      ['class', sensor.class],
      ['network', sensor.network],
      ['feature_id', sensor.feature_id],
      [t('latest'), sensor.latest ? new Date(sensor.latest).toLocaleString() : null],
      ...readings.map((r) => [r.property, r.value === null ? null : `${value(r.value)} ${r.unit || ''}`]),
    ];
    const chartBox = document.createElement('div');
    chartBox.className = 'chart-box';
    const pick = document.createElement('select');
    pick.id = 'chart-datastream';
    for (const r of readings) pick.add(new Option(`${r.property} (${r.unit || ''})`, r.datastream));
    pick.addEventListener('change', () => this.chart(pick.value, chartBox));
    this.body.replaceChildren(head, table(rows), heading(t('readings')), pick, chartBox);
    if (readings.length) await this.chart(readings[0].datastream, chartBox);
    else chartBox.append(note(t('no_readings')));
  }

  /** Draw a datastream's last day of readings (downsampled on the server). */
  async chart(datastream, box) {
    box.replaceChildren(note(t('chart_loading')));
    box.dataset.datastream = datastream;
    try {
      const width = Math.max(200, Math.round(box.clientWidth || 320));
      const doc = await getJSON(`/console/api/series?datastream=${encodeURIComponent(datastream)}&buckets=${width}`);
      if (box.dataset.datastream !== datastream) return;
      if (!doc.points.length) {
        box.replaceChildren(note(t('no_readings')));
        return;
      }
      drawChart(box, doc.points, { unit: doc.unit || '' });
      box.dataset.points = String(doc.points.length);
    } catch (err) {
      box.replaceChildren(note(err.message, 'error'));
    }
  }

  /** Show an alarm (with its log) or an incident. */
  async showEvent(kind, record) {
    const id = kind === 'alarm' ? record.alarm_id : record.incident_id;
    this.shown = { cid: kind, fid: id };
    let full = record;
    try {
      full = await getJSON(`/${kind === 'alarm' ? 'alarms' : 'incidents'}/${encodeURIComponent(id)}`);
    } catch {
      /* the list's record will do */
    }
    if (this.shown.fid !== id) return;
    const rows = Object.entries(full).filter(([k]) => k !== 'log');
    const parts = [heading(record.message || record.title || id, id), table(rows)];
    if (Array.isArray(full.log) && full.log.length) {
      const log = document.createElement('ol');
      log.className = 'log';
      for (const entry of full.log) {
        const li = document.createElement('li');
        li.textContent = `${entry.at ? new Date(entry.at).toLocaleString() : ''} ${entry.action || ''} ${entry.actor || ''} ${entry.text || ''}`;
        log.append(li);
      }
      parts.push(log);
    }
    this.body.replaceChildren(...parts);
  }

  /** Show what a tool found (a summary table and lists). */
  showResult(headingText, rows, lists = []) {
    this.shown = { cid: 'result', fid: headingText };
    const parts = [heading(headingText), table(rows)];
    for (const [label, items] of lists) {
      if (!items || !items.length) continue;
      parts.push(heading(`${label} (${items.length})`));
      const ul = document.createElement('ul');
      ul.className = 'ids';
      for (const item of items.slice(0, 200)) {
        const li = document.createElement('li');
        li.textContent = item;
        ul.append(li);
      }
      parts.push(ul);
    }
    this.body.replaceChildren(...parts);
  }
}

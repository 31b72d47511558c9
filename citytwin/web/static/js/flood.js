// The flood panel: the flood scenarios kept in the twin (GET /flood/scenarios); one shown on the
// map as its deepest water (the scenario's PNG overlay laid between its four corners, with a
// legend of the service's colour ramp), its flooded buildings raised in blue, its summary in
// the panel and the details; and a form that runs a design storm through the flood-storm
// process as a job (progress, cancel) whose scenario is shown when it is done.
//
// main.js imports this module only when the panel is first opened: nothing of it (code or
// data) is fetched before then.

import { ApiError, getJSON, request } from './api.js';
import { apply, onLanguage, t } from './i18n.js';
import { TWIN_SOURCE } from './map.js';

export const FLOOD_SOURCE = 'flood-depth';
export const FLOOD_LAYER = 'flood-depth';
export const FLOOD_BUILDINGS = 'flood-buildings';
const POLL_MS = 700;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'i18n') {
      node.dataset.i18n = v;
      node.textContent = t(v);
    } else node[k] = v;
  }
  node.append(...children);
  return node;
}

function field(labelKey, input) {
  return el('label', { className: 'flood-field' }, el('span', { i18n: labelKey }), input);
}

const fmt = (v, digits = 0) => (Number.isFinite(v) ? v.toLocaleString(undefined, { maximumFractionDigits: digits }) : '—');

export class FloodPanel {
  /** `root`: the panel's element; `signedIn`: whether runs may be asked for. */
  constructor({ map, info, root, signedIn }) {
    this.map = map;
    this.info = info;
    this.root = root;
    this.signedIn = signedIn;
    this.scenarios = [];
    this.shown = null; // {id, doc, buildings}
    this.job = null; // {id, status, progress, message}
    this.list = el('ul', { className: 'flood-list' });
    this.summary = el('div', { className: 'flood-summary' });
    this.jobBox = el('div', { className: 'flood-job' });
    this.legend = null;
    root.replaceChildren(this.list, this.summary, this.form(), this.jobBox);
    onLanguage(() => this.render());
  }

  /** The kept scenarios, newest first. */
  async refresh() {
    try {
      const doc = await getJSON('/flood/scenarios?limit=50');
      this.scenarios = doc.scenarios || [];
    } catch (err) {
      this.scenarios = [];
      this.list.replaceChildren(el('li', { className: 'error', textContent: err.message }));
      return;
    }
    this.render();
  }

  label(s) {
    const p = s.params || {};
    const when = s.created ? new Date(s.created).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' }) : s.id;
    const storm = t('flood_storm', { p: fmt(p.return_period, 1), d: fmt(p.duration_min) });
    return `${storm}${p.coupled ? ` · ${t('flood_coupled_short')}` : ''} · ${when}`;
  }

  render() {
    this.root.dataset.count = String(this.scenarios.length);
    if (!this.scenarios.length) {
      this.list.replaceChildren(el('li', { className: 'note', i18n: 'flood_none' }));
    } else {
      this.list.replaceChildren(
        ...this.scenarios.map((s) => {
          const li = el('li', { dataset: { sid: s.id }, title: s.id }, el('span', { textContent: this.label(s) }),
            el('small', { textContent: ` ${fmt(s.summary.buildings_flooded)} ${t('flood_buildings_short')}` }));
          li.classList.toggle('active', this.shown?.id === s.id);
          li.onclick = () => (this.shown?.id === s.id ? this.hide() : this.show(s.id));
          return li;
        }),
      );
    }
    if (this.shown) this.renderSummary();
    if (this.legend) this.renderLegend(this.shown.doc.overlay.legend);
    apply(this.root);
  }

  /** Show scenario `sid`: the depth overlay, the flooded buildings, the summary. */
  async show(sid) {
    let doc;
    let buildings;
    try {
      [doc, buildings] = await Promise.all([
        getJSON(`/flood/scenarios/${encodeURIComponent(sid)}`),
        getJSON(`/flood/scenarios/${encodeURIComponent(sid)}/features?kind=building`),
      ]);
    } catch (err) {
      this.summary.replaceChildren(el('p', { className: 'error', textContent: err.message }));
      return;
    }
    const flooded = buildings.features.filter((f) => f.properties.flooded).map((f) => String(f.id ?? f.properties.id));
    this.shown = { id: sid, doc, buildings: flooded };
    this.draw(doc.overlay, flooded);
    this.root.dataset.shown = sid;
    this.render();
    const s = doc.summary;
    this.info.showResult(`${t('flood')}: ${this.label(doc)}`, this.rows(s), [
      [t('critical_facilities'), (s.critical_facilities_reached || []).map((f) => `${f.id} ${f.name || f.class || ''}`)],
      [t('flood_buildings'), flooded],
    ]);
    const [w, so, e, n] = doc.overlay.bbox;
    this.map.fitBounds([[w, so], [e, n]], { padding: 40, maxZoom: 17, duration: 600 });
  }

  /** Lay the overlay on the map (below the facilities and buildings) and raise the buildings. */
  draw(overlay, buildingIds) {
    const map = this.map;
    const source = map.getSource(FLOOD_SOURCE);
    if (source) source.updateImage({ url: overlay.href, coordinates: overlay.coordinates });
    else map.addSource(FLOOD_SOURCE, { type: 'image', url: overlay.href, coordinates: overlay.coordinates });
    if (!map.getLayer(FLOOD_LAYER)) {
      const below = ['facilities-circle', 'buildings-3d', 'dig-fill'].find((id) => map.getLayer(id));
      map.addLayer({
        id: FLOOD_LAYER,
        type: 'raster',
        source: FLOOD_SOURCE,
        paint: { 'raster-opacity': 0.8, 'raster-resampling': 'nearest', 'raster-fade-duration': 0 },
      }, below);
    }
    if (map.getLayer('buildings-3d') && !map.getLayer(FLOOD_BUILDINGS)) {
      map.addLayer({
        id: FLOOD_BUILDINGS,
        type: 'fill-extrusion',
        source: TWIN_SOURCE,
        'source-layer': 'buildings',
        filter: ['in', ['get', 'id'], ['literal', []]],
        paint: {
          'fill-extrusion-color': '#1565c0',
          'fill-extrusion-height': ['+', ['coalesce', ['get', 'height'], 9], 0.3],
          'fill-extrusion-base': 0,
          'fill-extrusion-opacity': 0.92,
        },
      }, map.getLayer('highlight-buildings') ? 'highlight-buildings' : undefined);
    }
    if (map.getLayer(FLOOD_BUILDINGS)) map.setFilter(FLOOD_BUILDINGS, ['in', ['get', 'id'], ['literal', buildingIds]]);
    this.renderLegend(overlay.legend);
  }

  /** Take the scenario off the map. */
  hide() {
    for (const id of [FLOOD_LAYER, FLOOD_BUILDINGS]) if (this.map.getLayer(id)) this.map.removeLayer(id);
    if (this.map.getSource(FLOOD_SOURCE)) this.map.removeSource(FLOOD_SOURCE);
    this.legend?.remove();
    this.legend = null;
    this.shown = null;
    delete this.root.dataset.shown;
    this.summary.replaceChildren();
    this.render();
  }

  /** The legend: the ramp's stops evenly spaced (the colours run linearly between them). */
  renderLegend(stops) {
    if (!this.legend) {
      this.legend = el('div', { id: 'flood-legend' });
      this.map.getContainer().append(this.legend);
    }
    const at = (i) => (100 * i) / Math.max(1, stops.length - 1);
    const bar = el('div', { className: 'flood-ramp' });
    bar.style.background = `linear-gradient(to right, ${stops.map((s, i) => `${s.colour} ${at(i)}%`).join(', ')})`;
    const ticks = el('div', { className: 'flood-ticks' },
      ...stops.map((s, i) => {
        const tick = el('span', { textContent: `${s.depth_m}` });
        tick.style.left = `${at(i)}%`;
        return tick;
      }));
    this.legend.replaceChildren(el('div', { i18n: 'flood_depth' }), bar, ticks);
  }

  rows(s) {
    return [
      [t('flood_buildings'), s.buildings_flooded],
      [t('residents_affected'), s.residents_affected],
      [t('flood_roads'), Number.isFinite(s.impassable_length_m) ? (s.impassable_length_m / 1000).toFixed(2) : null],
      [t('flood_facilities'), s.facilities_reached],
      [t('critical_facilities'), (s.critical_facilities_reached || []).length],
      [t('flood_max_depth'), Number.isFinite(s.max_depth_m) ? `${s.max_depth_m.toFixed(2)} m` : null],
      [t('flood_area'), Number.isFinite(s.flooded_area_m2) ? (s.flooded_area_m2 / 1e4).toFixed(2) : null],
      [t('flood_balance'), s.mass_balance ? Number(s.mass_balance.relative_error).toExponential(1) : null],
      ...Object.entries(s.withheld || {}).map(([cid, n]) => [`${cid}: ${t('flood_withheld')}`, n]),
    ];
  }

  renderSummary() {
    const tbl = el('table', { className: 'attributes' });
    for (const [k, v] of this.rows(this.shown.doc.summary)) {
      const tr = tbl.insertRow();
      tr.append(el('th', { textContent: k }), el('td', { textContent: v ?? '—' }));
    }
    const hide = el('button', { type: 'button', i18n: 'flood_hide' });
    hide.onclick = () => this.hide();
    this.summary.replaceChildren(el('h3', { textContent: this.label(this.shown.doc) }), tbl, hide);
  }

  // -- running a storm ------------------------------------------------------------------------
  form() {
    if (!this.signedIn) return el('p', { className: 'note', i18n: 'flood_sign_in' });
    const number = (name, value, min, max, step) => el('input', { type: 'number', name, value, min, max, step });
    const select = (name, options, value) => {
      const s = el('select', { name });
      for (const [v, key] of options) s.add(el('option', key ? { value: v, i18n: key } : { value: v, textContent: v }));
      s.value = value;
      return s;
    };
    const form = el('form', { className: 'flood-form', id: 'flood-form' },
      el('h3', { i18n: 'flood_run' }),
      field('flood_return_period', select('return_period', [1, 2, 3, 5, 10, 20, 50, 100].map((v) => [String(v)]), '10')),
      field('flood_duration', number('duration', 60, 5, 1440, 5)),
      field('flood_peak', number('peak_ratio', 0.4, 0.05, 0.95, 0.05)),
      field('flood_after', number('after', 30, 0, 1440, 5)),
      field('flood_cell', number('cell', 10, 1, 100, 1)),
      field('flood_solver', select('solver', [['inertial', 'flood_solver_inertial'], ['swe', 'flood_solver_swe']], 'inertial')),
      el('label', { className: 'toggle' }, el('input', { type: 'checkbox', name: 'coupled' }), el('span', { i18n: 'flood_coupled' })),
      el('label', { className: 'toggle' }, el('input', { type: 'checkbox', name: 'view_only', checked: true }), el('span', { i18n: 'flood_view_only' })),
      el('button', { type: 'submit', id: 'flood-start', i18n: 'flood_start' }),
    );
    form.onsubmit = (event) => {
      event.preventDefault();
      const f = new FormData(form);
      const inputs = {
        return_period: Number(f.get('return_period')),
        duration: Number(f.get('duration')),
        peak_ratio: Number(f.get('peak_ratio')),
        after: Number(f.get('after')),
        cell: Number(f.get('cell')),
        solver: String(f.get('solver')),
        coupled: f.get('coupled') === 'on',
      };
      if (f.get('view_only') === 'on') {
        const b = this.map.getBounds();
        inputs.bbox = { bbox: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()] };
      }
      this.run(inputs);
    };
    return form;
  }

  /** Run a design storm as a job of the flood-storm process; show its scenario when done. */
  async run(inputs) {
    const start = this.root.querySelector('#flood-start');
    if (start) start.disabled = true;
    try {
      const info = await request('/processes/flood-storm/execution', {
        method: 'POST',
        body: { inputs },
        headers: { Prefer: 'respond-async' },
      });
      this.job = { id: info.jobID, status: info.status, progress: 0, message: '' };
      this.renderJob();
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        const s = await getJSON(`/jobs/${encodeURIComponent(this.job.id)}`);
        Object.assign(this.job, { status: s.status, progress: s.progress, message: s.message });
        this.renderJob();
        if (['successful', 'failed', 'dismissed'].includes(s.status)) break;
      }
      if (this.job.status === 'successful') {
        const results = await getJSON(`/jobs/${encodeURIComponent(this.job.id)}/results`);
        const sid = results.summary.scenario;
        this.job.scenario = sid;
        this.renderJob();
        await this.refresh();
        await this.show(sid);
      }
    } catch (err) {
      const why = `${err.message}${err instanceof ApiError && err.hint ? ` — ${err.hint}` : ''}`;
      this.jobBox.replaceChildren(el('p', { className: 'error', textContent: t('flood_failed', { why }) }));
    } finally {
      if (start) start.disabled = false;
    }
  }

  renderJob() {
    const job = this.job;
    this.root.dataset.job = job.status;
    const parts = [];
    if (job.status === 'accepted' || job.status === 'running') {
      parts.push(el('progress', { max: 100, value: job.progress }),
        el('p', { className: 'note', textContent: job.status === 'accepted' ? t('flood_queued') : job.message }));
      const cancel = el('button', { type: 'button', i18n: 'flood_cancel' });
      cancel.onclick = () => request(`/jobs/${encodeURIComponent(job.id)}`, { method: 'DELETE' }).catch(() => {});
      parts.push(cancel);
    } else if (job.status === 'successful') {
      parts.push(el('p', { className: 'ok', textContent: t('flood_done', { id: job.scenario || '' }) }));
    } else if (job.status === 'failed') {
      parts.push(el('p', { className: 'error', textContent: t('flood_failed', { why: job.message }) }));
    } else {
      parts.push(el('p', { className: 'note', i18n: 'flood_dismissed' }));
    }
    this.jobBox.replaceChildren(...parts);
  }
}

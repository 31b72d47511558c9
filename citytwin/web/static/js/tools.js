// The operator's tools, each an OGC API process run on the server:
// - trace: click a pipe or node -> POST /processes/trace/execution, the traced part drawn;
// - burst isolation: click a pipe -> POST /processes/isolate-burst/execution: the valves to
//   close and the isolated / cut-off pipes drawn, the buildings that lose supply raised in
//   colour, the impact summary in the details panel;
// - excavation check: draw the dig's outline -> POST /processes/excavation-check/execution:
//   the lines within reach, struck ones in red.

import { ApiError, postJSON } from './api.js';
import { bounds, toLonLat } from './geo.js';
import { t } from './i18n.js';
import { DIG_SOURCE, EMPTY, HIGHLIGHT_SOURCE } from './map.js';

export class Tools {
  constructor({ map, info, hint, result, onResult = () => {} }) {
    this.map = map;
    this.info = info;
    this.hint = hint;
    this.resultBox = result;
    this.onResult = onResult;
    this.tool = 'select';
    this.dig = [];
    this.last = null;
    this.busy = null;
  }

  setTool(tool) {
    this.tool = tool;
    this.dig = [];
    this.drawDig();
    this.hint.textContent = t(`hint_${tool}`);
    this.map.getCanvas().style.cursor = tool === 'select' ? '' : 'crosshair';
    if (tool === 'excavation') this.map.doubleClickZoom.disable();
    else this.map.doubleClickZoom.enable();
  }

  /** Run a process synchronously; its results ({features, summary}) with features in lon/lat. */
  async execute(pid, inputs) {
    this.resultBox.textContent = t('running', { what: pid });
    this.resultBox.className = 'note';
    const doc = await postJSON(`/processes/${pid}/execution`, { inputs });
    const features = doc.features ? toLonLat(doc.features) : EMPTY;
    return { features, summary: doc.summary || {} };
  }

  fail(err) {
    const why = err instanceof ApiError && err.missing && err.status !== 404
      ? t('unavailable', { what: 'processes', why: err.message })
      : `${err.message}${err.hint ? ` — ${err.hint}` : ''}`;
    this.resultBox.textContent = why;
    this.resultBox.className = 'error';
  }

  /** Draw features into the highlight source; the buildings (ids) raised in colour. */
  highlight(features, buildingIds = []) {
    this.map.getSource(HIGHLIGHT_SOURCE).setData(features || EMPTY);
    if (this.map.getLayer('highlight-buildings')) {
      this.map.setFilter('highlight-buildings', ['in', ['get', 'id'], ['literal', buildingIds]]);
    }
  }

  clear() {
    this.highlight(EMPTY, []);
    this.dig = [];
    this.drawDig();
    this.resultBox.textContent = '';
    this.last = null;
  }

  fitTo(features) {
    const b = bounds(features);
    if (!b) return;
    this.map.fitBounds([[b[0], b[1]], [b[2], b[3]]], { padding: 80, maxZoom: 17.5, duration: 800 });
  }

  /** Trace the network from a clicked feature. */
  async trace(picked, direction) {
    try {
      const { features, summary } = await this.execute('trace', {
        network: picked.network,
        start: [String(picked.id)],
        direction,
      });
      const shown = {
        ...features,
        features: features.features.map((f) => ({ ...f, properties: { ...f.properties, role: f.properties.role === 'start' ? 'selected' : 'trace' } })),
      };
      this.highlight(shown, []);
      const text = t('traced', { n: summary.links ?? 0, m: summary.nodes ?? 0 });
      this.resultBox.textContent = text;
      this.resultBox.className = 'ok';
      this.info.showResult(`${t('tool_trace')}: ${picked.id}`, Object.entries(summary));
      this.finish('trace', { features: shown, summary });
    } catch (err) {
      this.fail(err);
    }
  }

  /** Isolate a burst on a clicked link. */
  async isolate(picked) {
    try {
      const { features, summary } = await this.execute('isolate-burst', {
        network: picked.network,
        link: String(picked.id),
      });
      const buildings = features.features
        .filter((f) => f.properties.role === 'affected_building')
        .map((f) => String(f.properties.id ?? f.id));
      // buildings are raised in colour on the 3D layer; the rest goes into the highlight source
      const drawn = {
        type: 'FeatureCollection',
        features: features.features.filter((f) => f.properties.role !== 'affected_building'),
      };
      this.highlight(drawn, buildings);
      const valves = summary.valves_to_close || [];
      const residents = summary.residents ?? summary.loses_supply?.residents ?? 0;
      this.resultBox.replaceChildren();
      this.resultBox.className = 'ok';
      const lines = [
        `${t('valves_to_close')}: ${valves.length}`,
        `${t('buildings_affected')}: ${summary.affected_buildings ?? buildings.length}`,
        `${t('residents_affected')}: ${Math.round(residents)}`,
        `${t('critical_facilities')}: ${(summary.critical_facilities || []).length}`,
      ];
      for (const line of lines) {
        const div = document.createElement('div');
        div.textContent = line;
        this.resultBox.append(div);
      }
      this.resultBox.dataset.valves = valves.join(',');
      this.resultBox.dataset.buildings = String(buildings.length);
      const rows = Object.entries(summary).filter(([k]) => !['valves_to_close', 'critical_facilities'].includes(k));
      this.info.showResult(`${t('tool_isolate')}: ${summary.burst_link || picked.id}`, rows, [
        [t('valves_to_close'), valves],
        [t('critical_facilities'), (summary.critical_facilities || []).map((f) => `${f.id} ${f.name || f.class || ''}`)],
        [t('buildings_affected'), buildings],
      ]);
      this.finish('isolate', { features: drawn, summary, buildings, valves });
    } catch (err) {
      this.fail(err);
    }
  }

  /** A click while drawing the dig's outline adds a corner. */
  addDigPoint(lngLat) {
    this.dig.push([lngLat.lng, lngLat.lat]);
    this.drawDig();
  }

  drawDig() {
    const features = this.dig.map((p) => ({ type: 'Feature', geometry: { type: 'Point', coordinates: p }, properties: {} }));
    if (this.dig.length >= 3) {
      features.push({ type: 'Feature', geometry: { type: 'Polygon', coordinates: [[...this.dig, this.dig[0]]] }, properties: {} });
    } else if (this.dig.length === 2) {
      features.push({ type: 'Feature', geometry: { type: 'LineString', coordinates: this.dig }, properties: {} });
    }
    const source = this.map.getSource(DIG_SOURCE);
    if (source) source.setData({ type: 'FeatureCollection', features });
  }

  /** Check the drawn outline (at least three corners) at the given depth. */
  async excavate(depth) {
    if (this.dig.length < 3) {
      this.resultBox.textContent = t('hint_excavation');
      this.resultBox.className = 'note';
      return;
    }
    const area = { type: 'Polygon', coordinates: [[...this.dig, this.dig[0]]] };
    try {
      const { features, summary } = await this.execute('excavation-check', { area, depth });
      const shown = {
        ...features,
        features: features.features.map((f) => ({ ...f, properties: { ...f.properties, role: f.properties.struck ? 'struck' : 'near' } })),
      };
      this.highlight(shown, []);
      this.resultBox.textContent = t('dig_lines', { n: summary.within_reach ?? 0, s: summary.struck ?? 0, c: summary.critical ?? 0 });
      this.resultBox.className = summary.struck ? 'error' : 'ok';
      const rows = Object.entries(summary).filter(([k]) => k !== 'networks');
      for (const [net, counts] of Object.entries(summary.networks || {})) rows.push([net, counts]);
      this.info.showResult(t('tool_excavation'), rows, [
        ['struck', shown.features.filter((f) => f.properties.struck).map((f) => `${f.properties.id} (${f.properties.network})`)],
      ]);
      this.finish('excavation', { features: shown, summary, area });
    } catch (err) {
      this.fail(err);
    }
  }

  finish(kind, result) {
    this.last = { kind, ...result };
    this.onResult(this.last);
  }
}

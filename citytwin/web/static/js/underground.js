// deck.gl on the map (MapboxOverlay, interleaved with MapLibre's layers): the underground view
// — the pipes of the networks in view at their depth below the ground, from bbox-limited
// feature requests (never a whole layer) — and the map's labels (TextLayer; MapLibre's symbol
// layers would need glyphs from a server).

import { ApiError, getJSON } from './api.js';
import { middle } from './geo.js';
import { language, t } from './i18n.js';
import { NETWORK_COLOURS, NETWORKS, TWIN_SOURCE } from './map.js';

const MIN_ZOOM = 14;
const PAGE = 2000;
const MAX_PER_COLLECTION = 20000;
const DEFAULT_COVER = 1.2; // m over the crown when a link has no depth
const LABEL_FONT = '"WenQuanYi Micro Hei", "Noto Sans CJK SC", "Microsoft YaHei", "PingFang SC", sans-serif';

function rgb(hex, alpha = 255) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255, alpha];
}

/** Depth of a link's centre line below the ground (m): cover over the crown + half its height. */
export function centreDepth(props) {
  const diameter = Number.isFinite(props.diameter) ? props.diameter : 0.1;
  const cover = Number.isFinite(props.depth) ? props.depth : DEFAULT_COVER;
  return cover + diameter / 2;
}

function lines(geometry) {
  if (!geometry) return [];
  if (geometry.type === 'LineString') return [geometry.coordinates];
  if (geometry.type === 'MultiLineString') return geometry.coordinates;
  return [];
}

export class DeckLayers {
  constructor(map, { onStatus = () => {}, visibleNetworks = () => NETWORKS, collections = [] } = {}) {
    this.map = map;
    this.onStatus = onStatus;
    this.visibleNetworks = visibleNetworks;
    this.readable = new Set(collections.map((c) => c.id));
    this.enabled = false;
    this.exaggeration = 5;
    this.pipes = [];
    this.labels = [];
    this.labelsVisible = true;
    this.controller = null;
    this.timer = null;
    this.loading = null;
    this.overlay = null; // made by start(): after the map's first complete render
  }

  /** Put deck.gl on the map and start drawing labels. The console calls it once the map's first
   * view is drawn: deck.gl's start (its shaders, the label font atlas, the collision pass) would
   * otherwise hold that view back by about a second on a software renderer. */
  start() {
    if (this.overlay) return;
    this.overlay = new deck.MapboxOverlay({ interleaved: true, layers: [] });
    this.map.addControl(this.overlay);
    this.map.on('moveend', () => this.schedule());
    this.map.on('idle', () => this.refreshLabels());
    this.refreshLabels();
    this.render();
  }

  /** Switch the underground view; resolves when its pipes are loaded (or it is off). */
  setEnabled(on) {
    this.start();
    this.enabled = on;
    if (!on) {
      if (this.controller) this.controller.abort();
      this.pipes = [];
      this.render();
      this.onStatus('');
      return Promise.resolve();
    }
    return this.load();
  }

  setExaggeration(value) {
    this.exaggeration = value;
    this.render();
  }

  setLabelsVisible(on) {
    this.labelsVisible = on;
    this.labelKey = null;
    if (on) this.refreshLabels();
    else this.render();
  }

  schedule() {
    if (!this.enabled) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 350);
  }

  /** Fetch the links of the visible networks in the current view (paged, capped). */
  async load() {
    if (this.controller) this.controller.abort();
    if (this.map.getZoom() < MIN_ZOOM) {
      this.pipes = [];
      this.render();
      this.onStatus(t('zoom_in_underground'));
      return;
    }
    const controller = new AbortController();
    this.controller = controller;
    const b = this.map.getBounds();
    const bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(6)).join(',');
    this.onStatus(t('underground_loading'));
    const networks = this.visibleNetworks().filter((n) => this.readable.has(`${n}_links`));
    const work = networks.map((n) => this.fetchLinks(n, bbox, controller.signal));
    this.loading = Promise.allSettled(work).then((results) => {
      if (controller.signal.aborted) return;
      const pipes = [];
      const problems = [];
      results.forEach((r) => (r.status === 'fulfilled' ? pipes.push(...r.value) : problems.push(r.reason)));
      this.pipes = pipes;
      this.render();
      const failed = problems.find((p) => p.name !== 'AbortError');
      this.onStatus(
        failed
          ? t('unavailable', { what: t('underground'), why: failed instanceof ApiError && failed.missing ? 'no features service' : failed.message })
          : t('underground_count', { n: pipes.length }),
      );
    });
    return this.loading;
  }

  async fetchLinks(network, bbox, signal) {
    const cid = `${network}_links`;
    const colour = rgb(NETWORK_COLOURS[network]);
    let url = `/collections/${cid}/items?bbox=${bbox}&limit=${PAGE}&f=json`;
    const out = [];
    while (url && out.length < MAX_PER_COLLECTION) {
      const doc = await getJSON(url, { signal });
      for (const f of doc.features || []) {
        const props = f.properties || {};
        const z = -centreDepth(props);
        for (const line of lines(f.geometry)) {
          out.push({
            id: f.id ?? props.id,
            collection: cid,
            network,
            z,
            line,
            width: Math.max(Number(props.diameter) || 0.1, 0.05),
            colour,
          });
        }
      }
      const next = (doc.links || []).find((l) => l.rel === 'next');
      url = next && (doc.features || []).length ? next.href : null;
    }
    return out;
  }

  pipeLayer() {
    const k = this.exaggeration;
    return new deck.PathLayer({
      id: 'underground-pipes',
      beforeId: this.map.getLayer('buildings-3d') ? 'buildings-3d' : undefined,
      data: this.pipes,
      getPath: (d) => d.line.map((p) => [p[0], p[1], d.z * k]),
      getColor: (d) => d.colour,
      getWidth: (d) => d.width,
      widthUnits: 'meters',
      widthMinPixels: 2,
      capRounded: true,
      jointRounded: true,
      pickable: true,
      autoHighlight: true,
      highlightColor: [255, 214, 0, 255],
      updateTriggers: { getPath: k },
      parameters: { depthCompare: 'less-equal' },
    });
  }

  riserLayer() {
    // a thin line from the ground down to each pipe end: shows how deep it lies
    const k = this.exaggeration;
    const ends = [];
    for (const d of this.pipes) {
      const a = d.line[0];
      const b = d.line[d.line.length - 1];
      ends.push({ p: a, z: d.z, c: d.colour }, { p: b, z: d.z, c: d.colour });
    }
    return new deck.LineLayer({
      id: 'underground-risers',
      beforeId: this.map.getLayer('buildings-3d') ? 'buildings-3d' : undefined,
      data: ends,
      getSourcePosition: (d) => [d.p[0], d.p[1], 0],
      getTargetPosition: (d) => [d.p[0], d.p[1], d.z * k],
      getColor: (d) => [d.c[0], d.c[1], d.c[2], 90],
      getWidth: 1,
      updateTriggers: { getTargetPosition: k },
    });
  }

  /** Labels of the named features in view, from the loaded tiles (no extra requests). */
  refreshLabels() {
    if (!this.overlay || !this.labelsVisible || !this.map.getSource(TWIN_SOURCE)) return;
    const seen = new Set();
    const labels = [];
    const add = (features, kind, size, colour, filter = () => true) => {
      for (const f of features) {
        const p = f.properties || {};
        const name = (language() === 'zh' && p.name_zh) || p.name;
        if (!name || seen.has(`${kind}:${name}`) || !filter(p)) continue;
        const at = middle(f.geometry);
        if (!at) continue;
        seen.add(`${kind}:${name}`);
        labels.push({ text: String(name), at, size, colour, priority: size });
      }
    };
    const q = (layer) => {
      try {
        return this.map.querySourceFeatures(TWIN_SOURCE, { sourceLayer: layer });
      } catch {
        return [];
      }
    };
    const zoom = this.map.getZoom();
    add(q('zones'), 'zone', 15, [80, 60, 130, 255], (p) => p.class === 'district');
    add(q('water_bodies'), 'water', 13, [30, 90, 160, 255]);
    add(q('streets'), 'street', 12, [60, 60, 60, 255], (p) =>
      zoom >= 16 || ['motorway', 'trunk', 'primary', 'secondary'].includes(p.street_class));
    if (zoom >= 15) add(q('facilities'), 'facility', 11, [120, 20, 70, 255], (p) => zoom >= 16.5 || p.critical);
    const shown = labels.slice(0, 400);
    // 'idle' follows every repaint: redraw only when the labels changed, or it never rests
    const key = shown.map((l) => `${l.text}@${l.at[0].toFixed(6)},${l.at[1].toFixed(6)}`).join('|');
    if (key === this.labelKey) return;
    this.labelKey = key;
    this.labels = shown;
    this.render();
  }

  labelLayer() {
    return new deck.TextLayer({
      id: 'labels',
      data: this.labels,
      getPosition: (d) => d.at,
      getText: (d) => d.text,
      getSize: (d) => d.size,
      getColor: (d) => d.colour,
      fontFamily: LABEL_FONT,
      characterSet: 'auto',
      fontSettings: { sdf: true },
      outlineWidth: 3,
      outlineColor: [255, 255, 255, 230],
      billboard: true,
      sizeUnits: 'pixels',
      getTextAnchor: 'middle',
      getAlignmentBaseline: 'center',
      parameters: { depthCompare: 'always' },
      // labels that would overlap give way to bigger ones (districts, water, main streets)
      extensions: [new deck.CollisionFilterExtension()],
      collisionEnabled: true,
      getCollisionPriority: (d) => d.priority,
      collisionTestProps: { sizeScale: 1.2 },
    });
  }

  render() {
    if (!this.overlay) return;
    const layers = [];
    if (this.enabled && this.pipes.length) layers.push(this.riserLayer(), this.pipeLayer());
    if (this.labelsVisible && this.labels.length) layers.push(this.labelLayer());
    this.overlay.setProps({ layers });
  }

  /** The underground pipe under a screen point, or null. */
  pick(point) {
    if (!this.overlay || !this.enabled || !this.pipes.length) return null;
    const hit = this.overlay.pickObject({ x: point.x, y: point.y, radius: 4, layerIds: ['underground-pipes'] });
    return hit && hit.object ? hit.object : null;
  }
}

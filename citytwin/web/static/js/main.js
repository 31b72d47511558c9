// The operations console: wires the map, the deck.gl layers, the alarms panel, the details
// panel, the tools, search, the layer toggles, sign-in and the language switch.
//
// window.citytwin exposes the state for tests and the render benchmark:
//   ready     a Promise resolved once the first view is completely rendered (all sources
//             loaded, the map idle) and the alarms panel is filled;
//   idle()    a Promise of the map's next idle moment with every tile loaded;
//   map, deck, alarms, tools, info, meta, errors (what went wrong, also shown in the status).

import {
  ApiError,
  authHeaders,
  credentials,
  getJSON,
  sameOrigin,
  setCredentials,
  signInWithKey,
  signInWithPassword,
} from './api.js';
import { AlarmPanel } from './alarms.js';
import { bounds, setTwinCrs, toLonLat } from './geo.js';
import { apply, language, networkName, onLanguage, setLanguage, t } from './i18n.js';
import { InfoPanel } from './info.js';
import {
  NETWORK_COLOURS,
  NETWORKS,
  SENSORS_SOURCE,
  STATE_COLOURS,
  SEVERITY_COLOURS,
  buildStyle,
  collectionOfLayer,
  interactiveLayers,
  setGroupVisible,
} from './map.js';
import { Tools } from './tools.js';
import { DeckLayers } from './underground.js';

const $ = (id) => document.getElementById(id);
const errors = [];
let resolveReady;
let rejectReady;
const ready = new Promise((resolve, reject) => {
  resolveReady = resolve;
  rejectReady = reject;
});
ready.catch(() => {}); // a failed start is shown in the status line; tests read `errors`
const timings = {};
const mark = (name) => {
  timings[name] = Math.round(performance.now());
};
const notes = [];
const api = { ready, errors, notes, timings };
window.citytwin = api;

function status(text, kind = 'note') {
  const el = $('status');
  el.textContent = text || '';
  el.className = text ? kind : '';
  el.hidden = !text;
}

/** A part of the console that can't work (a service missing or failing): shown, and kept. */
function degraded(text) {
  notes.push(text);
  status(text);
}

function problem(text) {
  errors.push(text);
  status(text, 'error');
}

// -- sign-in -----------------------------------------------------------------------------------
function setUpSignIn(meta) {
  const who = meta.principal || {};
  const signedIn = !!credentials();
  $('who').textContent = who.user ? `${who.user}${who.department ? ` · ${who.department}` : ''}` : t('anonymous');
  $('signin').hidden = signedIn;
  $('signout').hidden = !signedIn;
  $('signout').onclick = () => {
    setCredentials(null);
    location.reload();
  };
  const dialog = $('signin-dialog');
  $('signin').onclick = () => {
    $('signin-error').hidden = true;
    dialog.showModal();
  };
  $('signin-form').onsubmit = async (event) => {
    if (event.submitter && event.submitter.value === 'cancel') return;
    event.preventDefault();
    const form = new FormData(event.target);
    const key = String(form.get('api_key') || '').trim();
    const user = String(form.get('username') || '').trim();
    try {
      if (key) await signInWithKey(key);
      else await signInWithPassword(user, String(form.get('password') || ''));
      dialog.close();
      location.reload();
    } catch (err) {
      $('signin-error').textContent = `${err.message}${err.hint ? ` — ${err.hint}` : ''}`;
      $('signin-error').hidden = false;
    }
  };
}

// -- the twin ----------------------------------------------------------------------------------
/** Whether WebGL draws on the CPU here (SwiftShader, llvmpipe: no GPU, e.g. a virtual desktop). */
function softwareRenderer() {
  const gl = document.createElement('canvas').getContext('webgl');
  if (!gl) return true;
  const info = gl.getExtension('WEBGL_debug_renderer_info');
  const name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  gl.getExtension('WEBGL_lose_context')?.loseContext();
  return /swiftshader|llvmpipe|software|softpipe/i.test(name);
}

async function loadMeta() {
  try {
    return await getJSON('/console/api/meta');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401 && credentials()) {
      // expired or revoked credentials: drop them and go on as anonymous
      setCredentials(null);
      problem(`${t('sign_in')}: ${err.message}`);
      return getJSON('/console/api/meta');
    }
    throw err;
  }
}

async function optional(path, what) {
  try {
    return await getJSON(path);
  } catch (err) {
    if (err instanceof ApiError) {
      degraded(t('unavailable', { what, why: err.missing ? `${path} is not served` : err.message }));
      return null;
    }
    throw err;
  }
}

// -- layer toggles -----------------------------------------------------------------------------
function layerGroups(meta) {
  const ids = new Set(meta.collections.map((c) => c.id));
  const groups = [];
  const add = (id, label, colour) => groups.push({ id, label, colour });
  add('terrain', () => t('terrain'), '#9aa08f');
  if (ids.has('buildings')) add('buildings', () => t('buildings'), '#d9cbb8');
  if (ids.has('streets')) add('streets', () => t('streets'), '#bdb8ad');
  if (ids.has('water_bodies')) add('water_bodies', () => t('water_bodies'), '#9fcdf0');
  if (ids.has('zones')) add('zones', () => t('zones'), '#6d5a9c');
  if (ids.has('facilities')) add('facilities', () => t('facilities'), '#c2185b');
  for (const n of NETWORKS) {
    if (ids.has(`${n}_links`) || ids.has(`${n}_nodes`)) add(n, () => networkName(n), NETWORK_COLOURS[n]);
  }
  if (ids.has('devices')) add('sensors', () => t('sensors'), STATE_COLOURS.normal);
  add('labels', () => t('labels'), '#444444');
  return groups;
}

function renderLayerList(map, deckLayers, groups, visible, onChange) {
  const list = $('layer-list');
  list.replaceChildren();
  for (const g of groups) {
    const label = document.createElement('label');
    label.className = 'toggle';
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = visible.has(g.id);
    box.dataset.group = g.id;
    box.id = `layer-${g.id}`;
    box.onchange = () => {
      if (box.checked) visible.add(g.id);
      else visible.delete(g.id);
      if (g.id === 'labels') deckLayers.setLabelsVisible(box.checked);
      else setGroupVisible(map, g.id, box.checked);
      onChange(g.id, box.checked);
    };
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = g.colour;
    const text = document.createElement('span');
    text.textContent = g.label();
    label.append(box, swatch, text);
    list.append(label);
  }
  const ids = new Set(groups.map((g) => g.id));
  if (!NETWORKS.some((n) => ids.has(n)) && !credentials()) {
    const p = document.createElement('p');
    p.className = 'note';
    p.textContent = t('not_signed_in_networks');
    list.append(p);
  }
}

function renderLegend(meta) {
  const legend = $('legend');
  const rows = [];
  for (const [state, colour] of Object.entries(STATE_COLOURS)) {
    if (state !== 'alarm') rows.push([colour, t(`state_${state}`)]);
  }
  for (const s of meta.severities || Object.keys(SEVERITY_COLOURS)) rows.push([SEVERITY_COLOURS[s], `${t('state_alarm')} · ${t(`sev_${s}`)}`]);
  legend.replaceChildren(
    ...rows.map(([colour, label]) => {
      const div = document.createElement('div');
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.style.background = colour;
      div.append(dot, label);
      return div;
    }),
  );
}

// -- sensors -----------------------------------------------------------------------------------
class Sensors {
  constructor(map, enabled) {
    this.map = map;
    this.enabled = enabled;
    this.controller = null;
    this.timer = null;
    this.loading = null;
    this.count = 0;
    map.on('moveend', () => this.schedule());
  }

  schedule(delay = 400) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), delay);
  }

  /** The devices in view (all classes from zoom 15, the network instruments below it), from
   * ``pending`` when given (a ``request()`` made earlier). Resolves once the map shows devices
   * asked for no earlier than this call: a load overtaken by a newer one (the map moved) waits
   * for that one. */
  load(pending = this.request()) {
    if (!pending) return Promise.resolve();
    const run = (async () => {
      try {
        const doc = await pending;
        this.map.getSource(SENSORS_SOURCE).setData(doc);
        this.count = doc.features.length;
      } catch (err) {
        if (err.name === 'AbortError') return this.loading === run ? undefined : this.loading;
        degraded(t('unavailable', { what: t('sensors'), why: err.message }));
      }
      return undefined;
    })();
    this.loading = run;
    return run;
  }

  /** The request for the devices in view (it needs only the map's bounds, not its style). */
  request() {
    if (!this.enabled) return null;
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    const b = this.map.getBounds();
    const pad = 0.25;
    const w = b.getWest() - (b.getEast() - b.getWest()) * pad;
    const e = b.getEast() + (b.getEast() - b.getWest()) * pad;
    const s = b.getSouth() - (b.getNorth() - b.getSouth()) * pad;
    const n = b.getNorth() + (b.getNorth() - b.getSouth()) * pad;
    const bbox = [Math.max(-180, w), Math.max(-90, s), Math.min(180, e), Math.min(90, n)].map((v) => v.toFixed(6)).join(',');
    // the (many) water meters from zoom 16.5, the network instruments at every zoom
    const meters = this.map.getZoom() >= 16.5 ? '' : '&exclude=water_meter';
    return getJSON(`/console/api/sensors?bbox=${bbox}${meters}`, { signal: controller.signal });
  }
}

// -- search ------------------------------------------------------------------------------------
function setUpSearch(map, info, collections) {
  const results = $('search-results');
  $('search-form').onsubmit = async (event) => {
    event.preventDefault();
    const q = $('search').value.trim();
    if (!q) return;
    results.hidden = false;
    results.replaceChildren();
    let doc;
    try {
      doc = await getJSON(`/search?q=${encodeURIComponent(q)}&limit=20`);
    } catch (err) {
      const li = document.createElement('li');
      li.className = 'error';
      li.textContent = err instanceof ApiError && err.missing ? t('unavailable', { what: t('search'), why: err.message }) : err.message;
      results.append(li);
      return;
    }
    const features = (toLonLat(doc) || {}).features || [];
    results.dataset.count = String(features.length);
    if (!features.length) {
      const li = document.createElement('li');
      li.textContent = t('nothing_found');
      results.append(li);
      return;
    }
    for (const f of features) {
      const p = f.properties || {};
      const cid = p.collection || f.collection;
      const coll = collections.find((c) => c.id === cid);
      const li = document.createElement('li');
      li.dataset.id = f.id ?? p.id;
      li.dataset.collection = cid;
      const strong = document.createElement('strong');
      strong.textContent = String(f.id ?? p.id);
      const small = document.createElement('small');
      small.textContent = ` ${p.name || ''} · ${coll ? (language() === 'zh' ? coll.title_zh : coll.title) : cid}`;
      li.append(strong, small);
      li.onclick = () => {
        results.hidden = true;
        const b = bounds(f);
        if (b) {
          if (b[0] === b[2] && b[1] === b[3]) map.flyTo({ center: [b[0], b[1]], zoom: 17.5 });
          else map.fitBounds([[b[0], b[1]], [b[2], b[3]]], { padding: 120, maxZoom: 17.5 });
        }
        info.showFeature(cid, f.id ?? p.id, p);
      };
      results.append(li);
    }
  };
  document.addEventListener('click', (e) => {
    if (!$('search-form').contains(e.target)) results.hidden = true;
  });
}

// -- clicks --------------------------------------------------------------------------------------
/** Pixel distance from a screen point to a feature's geometry (lines: to the nearest segment). */
function screenDistance(map, point, geometry) {
  let best = Infinity;
  const seg = (a, b) => {
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = dx * dx + dy * dy;
    const k = len ? Math.max(0, Math.min(1, ((point.x - a.x) * dx + (point.y - a.y) * dy) / len)) : 0;
    best = Math.min(best, Math.hypot(a.x + k * dx - point.x, a.y + k * dy - point.y));
  };
  const line = (coords) => {
    const pts = coords.map((c) => map.project(c));
    if (pts.length === 1) seg(pts[0], pts[0]);
    for (let i = 1; i < pts.length; i++) seg(pts[i - 1], pts[i]);
  };
  const g = geometry;
  if (!g) return best;
  if (g.type === 'Point') line([g.coordinates]);
  else if (g.type === 'LineString' || g.type === 'MultiPoint') line(g.coordinates);
  else if (g.type === 'MultiLineString' || g.type === 'Polygon') g.coordinates.forEach(line);
  else if (g.type === 'MultiPolygon') g.coordinates.forEach((p) => p.forEach(line));
  return best;
}

/**
 * The feature under a click: an underground pipe (deck.gl) or a map feature, the nearest of
 * the smallest kind (sensors, nodes, links, facilities, buildings); `linksOnly` for the tools
 * that act on pipes.
 */
function pickFeature(map, deckLayers, point, { linksOnly = false } = {}) {
  const pipe = deckLayers.pick(point);
  if (pipe) return { collection: pipe.collection, network: pipe.network, id: pipe.id, kind: 'link', properties: {} };
  const box = [[point.x - 6, point.y - 6], [point.x + 6, point.y + 6]];
  let layers = interactiveLayers(map).filter((id) => map.getLayoutProperty(id, 'visibility') !== 'none');
  if (linksOnly) layers = layers.filter((id) => id.endsWith('-links'));
  const hits = map.queryRenderedFeatures(box, { layers });
  if (!hits.length) return null;
  const rank = (f) => (f.layer.id === 'sensors-circle' ? 0 : f.layer.id.endsWith('-nodes') ? 1 : f.layer.id.endsWith('-links') ? 2 : f.layer.id === 'facilities-circle' ? 3 : 4);
  // on a near tie (within 3 px) the device that says most wins: in alarm, then reporting
  const says = (f) => ({ alarm: 0, normal: 1 })[f.properties.state] ?? 2;
  const scored = hits.map((f) => ({
    f,
    rank: rank(f),
    d: f.layer.type === 'fill-extrusion' ? 0 : Math.round(screenDistance(map, point, f.geometry) / 3),
    says: says(f),
  }));
  scored.sort((a, b) => a.rank - b.rank || a.d - b.d || a.says - b.says);
  const f = scored[0].f;
  const collection = collectionOfLayer(map, f.layer.id);
  const network = f.layer.metadata && f.layer.metadata['citytwin:network'];
  const kind = f.layer.id.endsWith('-links') ? 'link' : f.layer.id.endsWith('-nodes') ? 'node' : 'feature';
  return { collection, network, id: f.properties.id ?? f.id, kind, properties: f.properties, layer: f.layer.id };
}

// -- the console -------------------------------------------------------------------------------
async function main() {
  apply(document);
  $('lang').textContent = language() === 'zh' ? 'English' : '中文';
  $('lang').onclick = () => {
    setLanguage(language() === 'zh' ? 'en' : 'zh');
    $('lang').textContent = language() === 'zh' ? 'English' : '中文';
  };

  const meta = await loadMeta();
  mark('meta');
  api.meta = meta;
  setTwinCrs(meta.proj4);
  setUpSignIn(meta);
  $('twin-name').textContent = meta.name || '';
  $('virtual-badge').hidden = !meta.virtual;
  document.body.dataset.virtual = String(!!meta.virtual);

  const [tiles, terrain] = await Promise.all([
    optional('/tiles/WebMercatorQuad?f=tilejson', 'vector tiles'),
    meta.terrain ? optional('/terrain/hillshade/tilejson', t('terrain')) : Promise.resolve(null),
  ]);
  const collections = meta.collections || [];
  const style = buildStyle({ tiles, terrain, collections });
  const b = meta.bounds || (tiles && tiles.bounds);

  const map = new maplibregl.Map({
    container: 'map',
    style,
    bounds: b ? [[b[0], b[1]], [b[2], b[3]]] : undefined,
    fitBoundsOptions: { padding: 20 },
    pitch: 50,
    bearing: -12,
    maxPitch: 80,
    attributionControl: { compact: true },
    // multisampling is cheap on a GPU and doubles a frame's time on a software renderer
    canvasContextAttributes: { antialias: !softwareRenderer() },
    transformRequest: (url) => (sameOrigin(url) ? { url, headers: authHeaders() } : { url }),
  });
  api.map = map;
  // the networks' tiles start at a zoom level: a twin that nearly fits at it opens there
  const networkZoom = Math.min(
    ...((tiles && tiles.vector_layers) || [])
      .filter((l) => /_(links|nodes)$/.test(l.id) && Number.isFinite(l.minzoom))
      .map((l) => l.minzoom),
  );
  /** The whole twin in view (closer, at the networks' zoom, when it nearly fits there). */
  api.overview = () => {
    if (b) map.fitBounds([[b[0], b[1]], [b[2], b[3]]], { padding: 20, pitch: 50, bearing: -12, duration: 0 });
    if (Number.isFinite(networkZoom) && map.getZoom() < networkZoom && networkZoom - map.getZoom() <= 0.75) {
      map.jumpTo({ zoom: networkZoom });
    }
  };
  api.overview();
  const zoomNote = () => {
    const below = Number.isFinite(networkZoom) && map.getZoom() < networkZoom;
    $('zoom-note').hidden = !below;
    $('zoom-note').textContent = below ? t('zoom_in_networks', { z: networkZoom }) : '';
  };
  map.on('zoomend', zoomNote);
  onLanguage(zoomNote);
  zoomNote();
  map.addControl(new maplibregl.NavigationControl({ visualizePitch: true }), 'top-right');
  map.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');
  map.on('error', (e) => {
    const err = e.error || {};
    // a tile the service refuses or lacks is reported once, not as a page error
    const text = err.status ? `${err.status} ${err.url || ''}` : err.message || String(err);
    problem(`map: ${text}`);
  });

  api.idle = () =>
    new Promise((resolve) => {
      const check = () => {
        if (map.loaded() && map.areTilesLoaded()) resolve();
        else map.once('idle', check);
      };
      map.once('idle', check);
      map.triggerRepaint();
    });

  // the panels' data comes while the map loads
  const early = AlarmPanel.prefetch();
  const sensors = new Sensors(map, collections.some((c) => c.id === 'devices'));
  api.sensors = sensors;
  const sensorsEarly = sensors.request();
  sensorsEarly?.catch(() => {}); // reported by load()
  await new Promise((resolve) => map.once('load', resolve));
  mark('load');

  const visible = new Set(['terrain', 'buildings', 'streets', 'water_bodies', 'zones', 'facilities', 'sensors', 'labels', ...NETWORKS]);
  const deckLayers = new DeckLayers(map, {
    onStatus: (text) => {
      $('underground-note').hidden = !text;
      $('underground-note').textContent = text;
    },
    visibleNetworks: () => NETWORKS.filter((n) => visible.has(n)),
    collections,
  });
  api.deck = deckLayers;

  const info = new InfoPanel($('info-body'), collections);
  api.info = info;
  const alarms = new AlarmPanel({
    map,
    list: $('alarms'),
    incidentList: $('incidents'),
    count: $('alarm-count'),
    note: $('alarms-note'),
    live: $('live'),
    onSelect: (kind, record) => info.showEvent(kind, record),
    onChange: () => sensors.schedule(800),
  });
  api.alarms = alarms;

  const tools = new Tools({ map, info, hint: $('tool-hint'), result: $('tool-result') });
  api.tools = tools;
  tools.setTool('select');

  const groups = layerGroups(meta);
  const renderLayers = () =>
    renderLayerList(map, deckLayers, groups, visible, (group) => {
      if (NETWORKS.includes(group)) deckLayers.schedule();
    });
  renderLayers();
  renderLegend(meta);
  onLanguage(() => {
    renderLayers();
    renderLegend(meta);
    alarms.render();
    deckLayers.labelKey = null;
    deckLayers.refreshLabels();
    tools.setTool(tools.tool);
    setUpSignIn(meta);
  });

  // underground view: pipes at depth, terrain and buildings made translucent
  const groundLayers = ['terrain-hillshade', 'streets-casing', 'streets-line', 'water-fill', 'water-line'];
  const setUnderground = async (on) => {
    document.body.dataset.underground = String(on);
    if (map.getLayer('buildings-3d')) map.setPaintProperty('buildings-3d', 'fill-extrusion-opacity', on ? 0.22 : 0.88);
    for (const id of groundLayers) {
      if (!map.getLayer(id)) continue;
      const type = map.getLayer(id).type;
      map.setPaintProperty(id, `${type}-opacity`, on ? 0.35 : type === 'fill' ? 0.9 : 1);
    }
    for (const n of NETWORKS) {
      if (map.getLayer(`${n}-links`)) map.setPaintProperty(`${n}-links`, 'line-opacity', on ? 0.25 : ['interpolate', ['linear'], ['zoom'], 12, 0.75, 16, 0.95]);
    }
    if (on && map.getPitch() < 45) map.easeTo({ pitch: 60, duration: 600 });
    await deckLayers.setEnabled(on);
  };
  $('underground').onchange = (e) => setUnderground(e.target.checked);
  api.setUnderground = (on) => {
    $('underground').checked = on;
    return setUnderground(on);
  };
  $('exaggeration').oninput = (e) => {
    const k = Number(e.target.value);
    $('exaggeration-value').textContent = `×${k}`;
    deckLayers.setExaggeration(k);
  };

  for (const button of document.querySelectorAll('#tool-buttons button')) {
    button.onclick = () => {
      for (const other of document.querySelectorAll('#tool-buttons button')) other.classList.toggle('active', other === button);
      document.body.dataset.tool = button.dataset.tool;
      tools.setTool(button.dataset.tool);
    };
  }
  document.body.dataset.tool = 'select';
  $('clear-highlight').onclick = () => tools.clear();
  $('dig-finish').onclick = () => tools.excavate(Number($('dig-depth').value));

  map.on('click', (e) => {
    if (tools.tool === 'excavation') {
      tools.addDigPoint(e.lngLat);
      return;
    }
    const picked = pickFeature(map, deckLayers, e.point, { linksOnly: tools.tool === 'isolate' });
    if (!picked) return;
    if (tools.tool === 'trace' && picked.network) {
      tools.trace(picked, $('trace-kind').value);
    } else if (tools.tool === 'isolate' && picked.network && picked.kind === 'link') {
      tools.isolate(picked);
    } else if (picked.layer === 'sensors-circle') {
      info.showSensor(picked.properties);
    } else if (picked.collection) {
      info.showFeature(picked.collection, picked.id, picked.properties);
    }
  });
  map.on('dblclick', (e) => {
    if (tools.tool !== 'excavation') return;
    e.preventDefault();
    tools.excavate(Number($('dig-depth').value));
  });
  map.on('mousemove', (e) => {
    if (tools.tool !== 'select') return;
    const layers = interactiveLayers(map);
    const hit = map.queryRenderedFeatures([[e.point.x - 3, e.point.y - 3], [e.point.x + 3, e.point.y + 3]], { layers });
    map.getCanvas().style.cursor = hit.length ? 'pointer' : '';
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') tools.setTool(tools.tool);
  });

  setUpSearch(map, info, collections);

  // the flood panel: its module and data are fetched only once it is opened
  let flood = null;
  const openFlood = () => {
    if (!$('flood').open) return;
    flood ||= import('./flood.js').then(({ FloodPanel }) => (api.flood = new FloodPanel({ map, info, root: $('flood-body'), signedIn: !!credentials() })));
    flood.then((panel) => panel.refresh()).catch((err) => problem(`flood: ${err.message}`));
  };
  $('flood').addEventListener('toggle', openFlood);
  openFlood();

  await Promise.all([alarms.load(early), sensors.load(sensorsEarly)]);
  notes.push(...alarms.problems);
  mark('panels');
  alarms.follow();
  await api.idle();
  mark('idle');
  document.body.dataset.ready = 'true';
  resolveReady({ alarms: alarms.alarms.size, incidents: alarms.incidents.size });
  // then deck.gl: the labels now, the underground view when asked for
  deckLayers.start();
  await api.idle();
  mark('labels');
}

main().catch((err) => {
  problem(`the console could not start: ${err.message}`);
  rejectReady(err);
});

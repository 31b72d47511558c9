// The map's style: the twin's vector tiles (one MVT layer per collection), terrain shading,
// 3D buildings, each utility network in its conventional colour, sensors by state, and the
// highlight layers the tools draw into. No glyphs or sprites: labels are drawn by deck.gl.

import { absolute } from './api.js';

export const NETWORK_COLOURS = {
  water_supply: '#1f6fd1', // blue
  sewer: '#8b5a2b', // brown
  storm: '#2e9e44', // green
  combined: '#808000', // olive
  gas: '#f2c200', // yellow
  power: '#e0231b', // red
  heating: '#ff8c00', // orange
  telecom: '#7b3fb3', // purple
};
export const NETWORKS = Object.keys(NETWORK_COLOURS);

export const SEVERITY_COLOURS = {
  blue: '#1e88e5',
  yellow: '#f9d71c',
  orange: '#fb8c00',
  red: '#e53935',
};
export const STATE_COLOURS = { normal: '#2e7d32', no_data: '#9e9e9e', alarm: '#e53935' };

const BUILDING_COLOURS = [
  'match', ['get', 'use'],
  'residential', '#e3d7c5',
  'commercial', '#d7c3e0',
  'office', '#c2d3e3',
  'industrial', '#cfcfb0',
  'school', '#f2dc97',
  'hospital', '#f4b5b5',
  '#dcd8d2',
];

export const TWIN_SOURCE = 'twin';
export const HIGHLIGHT_SOURCE = 'highlight';
export const EVENTS_SOURCE = 'events';
export const SENSORS_SOURCE = 'sensors';
export const DIG_SOURCE = 'dig';
export const EMPTY = { type: 'FeatureCollection', features: [] };

/** The layer group a style layer belongs to (what the layer toggles switch). */
export function groupOf(layer) {
  return layer.metadata && layer.metadata['citytwin:group'];
}

function grouped(group, layer) {
  return { ...layer, metadata: { ...(layer.metadata || {}), 'citytwin:group': group } };
}

/** Metres on the ground as pixels at a zoom level, for line widths that scale with the map. */
function metres(value, minPx = 0.5) {
  // at ~23° N one pixel is 144 km at zoom 0; widths double with each zoom level
  return ['interpolate', ['exponential', 2], ['zoom'],
    10, ['max', minPx, ['/', value, 140]],
    22, ['max', minPx, ['/', value, 0.034]]];
}

/**
 * The map's style. `tiles`: the TileJSON of the combined vector tiles (or null to use the
 * template); `terrain`: the terrain TileJSON (or null); `collections`: what the principal may
 * read (layers are only made for those).
 */
export function buildStyle({ tiles, terrain, collections }) {
  const ids = new Set(collections.map((c) => c.id));
  const sources = {
    [TWIN_SOURCE]: {
      type: 'vector',
      tiles: (tiles && tiles.tiles && tiles.tiles.length ? tiles.tiles : ['/tiles/WebMercatorQuad/{z}/{y}/{x}']).map(absolute),
      minzoom: tiles && Number.isFinite(tiles.minzoom) ? tiles.minzoom : 0,
      // tiles at zoom 16 hold ~0.15 m detail: overzoom beyond it rather than ask for more
      maxzoom: Math.min(tiles && Number.isFinite(tiles.maxzoom) ? tiles.maxzoom : 16, 16),
      ...(tiles && tiles.bounds ? { bounds: tiles.bounds } : {}),
    },
    [SENSORS_SOURCE]: { type: 'geojson', data: EMPTY },
    [EVENTS_SOURCE]: { type: 'geojson', data: EMPTY },
    [HIGHLIGHT_SOURCE]: { type: 'geojson', data: EMPTY },
    [DIG_SOURCE]: { type: 'geojson', data: EMPTY },
  };
  const layers = [
    { id: 'background', type: 'background', paint: { 'background-color': '#eef0e8' } },
  ];
  if (terrain && terrain.tiles && terrain.tiles.length) {
    // the shading comes drawn from the server: a hillshade layer of the map's own costs a
    // software renderer (a desktop without a GPU) about a second of the first view
    sources.terrain = {
      type: 'raster',
      tiles: terrain.tiles.map(absolute),
      tileSize: terrain.tileSize || terrain.tile_size || 256,
      minzoom: Number.isFinite(terrain.minzoom) ? terrain.minzoom : 0,
      maxzoom: Number.isFinite(terrain.maxzoom) ? terrain.maxzoom : 15,
      ...(terrain.bounds ? { bounds: terrain.bounds } : {}),
    };
    layers.push(grouped('terrain', {
      id: 'terrain-hillshade',
      type: 'raster',
      source: 'terrain',
      paint: { 'raster-fade-duration': 0 },
    }));
  }
  const vector = (id) => ({ source: TWIN_SOURCE, 'source-layer': id });

  if (ids.has('zones')) {
    layers.push(grouped('zones', {
      id: 'zones-district',
      type: 'line',
      ...vector('zones'),
      filter: ['==', ['get', 'class'], 'district'],
      paint: { 'line-color': '#6d5a9c', 'line-width': 2, 'line-dasharray': [3, 2], 'line-opacity': 0.8 },
    }));
  }
  if (ids.has('water_bodies')) {
    layers.push(grouped('water_bodies', {
      id: 'water-fill',
      type: 'fill',
      ...vector('water_bodies'),
      filter: ['==', ['geometry-type'], 'Polygon'],
      paint: { 'fill-color': '#9fcdf0', 'fill-opacity': 0.9 },
    }));
    layers.push(grouped('water_bodies', {
      id: 'water-line',
      type: 'line',
      ...vector('water_bodies'),
      filter: ['==', ['geometry-type'], 'LineString'],
      paint: { 'line-color': '#7fb8e6', 'line-width': metres(['coalesce', ['get', 'width'], 12], 1.5) },
    }));
  }
  if (ids.has('streets')) {
    const width = ['coalesce', ['get', 'width'], 10];
    layers.push(grouped('streets', {
      id: 'streets-casing',
      type: 'line',
      ...vector('streets'),
      filter: ['!=', ['get', 'class'], 'rail'],
      layout: { 'line-cap': 'round', 'line-join': 'round' },
      paint: { 'line-color': '#c6c2b8', 'line-width': metres(['+', width, 3], 1) },
    }));
    layers.push(grouped('streets', {
      id: 'streets-line',
      type: 'line',
      ...vector('streets'),
      filter: ['!=', ['get', 'class'], 'rail'],
      layout: { 'line-cap': 'round', 'line-join': 'round' },
      paint: { 'line-color': '#ffffff', 'line-width': metres(width, 0.6) },
    }));
    layers.push(grouped('streets', {
      id: 'streets-rail',
      type: 'line',
      ...vector('streets'),
      filter: ['==', ['get', 'class'], 'rail'],
      paint: { 'line-color': '#7d7d7d', 'line-width': 2, 'line-dasharray': [2, 2] },
    }));
  }
  for (const network of NETWORKS) {
    const colour = NETWORK_COLOURS[network];
    const links = `${network}_links`;
    const nodes = `${network}_nodes`;
    if (ids.has(links)) {
      const diameter = ['coalesce', ['get', 'diameter'], 0.15];
      const service = ['in', ['get', 'class'], ['literal', ['service_pipe']]];
      layers.push(grouped(network, {
        id: `${network}-links`,
        type: 'line',
        ...vector(links),
        metadata: { 'citytwin:collection': links, 'citytwin:network': network },
        layout: { 'line-cap': 'round', 'line-join': 'round' },
        paint: {
          'line-color': colour,
          'line-width': ['interpolate', ['linear'], ['zoom'],
            12, ['case', service, 0.3, 1],
            16, ['case', service, 0.8, ['+', 1.2, ['*', diameter, 5]]],
            19, ['case', service, 1.5, ['+', 2, ['*', diameter, 12]]]],
          'line-opacity': ['interpolate', ['linear'], ['zoom'], 12, 0.75, 16, 0.95],
        },
      }));
    }
    if (ids.has(nodes)) {
      layers.push(grouped(network, {
        id: `${network}-nodes`,
        type: 'circle',
        ...vector(nodes),
        minzoom: 15,
        metadata: { 'citytwin:collection': nodes, 'citytwin:network': network },
        filter: ['!=', ['get', 'class'], 'service_connection'],
        paint: {
          'circle-color': colour,
          'circle-radius': ['interpolate', ['linear'], ['zoom'], 15, 1.5, 19, ['case', ['==', ['get', 'class'], 'valve'], 6, 4]],
          'circle-stroke-color': ['case', ['==', ['get', 'class'], 'valve'], '#111111', '#ffffff'],
          'circle-stroke-width': ['interpolate', ['linear'], ['zoom'], 15, 0.3, 19, 1.5],
        },
      }));
    }
  }
  if (ids.has('facilities')) {
    layers.push(grouped('facilities', {
      id: 'facilities-circle',
      type: 'circle',
      ...vector('facilities'),
      minzoom: 13,
      metadata: { 'citytwin:collection': 'facilities' },
      paint: {
        'circle-color': ['case', ['==', ['get', 'critical'], true], '#c2185b', '#5d6d7e'],
        'circle-radius': ['interpolate', ['linear'], ['zoom'], 13, 2.5, 18, 7],
        'circle-stroke-color': '#ffffff',
        'circle-stroke-width': 1.2,
      },
    }));
  }
  if (ids.has('buildings')) {
    layers.push(grouped('buildings', {
      id: 'buildings-3d',
      type: 'fill-extrusion',
      ...vector('buildings'),
      metadata: { 'citytwin:collection': 'buildings' },
      paint: {
        'fill-extrusion-color': BUILDING_COLOURS,
        'fill-extrusion-height': ['coalesce', ['get', 'height'], ['*', ['coalesce', ['get', 'floors'], 3], 3], 9],
        'fill-extrusion-base': 0,
        'fill-extrusion-opacity': 0.88,
        'fill-extrusion-vertical-gradient': true,
      },
    }));
    layers.push({
      id: 'highlight-buildings',
      type: 'fill-extrusion',
      ...vector('buildings'),
      filter: ['in', ['get', 'id'], ['literal', []]],
      paint: {
        'fill-extrusion-color': '#ff5722',
        'fill-extrusion-height': ['+', ['coalesce', ['get', 'height'], 9], 0.5],
        'fill-extrusion-base': 0,
        'fill-extrusion-opacity': 0.95,
      },
    });
  }
  layers.push(
    {
      id: 'dig-fill',
      type: 'fill',
      source: DIG_SOURCE,
      filter: ['==', ['geometry-type'], 'Polygon'],
      paint: { 'fill-color': '#ff6f00', 'fill-opacity': 0.18 },
    },
    {
      id: 'dig-line',
      type: 'line',
      source: DIG_SOURCE,
      paint: { 'line-color': '#ff6f00', 'line-width': 2, 'line-dasharray': [2, 1] },
    },
    {
      id: 'dig-vertex',
      type: 'circle',
      source: DIG_SOURCE,
      filter: ['==', ['geometry-type'], 'Point'],
      paint: { 'circle-color': '#ff6f00', 'circle-radius': 4, 'circle-stroke-color': '#fff', 'circle-stroke-width': 1 },
    },
    {
      id: 'highlight-line',
      type: 'line',
      source: HIGHLIGHT_SOURCE,
      filter: ['in', ['geometry-type'], ['literal', ['LineString', 'MultiLineString', 'Polygon', 'MultiPolygon']]],
      layout: { 'line-cap': 'round', 'line-join': 'round' },
      paint: {
        'line-color': ['match', ['get', 'role'],
          'burst', '#ff1744',
          'isolated', '#d500f9',
          'cut_off', '#ff9100',
          'trace', '#00b8d4',
          'struck', '#d50000',
          'near', '#ff6d00',
          'selected', '#ffd600',
          '#ffd600'],
        'line-width': ['interpolate', ['linear'], ['zoom'], 12, 3, 18, 8],
        'line-opacity': 0.9,
      },
    },
    {
      id: 'highlight-point',
      type: 'circle',
      source: HIGHLIGHT_SOURCE,
      filter: ['==', ['geometry-type'], 'Point'],
      paint: {
        'circle-color': ['match', ['get', 'role'], 'valve_to_close', '#d50000', 'trace', '#00b8d4', '#ffd600'],
        'circle-radius': ['match', ['get', 'role'], 'valve_to_close', 8, 5],
        'circle-stroke-color': '#ffffff',
        'circle-stroke-width': 2,
      },
    },
  );
  layers.push(grouped('sensors', {
    id: 'sensors-circle',
    type: 'circle',
    source: SENSORS_SOURCE,
    metadata: { 'citytwin:collection': 'devices' },
    paint: {
      'circle-color': ['case',
        ['==', ['get', 'state'], 'alarm'],
        ['match', ['get', 'severity'], 'blue', SEVERITY_COLOURS.blue, 'yellow', SEVERITY_COLOURS.yellow,
          'orange', SEVERITY_COLOURS.orange, SEVERITY_COLOURS.red],
        ['==', ['get', 'state'], 'normal'], STATE_COLOURS.normal,
        STATE_COLOURS.no_data],
      'circle-radius': ['interpolate', ['linear'], ['zoom'],
        12, ['case', ['==', ['get', 'state'], 'alarm'], 5, 2],
        18, ['case', ['==', ['get', 'state'], 'alarm'], 10, ['==', ['get', 'class'], 'water_meter'], 3.5, 6]],
      'circle-stroke-color': ['case', ['==', ['get', 'state'], 'alarm'], '#000000', '#ffffff'],
      'circle-stroke-width': ['case', ['==', ['get', 'state'], 'alarm'], 2, 1],
    },
  }));
  layers.push(
    {
      id: 'events-halo',
      type: 'circle',
      source: EVENTS_SOURCE,
      paint: {
        'circle-color': ['match', ['get', 'severity'], 'blue', SEVERITY_COLOURS.blue, 'yellow', SEVERITY_COLOURS.yellow,
          'orange', SEVERITY_COLOURS.orange, SEVERITY_COLOURS.red],
        'circle-opacity': 0.22,
        'circle-radius': ['match', ['get', 'kind'], 'incident', 28, 18],
        'circle-stroke-color': ['match', ['get', 'severity'], 'blue', SEVERITY_COLOURS.blue, 'yellow', SEVERITY_COLOURS.yellow,
          'orange', SEVERITY_COLOURS.orange, SEVERITY_COLOURS.red],
        'circle-stroke-width': ['match', ['get', 'kind'], 'incident', 3, 2],
        'circle-stroke-opacity': 0.9,
      },
    },
    {
      id: 'focus-point',
      type: 'circle',
      source: EVENTS_SOURCE,
      filter: ['==', ['get', 'focus'], true],
      paint: {
        'circle-color': 'rgba(0,0,0,0)',
        'circle-radius': 36,
        'circle-stroke-color': '#111111',
        'circle-stroke-width': 3,
      },
    },
  );
  return { version: 8, name: 'citytwin-console', sources, layers };
}

/** Style layers of a group. */
export function layersOfGroup(map, group) {
  return map.getStyle().layers.filter((l) => groupOf(l) === group).map((l) => l.id);
}

/** Show or hide every style layer of a group. */
export function setGroupVisible(map, group, visible) {
  for (const id of layersOfGroup(map, group)) {
    map.setLayoutProperty(id, 'visibility', visible ? 'visible' : 'none');
  }
}

/** Layers a click can select, with the collection each shows. */
export function interactiveLayers(map) {
  return map
    .getStyle()
    .layers.filter((l) => l.metadata && l.metadata['citytwin:collection'])
    .map((l) => l.id);
}

export function collectionOfLayer(map, layerId) {
  const layer = map.getLayer(layerId);
  return layer && layer.metadata ? layer.metadata['citytwin:collection'] : null;
}

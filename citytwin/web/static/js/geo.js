// Coordinates: the twin keeps a projected CRS in metres; the map speaks longitude and latitude.
// Alarms, incidents and process results may come in the twin's CRS: proj4js (with the twin's
// definition from /console/api/meta) places them.

let toWgs84 = null;

export function setTwinCrs(definition) {
  if (!definition || !window.proj4) return;
  window.proj4.defs('CITYTWIN:TWIN', definition);
  toWgs84 = window.proj4('CITYTWIN:TWIN', 'EPSG:4326');
}

/** [lon, lat] of a point (x, y) in the twin's CRS. */
export function twinToLonLat(x, y) {
  if (!toWgs84 || !Number.isFinite(x) || !Number.isFinite(y)) return null;
  return toWgs84.forward([x, y]);
}

/** [x, y] in the twin's CRS of a point given in longitude and latitude. */
export function lonLatToTwin(lon, lat) {
  return toWgs84 ? toWgs84.inverse([lon, lat]) : null;
}

const WGS84_NAMES = /CRS84|EPSG:?:?4326|EPSG\/0\/4326|crs\/OGC\/1\.3\/CRS84/i;

function namedCrs(doc) {
  const crs = doc && doc.crs;
  if (!crs) return null;
  if (typeof crs === 'string') return crs;
  return (crs.properties && crs.properties.name) || null;
}

function firstPosition(geometry) {
  let c = geometry && (geometry.coordinates || (geometry.geometries && geometry.geometries[0]?.coordinates));
  while (Array.isArray(c) && Array.isArray(c[0])) c = c[0];
  return Array.isArray(c) ? c : null;
}

function mapPositions(coords, fn) {
  if (!Array.isArray(coords)) return coords;
  if (typeof coords[0] === 'number') return fn(coords);
  return coords.map((c) => mapPositions(c, fn));
}

function mapGeometry(geometry, fn) {
  if (!geometry) return geometry;
  if (geometry.type === 'GeometryCollection') {
    return { ...geometry, geometries: geometry.geometries.map((g) => mapGeometry(g, fn)) };
  }
  return { ...geometry, coordinates: mapPositions(geometry.coordinates, fn) };
}

/**
 * A GeoJSON object (FeatureCollection, Feature or geometry) in longitude and latitude: left as
 * it is when it names WGS 84 / CRS84 or its coordinates already look like degrees, otherwise
 * read as the twin's CRS and transformed.
 */
export function toLonLat(doc) {
  if (!doc) return doc;
  const name = namedCrs(doc);
  let projected;
  if (name) projected = !WGS84_NAMES.test(name);
  else {
    const sample =
      doc.type === 'FeatureCollection'
        ? firstPosition(doc.features.find((f) => f.geometry)?.geometry)
        : firstPosition(doc.type === 'Feature' ? doc.geometry : doc);
    projected = !!sample && (Math.abs(sample[0]) > 180 || Math.abs(sample[1]) > 90);
  }
  if (!projected || !toWgs84) return doc;
  const fn = (p) => {
    const [lon, lat] = toWgs84.forward([p[0], p[1]]);
    return p.length > 2 ? [lon, lat, p[2]] : [lon, lat];
  };
  const out = { ...doc };
  delete out.crs;
  if (doc.type === 'FeatureCollection') {
    out.features = doc.features.map((f) => ({ ...f, geometry: mapGeometry(f.geometry, fn) }));
  } else if (doc.type === 'Feature') {
    out.geometry = mapGeometry(doc.geometry, fn);
  } else {
    return mapGeometry(doc, fn);
  }
  return out;
}

/** [west, south, east, north] of a GeoJSON object in longitude and latitude, or null. */
export function bounds(doc) {
  let w = Infinity;
  let s = Infinity;
  let e = -Infinity;
  let n = -Infinity;
  const visit = (g) => {
    if (!g) return;
    if (g.type === 'FeatureCollection') g.features.forEach((f) => visit(f.geometry));
    else if (g.type === 'Feature') visit(g.geometry);
    else if (g.type === 'GeometryCollection') g.geometries.forEach(visit);
    else {
      mapPositions(g.coordinates, (p) => {
        w = Math.min(w, p[0]);
        s = Math.min(s, p[1]);
        e = Math.max(e, p[0]);
        n = Math.max(n, p[1]);
        return p;
      });
    }
  };
  visit(doc);
  return Number.isFinite(w) ? [w, s, e, n] : null;
}

/** The middle vertex of a line (or a polygon's first ring), for a label. */
export function middle(geometry) {
  if (!geometry) return null;
  if (geometry.type === 'Point') return geometry.coordinates;
  if (geometry.type === 'LineString') return geometry.coordinates[Math.floor(geometry.coordinates.length / 2)];
  if (geometry.type === 'MultiLineString') return middle({ type: 'LineString', coordinates: geometry.coordinates[0] });
  const b = bounds(geometry);
  return b ? [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] : null;
}

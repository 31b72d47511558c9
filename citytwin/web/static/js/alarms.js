// The live alarms and incidents panel: the active alarms and the incidents (GET /alarms,
// /incidents), kept current from the event stream (/events); severity colours; a click flies
// to the alarm and shows its details. The alarms also go on the map as halos.

import { ApiError, eventStream, getJSON } from './api.js';
import { twinToLonLat } from './geo.js';
import { t } from './i18n.js';
import { EVENTS_SOURCE, SEVERITY_COLOURS } from './map.js';

const RANK = { blue: 0, yellow: 1, orange: 2, red: 3 };

function time(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function severityName(s) {
  return s ? t(`sev_${s}`) : '';
}

export class AlarmPanel {
  constructor({ map, list, incidentList, count, note, live, onSelect, onChange }) {
    this.map = map;
    this.list = list;
    this.incidentList = incidentList;
    this.count = count;
    this.note = note;
    this.live = live;
    this.onSelect = onSelect || (() => {});
    this.onChange = onChange || (() => {});
    this.alarms = new Map();
    this.incidents = new Map();
    this.focused = null;
    this.stop = null;
  }

  /** Start fetching the active alarms and the incidents (before the map has loaded). */
  static prefetch() {
    const settle = (p) => p.then((doc) => ({ doc }), (err) => ({ err }));
    return {
      alarms: settle(getJSON('/alarms?status=active&limit=1000')),
      incidents: settle(getJSON('/incidents?limit=200')),
    };
  }

  /** Load the active alarms and the incidents (or take what ``prefetch`` started); resolves
   * when the panel shows them. */
  async load(early = null) {
    const problems = [];
    const got = async (what, url) => {
      const r = early ? await early[what] : { doc: await getJSON(url) };
      if (r.err) throw r.err;
      return r.doc;
    };
    try {
      const doc = await got('alarms', '/alarms?status=active&limit=1000');
      this.alarms = new Map((doc.value || doc || []).map((a) => [a.alarm_id, a]));
    } catch (err) {
      problems.push(this.describe('alarms', err));
    }
    try {
      const doc = await got('incidents', '/incidents?limit=200');
      this.incidents = new Map((doc.value || doc || []).map((i) => [i.incident_id, i]));
    } catch (err) {
      problems.push(this.describe('incidents', err));
    }
    this.note.hidden = !problems.length;
    this.note.textContent = problems.join(' ');
    this.problems = problems;
    this.render();
  }

  describe(what, err) {
    const why = err instanceof ApiError && err.missing ? 'this service has no monitoring' : err.message;
    return t('unavailable', { what, why });
  }

  /** Follow /events: alarm.* and incident.* update the panel; resync reloads it. */
  follow() {
    this.stop = eventStream('/events', {
      onState: (state) => {
        this.live.dataset.state = state;
      },
      onEvent: (name, data) => this.apply(name, data),
    });
  }

  apply(name, data) {
    if (name === 'resync') {
      this.load();
      return;
    }
    if (name.startsWith('alarm.') && data) {
      const alarm = data.alarm || data;
      if (!alarm.alarm_id) return;
      if (alarm.status === 'cleared' || name === 'alarm.cleared') this.alarms.delete(alarm.alarm_id);
      else this.alarms.set(alarm.alarm_id, alarm);
    } else if (name.startsWith('incident.') && data) {
      const incident = data.incident || data;
      if (!incident.incident_id) return;
      this.incidents.set(incident.incident_id, incident);
    } else {
      return;
    }
    this.render();
    this.onChange(name, data);
  }

  sortedAlarms() {
    return [...this.alarms.values()].sort(
      (a, b) => (RANK[b.severity] ?? -1) - (RANK[a.severity] ?? -1) || String(b.raised_at).localeCompare(String(a.raised_at)),
    );
  }

  sortedIncidents() {
    const open = (i) => (i.status === 'closed' ? 1 : 0);
    return [...this.incidents.values()].sort(
      (a, b) => open(a) - open(b) || String(b.opened_at).localeCompare(String(a.opened_at)),
    );
  }

  render() {
    const alarms = this.sortedAlarms();
    const incidents = this.sortedIncidents();
    this.list.dataset.alarmCount = String(alarms.length);
    this.list.dataset.incidentCount = String(incidents.filter((i) => i.status !== 'closed').length);
    this.count.textContent = String(alarms.length);
    this.count.dataset.severity = alarms.length ? alarms[0].severity : '';

    this.incidentList.replaceChildren(
      ...incidents.map((i) => this.item({
        kind: 'incident',
        id: i.incident_id,
        severity: i.severity,
        title: i.title || i.kind,
        sub: `${t(i.status) || i.status} · ${time(i.opened_at)}${i.alarm_ids ? ` · ${i.alarm_ids.length} ⚠` : ''}`,
        closed: i.status === 'closed',
        record: i,
      })),
    );
    const items = alarms.map((a) => this.item({
      kind: 'alarm',
      id: a.alarm_id,
      severity: a.severity,
      title: a.message || a.rule_id,
      sub: `${severityName(a.severity)} · ${a.source || ''} · ${time(a.raised_at)}${a.acknowledged ? ` · ${t('acknowledged')}` : ''}`,
      record: a,
    }));
    if (!items.length) {
      const empty = document.createElement('li');
      empty.className = 'empty';
      empty.textContent = t('no_alarms');
      items.push(empty);
    }
    this.list.replaceChildren(...items);
    this.drawOnMap();
  }

  item({ kind, id, severity, title, sub, closed, record }) {
    const li = document.createElement('li');
    li.className = `event ${kind}${closed ? ' closed' : ''}${this.focused === id ? ' focused' : ''}`;
    li.dataset[kind === 'alarm' ? 'alarmId' : 'incidentId'] = id;
    li.dataset.severity = severity || '';
    li.style.setProperty('--severity', SEVERITY_COLOURS[severity] || '#888');
    li.tabIndex = 0;
    const head = document.createElement('div');
    head.className = 'title';
    head.textContent = title;
    const meta = document.createElement('div');
    meta.className = 'sub';
    meta.textContent = sub;
    li.append(head, meta);
    const select = () => this.select(kind, record);
    li.addEventListener('click', select);
    li.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') select();
    });
    return li;
  }

  position(record) {
    return twinToLonLat(Number(record.x), Number(record.y));
  }

  /** Fly to an alarm or incident and show it. */
  select(kind, record) {
    const id = kind === 'alarm' ? record.alarm_id : record.incident_id;
    this.focused = id;
    const at = this.position(record);
    if (at) this.map.flyTo({ center: at, zoom: Math.max(this.map.getZoom(), 16.5), speed: 1.6 });
    this.render();
    this.onSelect(kind, record, at);
  }

  drawOnMap() {
    const features = [];
    const add = (kind, id, record) => {
      const at = this.position(record);
      if (!at) return;
      features.push({
        type: 'Feature',
        geometry: { type: 'Point', coordinates: at },
        properties: { kind, id, severity: record.severity, focus: this.focused === id },
      });
    };
    for (const a of this.alarms.values()) add('alarm', a.alarm_id, a);
    for (const i of this.incidents.values()) if (i.status !== 'closed') add('incident', i.incident_id, i);
    const source = this.map.getSource(EVENTS_SOURCE);
    if (source) source.setData({ type: 'FeatureCollection', features });
  }
}

// Labels of the console in English and Chinese; the choice is kept in localStorage.

const STRINGS = {
  en: {
    title: 'CityTwin operations console',
    virtual: 'Virtual city · not real data',
    search: 'Search',
    search_placeholder: 'Search by id or name',
    sign_in: 'Sign in',
    sign_out: 'Sign out',
    anonymous: 'not signed in (public data only)',
    layers: 'Layers',
    view: 'View',
    underground: 'Underground view (3D pipes)',
    exaggeration: 'Depth exaggeration',
    tools: 'Tools',
    tool_select: 'Select',
    tool_trace: 'Trace',
    tool_isolate: 'Burst isolation',
    tool_excavation: 'Excavation check',
    trace_kind: 'Direction',
    trace_connected: 'connected',
    trace_upstream: 'upstream',
    trace_downstream: 'downstream',
    dig_depth: 'Dig depth (m)',
    dig_finish: 'Check this area',
    clear: 'Clear',
    alarms: 'Alarms and incidents',
    live: 'live updates',
    details: 'Details',
    click_hint: 'Click a feature on the map.',
    with_password: 'Username and password',
    with_key: 'or an API key',
    username: 'Username',
    password: 'Password',
    api_key: 'API key',
    cancel: 'Cancel',
    hint_select: 'Click a feature to see its attributes.',
    hint_trace: 'Click a pipe or node to trace the network from it.',
    hint_isolate: 'Click a pipe where it burst: valves to close, who loses supply.',
    hint_excavation: 'Click the corners of the dig, then “Check this area” (or double-click).',
    zoom_in_underground: 'Zoom in (level 14 or more) to see the pipes in 3D.',
    zoom_in_networks: 'Zoom in to level {z} to see the utility networks.',
    underground_loading: 'Loading pipes in view…',
    underground_count: '{n} pipes shown at their depth',
    no_alarms: 'No active alarms.',
    no_incidents: '',
    incidents: 'Incidents',
    unavailable: '{what} is not available: {why}',
    not_signed_in_networks: 'Sign in to see the utility networks.',
    terrain: 'Terrain',
    buildings: 'Buildings',
    streets: 'Streets',
    water_bodies: 'Water',
    zones: 'Districts and zones',
    facilities: 'Facilities',
    sensors: 'Sensors',
    labels: 'Labels',
    state_normal: 'normal',
    state_no_data: 'no data',
    state_alarm: 'in alarm',
    sev_blue: 'blue', sev_yellow: 'yellow', sev_orange: 'orange', sev_red: 'red',
    valves_to_close: 'Valves to close',
    buildings_affected: 'Buildings without supply',
    residents_affected: 'Residents affected',
    critical_facilities: 'Critical facilities',
    links_isolated: 'Pipes isolated',
    traced: '{n} links and {m} nodes traced',
    dig_lines: '{n} lines within reach, {s} struck, {c} critical',
    running: 'Running {what}…',
    chart_loading: 'Loading readings…',
    no_readings: 'No readings.',
    latest: 'latest',
    results: '{n} found',
    nothing_found: 'Nothing found.',
    readings: 'Readings',
    open: 'open', closed: 'closed', active: 'active', cleared: 'cleared',
    acknowledged: 'acknowledged',
    // the flood panel (flood.js)
    flood: 'Flood scenarios',
    flood_none: 'No flood scenario kept yet.',
    flood_storm: '{p}-year {d}-min storm',
    flood_coupled_short: 'with drains',
    flood_buildings_short: 'buildings',
    flood_hide: 'Hide',
    flood_depth: 'Deepest water (m)',
    flood_buildings: 'Buildings flooded',
    flood_roads: 'Roads impassable (km)',
    flood_facilities: 'Facilities reached',
    flood_max_depth: 'Deepest water',
    flood_area: 'Flooded area (ha)',
    flood_balance: 'Mass balance error',
    flood_withheld: 'withheld (no access)',
    flood_run: 'Run a design storm',
    flood_return_period: 'Return period (years)',
    flood_duration: 'Rain (min)',
    flood_peak: 'Peak position',
    flood_after: 'Run on after the rain (min)',
    flood_cell: 'Cell size (m)',
    flood_solver: 'Solver',
    flood_solver_inertial: 'local inertia (fast)',
    flood_solver_swe: 'shallow water (full)',
    flood_coupled: 'Couple the drains (SWMM)',
    flood_view_only: 'Only the area in view',
    flood_start: 'Run',
    flood_cancel: 'Cancel the run',
    flood_sign_in: 'Sign in to run a flood simulation.',
    flood_queued: 'Waiting for a worker…',
    flood_done: 'Done: scenario {id}',
    flood_failed: 'The run failed: {why}',
    flood_dismissed: 'The run was cancelled.',
  },
  zh: {
    title: 'CityTwin 城市运行监测平台',
    virtual: '虚拟城市 · 非真实数据',
    search: '搜索',
    search_placeholder: '按编号或名称搜索',
    sign_in: '登录',
    sign_out: '退出',
    anonymous: '未登录（仅公开数据）',
    layers: '图层',
    view: '视图',
    underground: '地下视图（三维管线）',
    exaggeration: '埋深夸大',
    tools: '工具',
    tool_select: '选择',
    tool_trace: '追踪',
    tool_isolate: '爆管关阀',
    tool_excavation: '开挖检查',
    trace_kind: '方向',
    trace_connected: '连通',
    trace_upstream: '上游',
    trace_downstream: '下游',
    dig_depth: '开挖深度（米）',
    dig_finish: '检查该区域',
    clear: '清除',
    alarms: '报警与事件',
    live: '实时更新',
    details: '详情',
    click_hint: '点击地图上的要素。',
    with_password: '用户名和密码',
    with_key: '或 API 密钥',
    username: '用户名',
    password: '密码',
    api_key: 'API 密钥',
    cancel: '取消',
    hint_select: '点击要素查看属性。',
    hint_trace: '点击管线或管点，从该处追踪管网。',
    hint_isolate: '点击爆管位置：需关闭的阀门、停水范围。',
    hint_excavation: '依次点击开挖范围的顶点，然后点“检查该区域”（或双击）。',
    zoom_in_underground: '放大到 14 级以上以查看三维管线。',
    zoom_in_networks: '放大到 {z} 级以查看地下管网。',
    underground_loading: '正在加载视野内的管线…',
    underground_count: '按埋深显示 {n} 条管线',
    no_alarms: '当前无报警。',
    no_incidents: '',
    incidents: '事件',
    unavailable: '{what}暂不可用：{why}',
    not_signed_in_networks: '登录后可查看地下管网。',
    terrain: '地形',
    buildings: '建筑',
    streets: '道路',
    water_bodies: '水系',
    zones: '行政区与分区',
    facilities: '设施',
    sensors: '监测设备',
    labels: '注记',
    state_normal: '正常',
    state_no_data: '无数据',
    state_alarm: '报警',
    sev_blue: '蓝色', sev_yellow: '黄色', sev_orange: '橙色', sev_red: '红色',
    valves_to_close: '需关闭阀门',
    buildings_affected: '停水建筑',
    residents_affected: '受影响居民',
    critical_facilities: '关键设施',
    links_isolated: '隔离管段',
    traced: '追踪到 {n} 条管线、{m} 个管点',
    dig_lines: '范围内管线 {n} 条，将挖断 {s} 条，关键管线 {c} 条',
    running: '正在执行{what}…',
    chart_loading: '正在加载读数…',
    no_readings: '无读数。',
    latest: '最新',
    results: '找到 {n} 项',
    nothing_found: '未找到。',
    readings: '读数',
    open: '处理中', closed: '已关闭', active: '活动', cleared: '已解除',
    acknowledged: '已确认',
    // 内涝面板（flood.js）
    flood: '内涝情景',
    flood_none: '暂无内涝情景。',
    flood_storm: '{p} 年一遇 {d} 分钟暴雨',
    flood_coupled_short: '耦合管网',
    flood_buildings_short: '栋建筑',
    flood_hide: '隐藏',
    flood_depth: '最大水深（米）',
    flood_buildings: '进水建筑',
    flood_roads: '不可通行道路（公里）',
    flood_facilities: '受淹设施',
    flood_max_depth: '最大水深',
    flood_area: '积水面积（公顷）',
    flood_balance: '水量平衡误差',
    flood_withheld: '无权限，未显示',
    flood_run: '运行设计暴雨',
    flood_return_period: '重现期（年）',
    flood_duration: '降雨历时（分钟）',
    flood_peak: '雨峰位置',
    flood_after: '雨停后续算（分钟）',
    flood_cell: '网格尺寸（米）',
    flood_solver: '求解器',
    flood_solver_inertial: '局部惯性（快速）',
    flood_solver_swe: '浅水方程（完整）',
    flood_coupled: '耦合排水管网（SWMM）',
    flood_view_only: '仅当前视野范围',
    flood_start: '开始模拟',
    flood_cancel: '取消模拟',
    flood_sign_in: '登录后可运行内涝模拟。',
    flood_queued: '排队等待中…',
    flood_done: '完成：情景 {id}',
    flood_failed: '模拟失败：{why}',
    flood_dismissed: '模拟已取消。',
  },
};

const NETWORK_NAMES = {
  en: {
    water_supply: 'Water supply', sewer: 'Sewer', storm: 'Storm water', combined: 'Combined sewer',
    gas: 'Gas', power: 'Power', heating: 'Heating', telecom: 'Telecom',
  },
  zh: {
    water_supply: '供水', sewer: '污水', storm: '雨水', combined: '合流', gas: '燃气', power: '电力',
    heating: '热力', telecom: '通信',
  },
};

let lang = localStorage.getItem('citytwin.lang') === 'zh' ? 'zh' : 'en';
const listeners = [];

export function language() {
  return lang;
}

/** The label `key` in the current language, with `{name}` placeholders filled from `values`. */
export function t(key, values = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => (k in values ? String(values[k]) : `{${k}}`));
}

export function networkName(network) {
  return NETWORK_NAMES[lang][network] ?? network;
}

/** A collection's title in the current language (the catalogue has both). */
export function title(collection) {
  return (lang === 'zh' && collection.title_zh) || collection.title || collection.id;
}

export function setLanguage(next) {
  lang = next === 'zh' ? 'zh' : 'en';
  localStorage.setItem('citytwin.lang', lang);
  apply(document);
  for (const fn of listeners) fn(lang);
}

export function onLanguage(fn) {
  listeners.push(fn);
}

/** Fill every `data-i18n` element (text), `data-i18n-placeholder` and `data-i18n-title`. */
export function apply(root) {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
}

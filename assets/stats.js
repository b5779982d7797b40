// darkroom's Statistics view: GET /api/stats drawn as inline SVG (no library, nothing
// from another host), with provider health and pauses from GET /readyz. It refreshes
// every REFRESH_MS while shown, and soon after any task event on its own SSE stream
// (GET /api/events, every task the key may see), which is open only while the view is.
// Like app.js: every string from the server reaches the DOM through textContent or
// setAttribute only; no inline styles (the page's CSP allows none), colours come from
// classes in app.css.

const API_KEY_STORAGE = 'darkroom.apiKey'; // the key app.js keeps
const REFRESH_MS = 15 * 1000;
const EVENT_DEBOUNCE_MS = 1000;
const REQUEST_TIMEOUT_MS = 30 * 1000;
const CHART_HEIGHT = 180;
const SVG_NS = 'http://www.w3.org/2000/svg';
const PROVIDER_LABELS = { kie: 'KIE', gemini: 'Gemini' };
const STAGES = [
  ['queue', 'Queue'],
  ['provider', 'At provider'],
  ['endToEnd', 'End to end'],
];
const PERCENTILES = [
  ['p50Ms', 'p50'],
  ['p95Ms', 'p95'],
  ['p99Ms', 'p99'],
];

const view = {
  shown: false,
  timer: 0,
  debounce: 0,
  stream: null,
  seq: 0, // numbers the reads: an answer older than the last read asked for is dropped
  stats: null, // the last answer of /api/stats
  ready: null, // the last answer of /readyz
};

const els = {};

function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`darkroom: missing element #${id}`);
  return el;
}

function h(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = String(text);
  return el;
}

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

function apiKey() {
  try {
    return window.localStorage.getItem(API_KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function num(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

function providerLabel(name) {
  return PROVIDER_LABELS[name] || name;
}

function formatMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60 * 1000) return `${(ms / 1000).toFixed(ms < 10 * 1000 ? 1 : 0)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

function formatCount(n) {
  return Math.round(n).toLocaleString();
}

/** A GET of the API; `okStatuses` lists the statuses whose JSON body is an answer. */
async function getJson(path, okStatuses = [200]) {
  const headers = { Accept: 'application/json' };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const controller = new AbortController();
  const timer = window.setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(path, { headers, signal: controller.signal, cache: 'no-store', credentials: 'same-origin' });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!okStatuses.includes(response.status) || body === null || typeof body !== 'object') {
      const message = body && typeof body.error === 'string' ? body.error : `HTTP ${response.status}`;
      const err = new Error(message);
      err.status = response.status;
      throw err;
    }
    return body;
  } finally {
    window.clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// Showing and hiding the view
// ---------------------------------------------------------------------------

function showView(name, { focus = false } = {}) {
  const stats = name === 'stats';
  els.viewTasks.hidden = stats;
  els.viewStats.hidden = !stats;
  els.tabTasks.setAttribute('aria-selected', String(!stats));
  els.tabStats.setAttribute('aria-selected', String(stats));
  els.tabTasks.tabIndex = stats ? -1 : 0;
  els.tabStats.tabIndex = stats ? 0 : -1;
  if (focus) (stats ? els.tabStats : els.tabTasks).focus();
  const hash = stats ? '#statistics' : '';
  if (window.location.hash !== hash) {
    window.history.replaceState(null, '', `${window.location.pathname}${window.location.search}${hash}`);
  }
  view.shown = stats;
  if (stats) {
    refresh();
  } else {
    stopLive();
  }
}

function scheduleRefresh(delay = REFRESH_MS) {
  window.clearTimeout(view.timer);
  if (view.shown) view.timer = window.setTimeout(refresh, delay);
}

function stopLive() {
  window.clearTimeout(view.timer);
  window.clearTimeout(view.debounce);
  if (view.stream) {
    view.stream.close();
    view.stream = null;
  }
}

/** Opens the event stream once the key is known to work (a refused stream would only log errors). */
function openStream() {
  if (view.stream || !view.shown) return;
  const params = new URLSearchParams();
  const key = apiKey();
  if (key) params.set('access_token', key);
  const query = params.toString();
  const stream = new EventSource(`/api/events${query ? `?${query}` : ''}`);
  stream.addEventListener('message', () => {
    window.clearTimeout(view.debounce);
    view.debounce = window.setTimeout(refresh, EVENT_DEBOUNCE_MS);
  });
  stream.addEventListener('error', () => {
    if (stream.readyState === EventSource.CLOSED && view.stream === stream) view.stream = null;
  });
  view.stream = stream;
}

async function refresh() {
  if (!view.shown) return;
  view.seq += 1;
  const seq = view.seq;
  window.clearTimeout(view.timer);
  const window_ = els.window.value;
  try {
    const [stats, ready] = await Promise.all([
      getJson(`/api/stats?window=${encodeURIComponent(window_)}`),
      getJson('/readyz', [200, 503]).catch(() => null),
    ]);
    if (seq !== view.seq || !view.shown) return;
    view.stats = stats;
    view.ready = ready;
    els.error.hidden = true;
    render();
    els.updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    openStream();
  } catch (err) {
    if (seq !== view.seq || !view.shown) return;
    els.error.textContent = err.status === 401
      ? 'Statistics need an API key: enter it under "API key" above.'
      : `Statistics could not be read: ${err.message}`;
    els.error.hidden = false;
    if (err.status === 401) stopLive();
  }
  scheduleRefresh();
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

function render() {
  const s = view.stats;
  if (!s || !view.shown) return;
  const scope = s.scope === 'key'
    ? `Tasks of the key "${s.key}" created since ${new Date(s.since).toLocaleString()}.`
    : `Every task created since ${new Date(s.since).toLocaleString()}${s.scope === 'admin' ? ` (administrator key "${s.key}")` : ''}.`;
  els.scope.textContent = scope;
  renderTiles(s);
  drawThroughput(els.throughput, s);
  drawLatency(els.latency, s.durations || {});
  drawCredits(els.credits, s);
  drawFailures(els.failures, Array.isArray(s.failures) ? s.failures : []);
  renderProviders(s, view.ready);
  renderKeys(s.perKey);
}

function renderTiles(s) {
  const e2e = s.durations && s.durations.endToEnd;
  const tiles = [
    ['Tasks', formatCount(num(s.tasks))],
    ['Succeeded', formatCount(num(s.succeeded))],
    ['Failed', formatCount(num(s.failed))],
    ['Success rate', typeof s.successRate === 'number' ? `${(s.successRate * 100).toFixed(1)} %` : '—'],
    ['Credits', formatCount(num(s.credits))],
    ['p95 end to end', e2e ? formatMs(num(e2e.p95Ms)) : '—'],
  ];
  els.tiles.replaceChildren(...tiles.map(([label, value]) => {
    const tile = h('div', 'stats-tile');
    tile.append(h('dt', '', label), h('dd', '', value));
    return tile;
  }));
}

function chartWidth(container) {
  return Math.max(240, Math.floor(container.clientWidth || 480));
}

/** An empty chart saying why. */
function emptyChart(container, message) {
  container.replaceChildren(h('p', 'hint chart-empty', message));
}

function bucketLabel(iso, bucketSecs) {
  const d = new Date(iso);
  if (bucketSecs >= 86400) return iso.slice(5, 10); // UTC day: MM-DD
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/**
 * Stacked bars over time. `layers` are [key, class, label]; `value(bucket, key)` reads one.
 */
function drawBars(container, series, bucketSecs, layers, value, ariaLabel) {
  const width = chartWidth(container);
  const height = CHART_HEIGHT;
  const left = 40;
  const bottom = 22;
  const top = 8;
  const plotW = width - left - 6;
  const plotH = height - top - bottom;
  const totals = series.map((b) => layers.reduce((sum, [key]) => sum + value(b, key), 0));
  const max = niceMax(Math.max(0, ...totals));
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': ariaLabel, class: 'chart-svg' });
  root.append(svg('title', {}, ariaLabel));
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH - fraction * plotH;
    root.append(svg('line', { x1: left, x2: width - 6, y1: y, y2: y, class: 'grid' }));
    root.append(svg('text', { x: left - 4, y: y + 4, class: 'axis', 'text-anchor': 'end' }, formatCount(max * fraction)));
  }
  const slot = plotW / Math.max(1, series.length);
  const barW = Math.max(1, slot * 0.7);
  const labelEvery = Math.max(1, Math.ceil(series.length / Math.max(1, Math.floor(plotW / 56))));
  series.forEach((bucket, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    let y = top + plotH;
    for (const [key, className, label] of layers) {
      const v = value(bucket, key);
      if (v <= 0) continue;
      const h_ = (v / max) * plotH;
      y -= h_;
      const rect = svg('rect', { x: x.toFixed(1), y: y.toFixed(1), width: barW.toFixed(1), height: Math.max(0.5, h_).toFixed(1), class: `bar ${className}`, 'data-value': v });
      rect.append(svg('title', {}, `${bucketLabel(bucket.start, bucketSecs)}: ${formatCount(v)} ${label}`));
      root.append(rect);
    }
    if (i % labelEvery === 0) {
      root.append(svg('text', { x: (left + i * slot + slot / 2).toFixed(1), y: height - 6, class: 'axis', 'text-anchor': 'middle' }, bucketLabel(bucket.start, bucketSecs)));
    }
  });
  container.replaceChildren(root);
}

function drawThroughput(container, s) {
  const series = Array.isArray(s.series) ? s.series : [];
  if (num(s.tasks) === 0) {
    emptyChart(container, 'No tasks in this window.');
    return;
  }
  const layers = [
    ['succeeded', 'succeeded', 'succeeded'],
    ['failed', 'failed', 'failed'],
    ['other', 'other', 'unfinished'],
  ];
  const value = (b, key) => (key === 'other' ? Math.max(0, num(b.tasks) - num(b.succeeded) - num(b.failed)) : num(b[key]));
  drawBars(container, series, num(s.bucketSecs), layers, value, `Tasks per ${bucketName(s.bucketSecs)}: ${s.succeeded} succeeded, ${s.failed} failed of ${s.tasks}`);
}

function bucketName(secs) {
  if (secs >= 86400) return 'day';
  if (secs >= 3600) return 'hour';
  return `${Math.round(secs / 60)} minutes`;
}

function drawCredits(container, s) {
  const series = Array.isArray(s.series) ? s.series : [];
  const providers = Array.from(new Set(series.flatMap((b) => Object.keys(b.creditsByProvider || {})))).sort();
  els.creditsLegend.replaceChildren(...providers.map((p, i) => h('span', `key key-provider-${i % 4}`, providerLabel(p))));
  if (num(s.credits) === 0) {
    emptyChart(container, 'No credits spent in this window.');
    return;
  }
  const layers = providers.map((p, i) => [p, `provider-${i % 4}`, `credits (${providerLabel(p)})`]);
  const value = (b, key) => num((b.creditsByProvider || {})[key]);
  drawBars(container, series, num(s.bucketSecs), layers, value, `Credits per ${bucketName(s.bucketSecs)}: ${s.credits} in all`);
}

/** Horizontal bars: rows of [label, [[value, class, title]...]] on one scale. */
function drawHorizontal(container, rows, ariaLabel, format) {
  const width = chartWidth(container);
  const labelW = Math.min(150, Math.floor(width * 0.38));
  const barH = 10;
  const rowGap = 8;
  const rowH = rows.reduce((most, [, bars]) => Math.max(most, bars.length), 1) * (barH + 2) + rowGap;
  const height = rows.length * rowH + 8;
  const max = Math.max(1, ...rows.flatMap(([, bars]) => bars.map(([v]) => v)));
  const plotW = width - labelW - 70;
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': ariaLabel, class: 'chart-svg' });
  root.append(svg('title', {}, ariaLabel));
  rows.forEach(([label, bars], r) => {
    const y0 = 4 + r * rowH;
    root.append(svg('text', { x: labelW - 6, y: y0 + (bars.length * (barH + 2)) / 2 + 4, class: 'axis label', 'text-anchor': 'end' }, label));
    bars.forEach(([v, className, title], j) => {
      const y = y0 + j * (barH + 2);
      const w = Math.max(1, (v / max) * plotW);
      const rect = svg('rect', { x: labelW, y, width: w.toFixed(1), height: barH, class: `bar ${className}`, 'data-value': v });
      rect.append(svg('title', {}, `${label} ${title}: ${format(v)}`));
      root.append(rect);
      root.append(svg('text', { x: (labelW + w + 4).toFixed(1), y: y + barH - 1, class: 'axis' }, format(v)));
    });
  });
  container.replaceChildren(root);
}

function drawLatency(container, durations) {
  const rows = STAGES.filter(([key]) => durations[key]).map(([key, label]) => [
    `${label} (${formatCount(num(durations[key].count))})`,
    PERCENTILES.map(([field, name]) => [num(durations[key][field]), name, name]),
  ]);
  if (rows.length === 0) {
    emptyChart(container, 'No task reached the provider in this window.');
    return;
  }
  drawHorizontal(container, rows, 'Stage latencies, p50, p95 and p99', formatMs);
}

function drawFailures(container, failures) {
  if (failures.length === 0) {
    emptyChart(container, 'No failures in this window.');
    return;
  }
  const rows = failures.slice(0, 10).map((f) => [String(f.code), [[num(f.count), 'failed', 'tasks']]]);
  drawHorizontal(container, rows, 'Failures by error code', formatCount);
}

function renderProviders(s, ready) {
  const health = ready && ready.providers && typeof ready.providers === 'object' ? ready.providers : {};
  const figures = new Map((Array.isArray(s.providers) ? s.providers : []).map((p) => [p.provider, p]));
  const names = Array.from(new Set([...Object.keys(health), ...figures.keys()])).sort();
  els.providers.replaceChildren(...names.map((name) => {
    const item = h('li', 'stats-provider');
    const state = health[name] ? String(health[name].status) : 'unknown';
    const dot = h('span', `status-dot status-${state}`);
    dot.setAttribute('aria-hidden', 'true');
    const title = h('strong', '', providerLabel(name));
    item.append(dot, title, h('span', 'provider-state', ` ${providerState(health[name])}`));
    const f = figures.get(name);
    item.append(h('p', 'hint', f
      ? `${formatCount(num(f.tasks))} tasks: ${formatCount(num(f.succeeded))} succeeded, ${formatCount(num(f.failed))} failed, ${formatCount(num(f.credits))} credits`
      : 'No tasks in this window.'));
    return item;
  }));
  if (names.length === 0) els.providers.replaceChildren(h('li', 'hint', 'No provider information.'));
}

function providerState(health) {
  if (!health) return 'state unknown';
  if (health.status === 'paused' && health.code === 'credit_floor') {
    const balance = Number.isFinite(health.credits) ? ` (${formatCount(health.credits)} left)` : '';
    return `paused: credits below the floor${balance}, resumes once topped up`;
  }
  if (health.status === 'paused') {
    const secs = num(health.resumesInSecs);
    const why = health.code === '402' ? 'out of credits' : 'rate limited';
    return `paused (${why}), resumes in about ${secs >= 120 ? `${Math.round(secs / 60)} min` : `${secs} s`}`;
  }
  if (health.status === 'unreachable') {
    const since = typeof health.since === 'string' ? new Date(health.since) : null;
    return `cannot be reached${since && !Number.isNaN(since.getTime()) ? ` since ${since.toLocaleTimeString()}` : ''}`;
  }
  if (health.status === 'ok' && Number.isFinite(health.credits)) {
    return `working, ${formatCount(health.credits)} credits left`;
  }
  return health.status === 'ok' ? 'working' : String(health.status);
}

function renderKeys(perKey) {
  const rows = Array.isArray(perKey) ? perKey : null;
  els.keysCard.hidden = !rows || rows.length === 0;
  if (!rows) return;
  const body = els.keys.tBodies[0];
  body.replaceChildren(...rows.map((k) => {
    const tr = h('tr');
    const rate = typeof k.successRate === 'number' ? `${(k.successRate * 100).toFixed(1)} %` : '—';
    for (const cell of [k.key === null ? '(no key)' : String(k.key), formatCount(num(k.tasks)), formatCount(num(k.succeeded)), formatCount(num(k.failed)), rate, formatCount(num(k.credits))]) {
      tr.append(h('td', '', cell));
    }
    return tr;
  }));
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------

function init() {
  Object.assign(els, {
    tabTasks: byId('tab-tasks'),
    tabStats: byId('tab-stats'),
    viewTasks: byId('view-tasks'),
    viewStats: byId('view-stats'),
    window: byId('stats-window'),
    updated: byId('stats-updated'),
    scope: byId('stats-scope'),
    error: byId('stats-error'),
    tiles: byId('stats-tiles'),
    throughput: byId('chart-throughput'),
    latency: byId('chart-latency'),
    credits: byId('chart-credits'),
    creditsLegend: byId('credits-legend'),
    failures: byId('chart-failures'),
    providers: byId('stats-providers'),
    keysCard: byId('stats-keys-card'),
    keys: byId('stats-keys'),
  });
  els.tabTasks.addEventListener('click', () => showView('tasks'));
  els.tabStats.addEventListener('click', () => showView('stats'));
  // Arrow keys move between the tabs (the tab pattern).
  for (const tab of [els.tabTasks, els.tabStats]) {
    tab.addEventListener('keydown', (event) => {
      if (event.key === 'ArrowRight' || event.key === 'ArrowLeft') {
        event.preventDefault();
        showView(tab === els.tabTasks ? 'stats' : 'tasks', { focus: true });
      }
    });
  }
  els.window.addEventListener('change', refresh);
  let resize = 0;
  window.addEventListener('resize', () => {
    window.clearTimeout(resize);
    resize = window.setTimeout(render, 150);
  });
  window.addEventListener('hashchange', () => showView(window.location.hash === '#statistics' ? 'stats' : 'tasks'));
  if (window.location.hash === '#statistics') showView('stats');
}

init();

// darkroom front-end. Live progress over Server-Sent Events (one EventSource for every
// task still running), no polling.
// Plain ES2020 module: no dependencies, no build step, no innerHTML with data.
// Every string that comes from the server or the user reaches the DOM through
// textContent / setAttribute only.

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

// What POST /api/upload accepts until GET /api/info says (its `uploads`): the server's
// documented defaults (limits.max_upload_bytes, limits.max_upload_files,
// limits.max_image_dimension, limits.max_image_pixels in darkroom.example.toml).
const DEFAULT_UPLOAD_LIMITS = {
  contentTypes: ['image/png', 'image/jpeg', 'image/webp'],
  maxFileBytes: 10 * 1024 * 1024,
  maxFiles: 10,
  maxImageDimension: 10000,
  maxImagePixels: 40000000,
};
const TYPE_NAMES = { 'image/png': 'PNG', 'image/jpeg': 'JPEG', 'image/webp': 'WebP' };
const PROMPT_MAX = 5000;
const PROMPT_WARN = 4500;
// Elapsed times refresh every half second while a task runs.
const TICK_MS = 500;
const REQUEST_TIMEOUT_MS = 30 * 1000;
// An event id this server never issued: the stream then starts with the watched tasks'
// current state (a resync) instead of only what happens next.
const UNKNOWN_EVENT_ID = '0-0';
// Uploads can be large; give them much longer than ordinary requests.
const UPLOAD_TIMEOUT_MS = 5 * 60 * 1000;
const API_KEY_STORAGE = 'darkroom.apiKey';
// Past tasks are read from GET /api/tasks this many at a time ("Load more" reads the next
// page). The page's own address may ask for another size, e.g. /?pageSize=10 (1–200).
const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 200;

const STATUS_LABELS = {
  pending: 'Pending',
  processing: 'Processing',
  completed: 'Completed',
  failed: 'Failed',
};

// ---------------------------------------------------------------------------
// State: the one object the UI is rendered from
// ---------------------------------------------------------------------------

const state = {
  info: null, // answer of GET /api/info, or null when unknown
  providerCheck: false, // a /readyz read is under way
  providerTimer: 0, // re-reads /readyz when a pause should have ended
  apiKey: '',
  apiKeyShown: false,
  // Selected files: { id, file, previewUrl (null when not shown), kind (the image type its
  // bytes say, or ''), width, height, unreadable, error: null | { message, code } (the
  // server's refusal) }. A file with a fileProblem() stays listed but is not sent.
  files: [],
  nextFileId: 1,
  submitting: false,
  submitPhase: '', // button text while submitting
  tasks: new Map(), // taskId -> task (see createTask)
  timer: null, // id of the elapsed-time timer, or null when idle
  stream: null, // the EventSource, or null when no task is running
  streamKey: '', // the task ids the open stream watches, comma-joined
  lastEventId: '', // the last event id seen: a reopened stream resumes after it
  watched: new Set(), // the task ids the open stream was opened for
  listing: {
    pageSize: DEFAULT_PAGE_SIZE,
    cursor: null, // nextCursor of the last page read, or null when there is no more
    loaded: false, // the first page has been read
    loading: false, // a page request is in flight
    failed: false, // the last page request failed (the button then offers to try again)
    refused: false, // ... because of the API key (its error is cleared once a page loads)
    key: '', // the API key the list was read with
  },
  filter: 'all', // which task cards are shown: all | active | completed | failed
  dragDepth: 0, // dragenter/dragleave counter for the drop-zone highlight
  authErrorShown: false, // avoid repeating the 401 message
  announcements: [], // pending live-region messages (see announce)
};

/** DOM references, filled once in init(). */
const els = {};

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`darkroom: missing element #${id}`);
  return el;
}

/** createElement with a class name and optional text (always via textContent). */
function h(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = String(text);
  return el;
}

function str(value) {
  return typeof value === 'string' ? value : '';
}

function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function formatElapsed(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  return hours > 0
    ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}`
    : `${minutes}:${seconds}`;
}

/**
 * Only http(s) URLs (absolute or same-origin relative) may become href/src:
 * a result URL such as "javascript:…" from a misbehaving upstream must never
 * end up in a link.
 */
function safeHttpUrl(raw) {
  if (typeof raw !== 'string' || raw === '') return null;
  try {
    const url = new URL(raw, window.location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

function downloadName(taskId, index, url, outputFormat) {
  const base = taskId.replace(/[^A-Za-z0-9_.-]/g, '_') || 'result';
  let ext = outputFormat === 'jpeg' ? 'jpg' : 'png';
  try {
    const match = new URL(url).pathname.match(/\.(png|jpe?g|webp)$/i);
    if (match) ext = match[1].toLowerCase();
  } catch {
    // keep the extension derived from the output format
  }
  return `${base}-${index + 1}.${ext}`;
}

function announce(message) {
  // Messages from the same tick are batched so none is overwritten unheard;
  // clearing first makes screen readers re-announce identical text.
  state.announcements.push(message);
  if (state.announcements.length > 1) return;
  els.liveRegion.textContent = '';
  window.setTimeout(() => {
    els.liveRegion.textContent = state.announcements.join(' ');
    state.announcements = [];
  }, 100);
}

function setFormStatus(message) {
  els.formStatus.textContent = message;
}

// ---------------------------------------------------------------------------
// API key (localStorage may be unavailable, e.g. in some private modes)
// ---------------------------------------------------------------------------

function loadApiKey() {
  try {
    return window.localStorage.getItem(API_KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function saveApiKey(key) {
  try {
    if (key) window.localStorage.setItem(API_KEY_STORAGE, key);
    else window.localStorage.removeItem(API_KEY_STORAGE);
  } catch {
    // Not persisted; the key still works for this page view.
  }
}

function showApiKeySection(focus) {
  state.apiKeyShown = true;
  els.apiKeySection.hidden = false;
  if (focus) els.apiKeyInput.focus();
}

// ---------------------------------------------------------------------------
// API client
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, { code = '', status = 0, network = false, body = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.network = network;
    this.body = body;
  }
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * One place for every call to darkroom's API: adds the Bearer key, applies a
 * timeout, and turns every failure (network, non-JSON, HTTP error,
 * success:false) into an ApiError carrying a human sentence.
 */
async function api(path, { method = 'GET', json, formData, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
  const headers = { Accept: 'application/json' };
  if (state.apiKey) headers.Authorization = `Bearer ${state.apiKey}`;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (formData) {
    body = formData; // the browser sets the multipart boundary itself
  }

  const controller = new AbortController();
  const timer = window.setTimeout(() => controller.abort(), timeoutMs);
  let response;
  let data;
  try {
    response = await fetch(path, {
      method,
      headers,
      body,
      signal: controller.signal,
      credentials: 'same-origin',
      cache: 'no-store',
    });
    data = await readJson(response);
  } catch (err) {
    const timedOut = err && err.name === 'AbortError';
    throw new ApiError(
      timedOut
        ? `The darkroom server did not answer within ${Math.round(timeoutMs / 1000)} seconds.`
        : 'Network error: could not reach the darkroom server. Check that it is running and your connection works, then try again.',
      { network: true },
    );
  } finally {
    window.clearTimeout(timer);
  }

  const code = data && typeof data.code === 'string' ? data.code : '';
  if (response.status === 401) {
    throw new ApiError('API key missing or wrong', { code: code || 'unauthorized', status: 401, body: data });
  }
  if (!response.ok || data === null || typeof data !== 'object' || data.success === false) {
    let message = data && str(data.error);
    if (!message) {
      const statusText = response.statusText ? ` ${response.statusText}` : '';
      message = data === null
        ? `Unexpected answer from the server (HTTP ${response.status}${statusText}, not JSON).`
        : `The server reported an error (HTTP ${response.status}${statusText}).`;
    }
    throw new ApiError(message, { code, status: response.status, body: data });
  }
  return data;
}

// ---------------------------------------------------------------------------
// Error area
// ---------------------------------------------------------------------------

function showError(message, code = '', details = []) {
  els.errorMessage.textContent = message;
  els.errorCode.textContent = code;
  els.errorCodeLine.hidden = !code;
  els.errorDetails.replaceChildren(...details.map((line) => h('li', '', line)));
  els.errorDetails.hidden = details.length === 0;
  els.errorArea.hidden = false;
}

function clearError() {
  els.errorArea.hidden = true;
  els.errorMessage.textContent = '';
  els.errorCode.textContent = '';
  els.errorDetails.replaceChildren();
}

function showApiError(err, details = []) {
  if (err instanceof ApiError) {
    if (err.status === 401) showApiKeySection(true);
    showError(err.message, err.code, details);
  } else {
    // A bug in this page rather than a server answer; still say something.
    console.error(err);
    showError('Something went wrong in the page. Reload and try again.', '', details);
  }
}

// ---------------------------------------------------------------------------
// Header: GET /api/info
// ---------------------------------------------------------------------------

async function loadInfo() {
  try {
    state.info = await api('/api/info');
  } catch (err) {
    state.info = null;
    els.providerBadge.textContent = 'server unavailable';
    els.providerBadge.dataset.state = 'error';
    showApiError(err);
    return;
  }
  renderInfo();
}

function renderInfo() {
  const info = state.info;
  const provider = str(info.provider) || 'unknown provider';
  els.providerBadge.textContent = info.simulator === true ? `${provider} · simulator` : provider;
  els.providerBadge.dataset.state = info.simulator === true ? 'simulator' : 'live';
  els.providerBadge.title = `Image provider: ${provider}${str(info.storage) ? `, storage: ${info.storage}` : ''}`;
  if (str(info.version)) {
    els.serverVersion.textContent = `v${info.version}`;
    els.serverVersion.hidden = false;
  }
  renderSimulatorNotice(info);
  renderProviders(info);
  renderDropHint();
  renderFiles(); // the limits may differ from the defaults files were checked against
  if (info.apiKeysRequired === true) showApiKeySection(false);
  renderForm();
}

// ---------------------------------------------------------------------------
// Provider pauses: GET /readyz
// ---------------------------------------------------------------------------

const PROVIDER_LABELS = { kie: 'KIE', gemini: 'Gemini' };

function providerLabel(name) {
  return PROVIDER_LABELS[name] || name;
}

/** "KIE", "KIE and Gemini", "A, B and C". */
function joinNames(names) {
  return names.length <= 1 ? names.join('') : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

/** Names every provider darkroom's built-in simulators stand in for (none: no banner). */
function renderSimulatorNotice(info) {
  const providers = Array.isArray(info.providers) ? info.providers : [];
  const simulated = providers.filter((p) => p && p.simulator === true && str(p.name)).map((p) => providerLabel(p.name));
  // An older server lists no providers: its one flag is about the default provider.
  if (simulated.length === 0 && providers.length === 0 && info.simulator === true) {
    simulated.push(providerLabel(str(info.provider)));
  }
  els.simulatorNoticeText.textContent = simulated.length === providers.length || providers.length === 0
    ? `images are generated locally by darkroom's built-in ${joinNames(simulated)} simulator${simulated.length === 1 ? '' : 's'}; no credits are spent.`
    : `${joinNames(simulated)} tasks are generated locally by darkroom's built-in simulator${simulated.length === 1 ? '' : 's'} (no credits spent); the other providers are real.`;
  els.simulatorNotice.hidden = simulated.length === 0;
}

/**
 * Reads which providers are paused or cannot be reached and says so above the page. Asked
 * on load and when a task reports either; asked once more when the pause should have ended,
 * or, for a provider out of reach, after darkroom's next probe of it.
 */
async function checkProviders() {
  if (state.providerCheck) return;
  state.providerCheck = true;
  let ready;
  try {
    ready = await api('/readyz');
  } catch {
    ready = null; // the instance itself is in trouble; requests will say so
  } finally {
    state.providerCheck = false;
  }
  const providers = ready && typeof ready.providers === 'object' && ready.providers ? ready.providers : {};
  const lines = [];
  let resumesIn = 0;
  for (const [name, health] of Object.entries(providers)) {
    if (!health) continue;
    const label = providerLabel(name);
    if (health.status === 'unreachable') {
      const next = Number.isFinite(health.nextProbeInSecs) ? health.nextProbeInSecs : 0;
      resumesIn = Math.max(resumesIn, next);
      const since = typeof health.since === 'string' ? new Date(health.since) : null;
      const when = since && !Number.isNaN(since.getTime())
        ? ` since ${since.toLocaleTimeString()}`
        : '';
      lines.push(`${label} cannot be reached${when}: new ${label} tasks wait in the queue, spending no attempt, and are submitted when it answers again.`);
      continue;
    }
    if (health.status !== 'paused') continue;
    if (health.code === 'credit_floor') {
      // Not over at a time: over once darkroom reads the balance back at the floor or
      // above. Asked again in half a minute.
      resumesIn = Math.max(resumesIn, 30);
      const balance = Number.isFinite(health.credits) ? ` (${health.credits})` : '';
      const floor = Number.isFinite(health.creditFloor) ? ` of ${health.creditFloor}` : '';
      lines.push(`${label}'s credit balance${balance} is below the floor${floor} set for darkroom (top up the account): new ${label} tasks wait in the queue and are submitted once the balance is back at the floor or above.`);
      continue;
    }
    const secs = Number.isFinite(health.resumesInSecs) ? health.resumesInSecs : 0;
    resumesIn = Math.max(resumesIn, secs);
    const when = secs >= 120 ? `about ${Math.round(secs / 60)} min` : `about ${secs} s`;
    const why = health.code === '402'
      ? `${label} reports insufficient credits (top up the account)`
      : `${label} is rate limiting`;
    lines.push(`${why}: new ${label} tasks wait in the queue and are submitted when it resumes, in ${when}.`);
  }
  els.providerNoticeText.textContent = lines.join(' ');
  els.providerNotice.hidden = lines.length === 0;
  window.clearTimeout(state.providerTimer);
  if (lines.length > 0) {
    state.providerTimer = window.setTimeout(checkProviders, (resumesIn + 1) * 1000);
  }
}

/** Fills the provider choice from /api/info; the server's default is preselected. */
function renderProviders(info) {
  const providers = Array.isArray(info.providers) ? info.providers : [];
  if (providers.length === 0) return;
  const fallback = str(info.defaultProvider) || str(info.provider);
  const chosen = els.providerSelect.value || fallback;
  els.providerSelect.replaceChildren();
  for (const p of providers) {
    const name = str(p && p.name);
    if (!name) continue;
    const option = document.createElement('option');
    option.value = name;
    const model = str(p.model);
    // Simulated or not is in the banner; the option stays short enough to show whole.
    option.textContent = `${providerLabel(name)}${model ? ` (${model})` : ''}`;
    option.selected = name === chosen;
    els.providerSelect.append(option);
  }
}

// ---------------------------------------------------------------------------
// File selection
// ---------------------------------------------------------------------------

/** The upload limits /api/info states, or the defaults before it answers. */
function uploadLimits() {
  const u = state.info && state.info.uploads;
  if (!u || typeof u !== 'object') return DEFAULT_UPLOAD_LIMITS;
  const num = (value, fallback) => (Number.isFinite(value) && value >= 0 ? value : fallback);
  const types = Array.isArray(u.contentTypes) ? u.contentTypes.filter((t) => typeof t === 'string') : [];
  return {
    contentTypes: types.length > 0 ? types : DEFAULT_UPLOAD_LIMITS.contentTypes,
    maxFileBytes: num(u.maxFileBytes, DEFAULT_UPLOAD_LIMITS.maxFileBytes),
    maxFiles: num(u.maxFiles, DEFAULT_UPLOAD_LIMITS.maxFiles),
    maxImageDimension: num(u.maxImageDimension, DEFAULT_UPLOAD_LIMITS.maxImageDimension),
    maxImagePixels: num(u.maxImagePixels, DEFAULT_UPLOAD_LIMITS.maxImagePixels),
  };
}

/** "PNG, JPEG or WebP". */
function acceptedTypesText(limits) {
  const names = limits.contentTypes.map((t) => TYPE_NAMES[t] || t);
  return names.length <= 1 ? names.join('') : `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}`;
}

function renderDropHint() {
  const limits = uploadLimits();
  els.dropHint.textContent = `or drag and drop ${acceptedTypesText(limits)} files here (at most ${formatBytes(limits.maxFileBytes)} each, ${limits.maxFiles} at a time)`;
  els.fileInput.accept = limits.contentTypes.join(',');
}

/**
 * The image type a file's first bytes say it is, or '': the server decides from the bytes
 * too (never from the name or the declared type), with the same magic numbers.
 */
async function sniffType(file) {
  let bytes;
  try {
    bytes = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  } catch {
    return '';
  }
  const startsWith = (magic, at = 0) => magic.every((byte, i) => bytes[at + i] === byte);
  if (startsWith([0xff, 0xd8, 0xff])) return 'image/jpeg';
  if (startsWith([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'image/png';
  if (bytes.length >= 12 && startsWith([0x52, 0x49, 0x46, 0x46]) && startsWith([0x57, 0x45, 0x42, 0x50], 8)) return 'image/webp';
  return '';
}

/**
 * Loads the file as an image: its size in pixels, and its preview URL if it loads (a file
 * the browser cannot show gets no thumbnail rather than a broken one).
 */
function measureImage(entry) {
  return new Promise((done) => {
    const url = URL.createObjectURL(entry.file);
    const img = new Image();
    img.onload = () => {
      entry.width = img.naturalWidth;
      entry.height = img.naturalHeight;
      entry.previewUrl = url;
      done();
    };
    img.onerror = () => {
      entry.unreadable = true;
      URL.revokeObjectURL(url);
      done();
    };
    img.src = url;
  });
}

/** Why the server would refuse this file (so it is not sent), or '' when it may be sent. */
function fileProblem(entry) {
  const limits = uploadLimits();
  const { file } = entry;
  if (file.size === 0) return 'is empty.';
  if (!entry.kind || !limits.contentTypes.includes(entry.kind)) return `is not a ${acceptedTypesText(limits)} image.`;
  if (file.size > limits.maxFileBytes) {
    return `is ${formatBytes(file.size)}; the limit is ${formatBytes(limits.maxFileBytes)} per file.`;
  }
  if (entry.unreadable) return 'cannot be read as an image (is it damaged?).';
  if (entry.width > limits.maxImageDimension || entry.height > limits.maxImageDimension) {
    return `is ${entry.width}×${entry.height} pixels; at most ${limits.maxImageDimension} wide or high.`;
  }
  if (entry.width * entry.height > limits.maxImagePixels) {
    return `has ${entry.width * entry.height} pixels; at most ${limits.maxImagePixels}.`;
  }
  return '';
}

/** The files a Generate would send: those with no problem. */
function sendableFiles() {
  return state.files.filter((entry) => !fileProblem(entry));
}

/** Checks each file (type and size from its bytes, then its pixels) and lists it. */
async function addFiles(fileList) {
  if (state.submitting) return;
  const checked = [];
  for (const file of Array.from(fileList)) {
    const duplicate = state.files.concat(checked).some((entry) => entry.file.name === file.name
      && entry.file.size === file.size && entry.file.lastModified === file.lastModified);
    if (duplicate) continue;
    const entry = {
      id: state.nextFileId++,
      file,
      previewUrl: null,
      kind: await sniffType(file),
      width: 0,
      height: 0,
      unreadable: false,
      error: null,
    };
    if (!fileProblem(entry)) await measureImage(entry);
    if (fileProblem(entry) && entry.previewUrl) {
      // Too many pixels: not decoded for a thumbnail either.
      URL.revokeObjectURL(entry.previewUrl);
      entry.previewUrl = null;
    }
    checked.push(entry);
  }
  if (state.submitting) {
    // A submit began while the files were read: they join no request.
    for (const entry of checked) if (entry.previewUrl) URL.revokeObjectURL(entry.previewUrl);
    return;
  }
  state.files.push(...checked);
  const refused = checked.filter((entry) => fileProblem(entry)).length;
  const added = checked.length - refused;
  if (checked.length > 0) {
    const notSent = `${refused} file${refused === 1 ? '' : 's'} cannot be sent.`;
    setFormStatus(refused === 0
      ? `${added} image${added === 1 ? '' : 's'} added.`
      : (added === 0 ? notSent : `${added} image${added === 1 ? '' : 's'} added; ${notSent}`));
  }
  renderFiles();
  renderForm();
}

/** Removes a file from the selection; revokes its preview unless a task now owns it. */
function removeFile(fileId, { keepPreview = false } = {}) {
  const index = state.files.findIndex((entry) => entry.id === fileId);
  if (index === -1) return -1;
  const [entry] = state.files.splice(index, 1);
  if (!keepPreview && entry.previewUrl) URL.revokeObjectURL(entry.previewUrl);
  return index;
}

function handleRemoveClick(event) {
  const button = event.target.closest('button.file-remove');
  if (!button || state.submitting) return;
  const index = removeFile(Number(button.dataset.fileId));
  renderFiles();
  renderForm();
  // Keep keyboard focus in a sensible place after the button disappears.
  const buttons = els.fileList.querySelectorAll('button.file-remove');
  if (buttons.length > 0) buttons[Math.min(index, buttons.length - 1)].focus();
  else els.fileInput.focus();
}

function renderFiles() {
  const items = state.files.map((entry) => {
    const problem = fileProblem(entry);
    const li = h('li', 'file-item');
    li.dataset.state = problem || entry.error ? 'error' : 'ok';
    li.dataset.fileName = entry.file.name;

    let thumb;
    if (entry.previewUrl && !problem) {
      thumb = h('img', 'file-thumb');
      thumb.src = entry.previewUrl;
      thumb.alt = ''; // the file name next to it already describes it
    } else {
      // No preview of a file that is not sent (or that the browser cannot show).
      thumb = h('span', 'file-thumb file-thumb-none', problem ? '!' : '');
      thumb.setAttribute('aria-hidden', 'true');
    }

    const info = h('div', 'file-info');
    info.append(h('span', 'file-name', entry.file.name), h('span', 'file-size', formatBytes(entry.file.size)));
    if (problem) {
      info.append(h('p', 'file-error', `Not sent: it ${problem}`));
    } else if (entry.error) {
      const err = h('p', 'file-error', entry.error.message);
      if (entry.error.code) err.append(' ', h('code', 'error-code-inline', entry.error.code));
      info.append(err);
    }

    const remove = h('button', 'button ghost file-remove', 'Remove');
    remove.type = 'button';
    remove.dataset.fileId = String(entry.id);
    remove.setAttribute('aria-label', `Remove ${entry.file.name}`);
    remove.disabled = state.submitting;

    li.append(thumb, info, remove);
    return li;
  });
  els.fileList.replaceChildren(...items);

  const count = state.files.length;
  const refused = count - sendableFiles().length;
  const errors = state.files.filter((entry) => entry.error && !fileProblem(entry)).length;
  let summary = count === 0 ? 'No images selected.' : `${count} file${count === 1 ? '' : 's'} selected.`;
  if (refused > 0) summary += ` ${refused} cannot be sent (shown below).`;
  if (errors > 0) summary += ` ${errors} refused by the server (shown below).`;
  els.fileSummary.textContent = summary;
}

// ---------------------------------------------------------------------------
// Drag and drop
// ---------------------------------------------------------------------------

function dragHasFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes('Files');
}

function setupDragAndDrop() {
  const zone = els.dropZone;
  zone.addEventListener('dragenter', (event) => {
    if (!dragHasFiles(event)) return;
    event.preventDefault();
    state.dragDepth += 1;
    zone.classList.add('is-dragover');
  });
  zone.addEventListener('dragover', (event) => {
    if (!dragHasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = state.submitting ? 'none' : 'copy';
  });
  zone.addEventListener('dragleave', () => {
    // dragleave also fires when moving over child elements, hence the counter.
    state.dragDepth = Math.max(0, state.dragDepth - 1);
    if (state.dragDepth === 0) zone.classList.remove('is-dragover');
  });
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    state.dragDepth = 0;
    zone.classList.remove('is-dragover');
    if (event.dataTransfer && event.dataTransfer.files.length > 0) addFiles(event.dataTransfer.files);
  });
  // A file dropped next to the zone would otherwise make the browser navigate
  // away to the image, losing every running task card.
  window.addEventListener('dragover', (event) => {
    if (!dragHasFiles(event)) return;
    event.preventDefault();
    if (!zone.contains(event.target)) event.dataTransfer.dropEffect = 'none';
  });
  window.addEventListener('drop', (event) => {
    if (dragHasFiles(event)) event.preventDefault();
  });
}

// ---------------------------------------------------------------------------
// Form
// ---------------------------------------------------------------------------

function promptText() {
  return els.promptInput.value;
}

/** Problems with the selection, one sentence each, shown next to the Generate button. */
function formErrors() {
  const lines = state.files
    .map((entry) => [entry, fileProblem(entry)])
    .filter(([, problem]) => problem)
    .map(([entry, problem]) => `${entry.file.name} ${problem} Remove it or choose another file.`);
  const { maxFiles } = uploadLimits();
  const sendable = sendableFiles().length;
  if (sendable > maxFiles) {
    lines.push(`At most ${maxFiles} images can be sent at once; remove ${sendable - maxFiles}.`);
  }
  return lines;
}

function canSubmit() {
  const prompt = promptText();
  const sendable = sendableFiles().length;
  return !state.submitting && sendable > 0 && sendable <= uploadLimits().maxFiles
    && prompt.trim() !== '' && prompt.length <= PROMPT_MAX;
}

function renderForm() {
  const length = promptText().length;
  els.promptCounter.textContent = `${length} / ${PROMPT_MAX}`;
  els.promptCounter.classList.toggle('near-limit', length >= PROMPT_WARN);

  els.generateButton.disabled = !canSubmit();
  els.generateButton.textContent = state.submitting ? state.submitPhase : 'Generate';
  els.form.setAttribute('aria-busy', state.submitting ? 'true' : 'false');
  els.fileInput.disabled = state.submitting;
  els.dropZone.classList.toggle('is-disabled', state.submitting);

  const missing = [];
  if (sendableFiles().length === 0) missing.push(state.files.length === 0 ? 'add at least one image' : 'add at least one image that can be sent');
  if (promptText().trim() === '') missing.push('write a prompt');
  els.generateHint.textContent = !state.submitting && missing.length > 0
    ? `To generate, ${missing.join(' and ')}.`
    : '';

  const errors = formErrors();
  els.formErrors.replaceChildren(...errors.map((line) => h('li', '', line)));
  els.formErrors.hidden = errors.length === 0;
}

function setSubmitting(submitting, phase = '') {
  state.submitting = submitting;
  state.submitPhase = phase;
  renderFiles(); // enables/disables the remove buttons
  renderForm();
}

/**
 * Pairs answer entries (which carry a filename) with the local files that were
 * sent, so per-file errors and thumbnails land on the right file. `groups` is
 * a list of entry arrays (uploaded, errors) sharing one pool of files; the
 * result has the same shape, with null where no file matched.
 * Names are matched first (duplicates in order, same size preferred). If the
 * server accounted for every file but renamed some (e.g. sanitised names),
 * the leftovers are paired in request order.
 */
function pairWithFiles(groups, batch) {
  const used = new Set();
  const results = groups.map((entries) => entries.map((entry) => {
    const name = str(entry && entry.filename);
    const candidates = batch.filter((file) => !used.has(file.id) && file.file.name === name);
    const match = candidates.find((file) => entry && entry.size === file.file.size) || candidates[0] || null;
    if (match) used.add(match.id);
    return match;
  }));
  const total = groups.reduce((sum, entries) => sum + entries.length, 0);
  if (total === batch.length) {
    const leftovers = batch.filter((file) => !used.has(file.id));
    results.forEach((matches) => matches.forEach((match, i) => {
      if (!match && leftovers.length > 0) matches[i] = leftovers.shift();
    }));
  }
  return results;
}

/** Puts upload errors on their files; returns sentences for errors no file matched. */
function applyUploadErrors(errors, files) {
  const unmatched = [];
  errors.forEach((error, i) => {
    const message = str(error && error.error) || 'This file could not be uploaded.';
    const code = str(error && error.code);
    if (files[i]) files[i].error = { message, code };
    else unmatched.push(`${str(error && error.filename) || 'A file'}: ${message}${code ? ` (${code})` : ''}`);
  });
  return unmatched;
}

function errorList(body) {
  return body && Array.isArray(body.errors) ? body.errors : [];
}

/** POST /api/upload; returns { uploaded: [{ key, url, filename, fileEntry }], unmatchedErrors }. */
async function uploadFiles(batch) {
  const formData = new FormData();
  for (const entry of batch) formData.append('files', entry.file, entry.file.name);

  let data;
  try {
    data = await api('/api/upload', { method: 'POST', formData, timeoutMs: UPLOAD_TIMEOUT_MS });
  } catch (err) {
    // A rejected upload may still say which files were wrong.
    const errors = errorList(err && err.body);
    const [errorFiles] = pairWithFiles([errors], batch);
    if (err instanceof ApiError) err.details = applyUploadErrors(errors, errorFiles);
    throw err;
  }

  const errors = errorList(data);
  const uploadedRaw = Array.isArray(data.uploaded)
    ? data.uploaded.filter((u) => u && typeof u.key === 'string' && typeof u.url === 'string')
    : [];
  const [uploadedFiles, errorFiles] = pairWithFiles([uploadedRaw, errors], batch);
  const unmatchedErrors = applyUploadErrors(errors, errorFiles);
  const uploaded = uploadedRaw.map((u, i) => ({
    key: u.key,
    url: u.url,
    filename: str(u.filename),
    fileEntry: uploadedFiles[i],
  }));
  return { uploaded, unmatchedErrors };
}

/** Reads a generate failure of unknown exact shape into { key, message, code }. */
function describeFailure(failure) {
  if (typeof failure === 'string') return { key: '', message: failure, code: '' };
  if (!failure || typeof failure !== 'object') return { key: '', message: 'Task could not be created.', code: '' };
  return {
    key: str(failure.sourceKey) || str(failure.key),
    message: str(failure.error) || str(failure.message) || 'Task could not be created.',
    code: str(failure.code),
  };
}

async function handleSubmit(event) {
  event.preventDefault();
  if (!canSubmit()) return;

  clearError();
  // Snapshot everything now: the user may keep typing while we wait. Files that cannot be
  // sent stay listed with their reason.
  const batch = sendableFiles();
  for (const entry of batch) entry.error = null;
  const prompt = promptText().trim();
  const aspectRatio = els.aspectRatio.value;
  const outputFormat = els.outputFormat.value;
  const provider = els.providerSelect.value;

  setSubmitting(true, 'Uploading…');
  setFormStatus(`Uploading ${batch.length} image${batch.length === 1 ? '' : 's'}…`);
  let carriedDetails = []; // upload problems to keep visible if generate fails too
  try {
    const { uploaded, unmatchedErrors } = await uploadFiles(batch);
    carriedDetails = unmatchedErrors;
    renderFiles();
    if (uploaded.length === 0) {
      showError('None of the images could be uploaded, so no task was created.', '', unmatchedErrors);
      setFormStatus('Upload failed: the server refused every image (its reasons are on the files above).');
      return;
    }
    if (unmatchedErrors.length > 0) showError('Some files could not be uploaded.', '', unmatchedErrors);

    setSubmitting(true, 'Creating tasks…');
    setFormStatus(`Uploaded ${uploaded.length} of ${batch.length}. Creating tasks…`);
    // A batch is followed and downloaded (ZIP) as one; single tasks stand alone.
    const asBatch = els.batchToggle.checked;
    const data = await api(asBatch ? '/api/batches' : '/api/generate', {
      method: 'POST',
      json: {
        prompt,
        uploads: uploaded.map((u) => ({ key: u.key, url: u.url })),
        aspectRatio,
        outputFormat,
        ...(provider ? { provider } : {}),
      },
    });

    const batchId = asBatch ? str(data.batchId) : '';
    // What the server used when the answer does not say (a batch's answer lists ids only).
    const chosenProvider = provider || str(state.info && (state.info.defaultProvider || state.info.provider));
    const created = addTasksFromResponse(data, uploaded, { prompt, outputFormat, batchId, provider: chosenProvider });
    const failureLines = applyGenerateFailures(data.failures, uploaded);
    if (failureLines.length > 0) showError('Some tasks could not be created.', '', failureLines);
    setFormStatus(str(data.message) || `Created ${created} task${created === 1 ? '' : 's'}.`);
    if (asBatch && str(data.batchId)) showBatchLink(str(data.batchId), created);
  } catch (err) {
    showApiError(err, carriedDetails.concat((err && err.details) || []));
    // Said next to the button too: the error area is at the top of the page.
    setFormStatus(`Generation did not start: ${err instanceof ApiError ? err.message : 'unexpected error'}`);
  } finally {
    setSubmitting(false);
  }
}

/**
 * A link to a batch's ZIP. The server answers it once the batch is finished; `?wait=true`
 * lets it wait (a bounded while) for the last tasks, so the link works when clicked early.
 */
function batchZipLink(batchId, className, text) {
  const link = h('a', className, text);
  link.href = `/api/batches/${encodeURIComponent(batchId)}/zip?wait=true`;
  link.download = `${batchId}.zip`;
  return link;
}

/** Says which batch was created, with its ZIP download (when it has finished). */
function showBatchLink(batchId, count) {
  const link = batchZipLink(batchId, 'batch-zip', 'download its results as a ZIP');
  els.formStatus.replaceChildren(`Batch ${batchId} created with ${count} task${count === 1 ? '' : 's'}; `, link, '.');
}

/** Creates task cards from the generate answer; files that got a task leave the selection. */
function addTasksFromResponse(data, uploaded, { prompt, outputFormat, batchId, provider }) {
  let list = [];
  if (Array.isArray(data.tasks)) list = data.tasks;
  else if (Array.isArray(data.taskIds)) list = data.taskIds.map((taskId) => ({ taskId }));

  let created = 0;
  list.forEach((item, index) => {
    const taskId = str(item && item.taskId);
    if (!taskId || state.tasks.has(taskId)) return;
    const sourceKey = str(item.sourceKey);
    // Without a sourceKey, fall back to request order when counts agree.
    const source = (sourceKey
      ? uploaded.find((u) => u.key === sourceKey)
      : list.length === uploaded.length && uploaded[index]) || null;
    const fileEntry = source && source.fileEntry;
    if (fileEntry) removeFile(fileEntry.id, { keepPreview: true }); // the card now owns the preview URL
    addTask(createTask({
      taskId, source, fileEntry, prompt, outputFormat, batchId, provider: str(item.provider) || provider,
    }));
    created += 1;
  });
  renderFiles();
  renderForm();
  watchTasks();
  return created;
}

/** Marks generate failures on their files; returns sentences for the error area. */
function applyGenerateFailures(failures, uploaded) {
  if (!Array.isArray(failures)) return [];
  return failures.map((raw) => {
    const failure = describeFailure(raw);
    const source = uploaded.find((u) => u.key === failure.key);
    if (source && source.fileEntry && state.files.includes(source.fileEntry)) {
      source.fileEntry.error = { message: failure.message, code: failure.code };
    }
    const name = (source && (source.filename || source.key)) || failure.key || 'Image';
    return `${name}: ${failure.message}${failure.code ? ` (${failure.code})` : ''}`;
  });
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

function createTask({ taskId, source, fileEntry, prompt, outputFormat, batchId = '', provider = '' }) {
  const now = Date.now();
  return {
    taskId,
    provider, // kie | gemini ('' when unknown)
    model: '', // known for tasks read from the server
    batchId, // a batch made by /api/batches (bat_…): its card links the batch's ZIP
    sourceName: (fileEntry && fileEntry.file.name) || (source && source.filename) || '',
    thumbUrl: (fileEntry && fileEntry.previewUrl) || safeHttpUrl(source && source.url),
    prompt,
    outputFormat,
    status: 'pending',
    state: 'queued', // darkroom's own state word (queued … succeeded, failed, canceled)
    startedAt: now,
    endedAt: null, // when the elapsed clock stopped
    done: false, // completed or failed (canceled counts as failed)
    resultUrls: [],
    resultsRendered: false,
    error: '',
    actionError: '', // a cancel or retry the server refused
    busy: false, // a cancel or retry request is in flight
    credits: null,
    el: null,
  };
}

function isRunning(task) {
  return !task.done;
}

/** Shows a task created here (first in the list) or a past one read from the server (appended). */
function addTask(task, { past = false } = {}) {
  state.tasks.set(task.taskId, task);
  task.el = buildTaskCard(task);
  if (past) els.taskList.append(task.el.root);
  else els.taskList.prepend(task.el.root);
  els.tasksEmpty.hidden = true;
  updateTaskCard(task, Date.now());
  renderStats();
  if (!past) announce(`Task ${task.taskId} created.`);
}

function buildTaskCard(task) {
  const root = h('li', 'task-card');
  root.dataset.taskId = task.taskId;

  const thumbWrap = h('div', 'task-thumb-wrap');
  if (task.thumbUrl) {
    const img = h('img', 'task-thumb');
    img.src = task.thumbUrl;
    img.alt = task.sourceName ? `Source image ${task.sourceName}` : 'Source image';
    img.addEventListener('error', () => img.classList.add('is-broken'));
    thumbWrap.append(img);
  }

  const body = h('div', 'task-body');
  const idLine = h('p', 'task-id');
  idLine.append(h('span', 'task-label', 'Task '), h('code', 'task-id-value', task.taskId));

  const meta = h('p', 'task-meta');
  const status = h('span', 'task-status');
  const elapsed = h('span', 'task-elapsed');
  const credits = h('span', 'task-credits');
  credits.hidden = true;
  meta.append(status, elapsed);
  if (task.provider) {
    const provider = h('span', 'task-provider', providerLabel(task.provider));
    provider.title = task.model ? `Provider ${providerLabel(task.provider)}, model ${task.model}` : `Provider ${providerLabel(task.provider)}`;
    meta.append(provider);
  }
  meta.append(credits);

  const sourceLine = h('p', 'task-source', task.sourceName);
  sourceLine.hidden = !task.sourceName;
  const promptLine = h('p', 'task-prompt', task.prompt);
  promptLine.title = task.prompt;
  const message = h('p', 'task-message');
  message.hidden = true;

  const actions = h('div', 'task-actions');
  const cancel = h('button', 'button ghost task-cancel', 'Cancel');
  cancel.type = 'button';
  cancel.setAttribute('aria-label', `Cancel task ${task.taskId}`);
  cancel.addEventListener('click', () => cancelTask(task));
  const retry = h('button', 'button secondary task-retry', 'Retry');
  retry.type = 'button';
  retry.hidden = true;
  retry.setAttribute('aria-label', `Retry task ${task.taskId} as a new task`);
  retry.addEventListener('click', () => retryTask(task));
  actions.append(cancel, retry);

  const results = h('div', 'task-results');
  body.append(idLine, meta, sourceLine, promptLine);
  // The batch's ZIP, on each of its cards: read from the task, so it is there after a reload.
  if (/^bat_[0-9a-f]{32}$/.test(task.batchId)) {
    const batchLine = h('p', 'task-batch');
    batchLine.append(
      h('span', 'task-label', 'Batch '),
      h('code', 'task-batch-id', task.batchId),
      ' · ',
      batchZipLink(task.batchId, 'task-batch-zip', 'ZIP'),
    );
    batchLine.lastChild.setAttribute('aria-label', `Download the results of batch ${task.batchId} as a ZIP`);
    body.append(batchLine);
  }
  body.append(message, actions, results);
  root.append(thumbWrap, body);
  return { root, status, elapsed, credits, message, cancel, retry, results };
}

function taskMessage(task) {
  if (task.actionError) return { kind: 'error', text: task.actionError };
  if (!task.done && task.notice) return { kind: 'warning', text: task.notice };
  if (task.state === 'canceled') return { kind: 'warning', text: 'Canceled.' };
  if (task.status === 'failed') return { kind: 'error', text: task.error };
  if (task.status === 'completed' && task.resultUrls.length === 0) {
    return { kind: 'warning', text: 'Completed, but the server returned no result images.' };
  }
  return null;
}

function updateTaskCard(task, now) {
  const el = task.el;
  el.root.dataset.status = task.status;
  el.status.textContent = STATUS_LABELS[task.status] || task.status;
  el.status.dataset.status = task.status;
  el.elapsed.textContent = formatElapsed((task.endedAt || now) - task.startedAt);

  if (typeof task.credits === 'number') {
    el.credits.textContent = `${task.credits} credit${task.credits === 1 ? '' : 's'}`;
    el.credits.hidden = false;
  }

  const message = taskMessage(task);
  el.message.hidden = !message;
  el.message.textContent = message ? message.text : '';
  el.message.dataset.kind = message ? message.kind : '';
  el.cancel.hidden = task.done;
  el.cancel.disabled = task.busy;
  // The server retries failed and expired tasks; a canceled one stays canceled.
  el.retry.hidden = !(task.done && task.status === 'failed' && task.state !== 'canceled');
  el.retry.disabled = task.busy;
  el.root.hidden = !matchesFilter(task);

  if (task.status === 'completed' && !task.resultsRendered) {
    renderResults(task);
    task.resultsRendered = true;
  }
}

function renderResults(task) {
  const figures = [];
  let skipped = 0;
  task.resultUrls.forEach((raw, index) => {
    const url = safeHttpUrl(raw);
    if (!url) {
      skipped += 1;
      return;
    }
    const figure = h('figure', 'result');
    const open = h('a', 'result-link');
    open.href = url;
    open.target = '_blank';
    open.rel = 'noopener noreferrer';
    const img = h('img', 'result-image');
    img.src = url;
    img.alt = `Result ${index + 1} of task ${task.taskId} (opens full image in a new tab)`;
    img.loading = 'lazy';
    img.decoding = 'async';
    open.append(img);

    const caption = h('figcaption', 'result-actions');
    const download = h('a', 'result-download', 'Download');
    download.href = url;
    // The download attribute is honoured for same-origin URLs; cross-origin
    // ones simply open, which is still a working fallback.
    download.download = downloadName(task.taskId, index, url, task.outputFormat);
    download.setAttribute('aria-label', `Download result ${index + 1} of task ${task.taskId}`);
    caption.append(download);

    figure.append(open, caption);
    figures.push(figure);
  });
  if (skipped > 0) figures.push(h('p', 'hint', `${skipped} result URL${skipped === 1 ? ' was' : 's were'} not a valid http(s) address and ${skipped === 1 ? 'is' : 'are'} not shown.`));
  task.el.results.replaceChildren(...figures);
}

// ---------------------------------------------------------------------------
// Past tasks: GET /api/tasks, newest first, a page at a time
// ---------------------------------------------------------------------------

/** The page size: DEFAULT_PAGE_SIZE unless the page's address says ?pageSize=N (1–200). */
function listingPageSize() {
  const raw = new URLSearchParams(window.location.search).get('pageSize');
  const size = Number(raw);
  return raw && Number.isInteger(size) && size >= 1 && size <= MAX_PAGE_SIZE ? size : DEFAULT_PAGE_SIZE;
}

function parseTime(raw) {
  const ms = typeof raw === 'string' ? Date.parse(raw) : NaN;
  return Number.isFinite(ms) ? ms : null;
}

/** A task card's model from a task as GET /api/tasks answers it. */
function taskFromView(view) {
  const inputs = Array.isArray(view.inputUrls) ? view.inputUrls : [];
  const task = createTask({
    taskId: str(view.taskId),
    source: null,
    fileEntry: null,
    prompt: str(view.prompt),
    outputFormat: str(view.outputFormat) || 'png',
    batchId: str(view.batchId),
    provider: str(view.provider),
  });
  task.model = str(view.model);
  task.thumbUrl = safeHttpUrl(view.imageUrl) || safeHttpUrl(inputs[0]);
  task.startedAt = parseTime(view.createdAt) || Date.now();
  if (typeof view.consumeCredits === 'number') task.credits = view.consumeCredits;
  const endedAt = parseTime(view.completedAt) || parseTime(view.updatedAt) || Date.now();
  applyTaskStatus(task, view, { quiet: true, endedAt: Math.max(endedAt, task.startedAt) });
  return task;
}

/**
 * Reads the next page of past tasks (the first on load) and shows the ones not on the
 * page yet below the others; unfinished ones join the live stream.
 */
async function loadTaskPage() {
  const listing = state.listing;
  if (listing.loading) return;
  if (state.info && state.info.apiKeysRequired === true && !state.apiKey) {
    // Nothing to ask without a key; it loads once one is entered.
    listing.failed = false;
    els.tasksLoadStatus.textContent = 'Enter your API key above to see your earlier tasks.';
    renderListing();
    return;
  }
  listing.loading = true;
  listing.failed = false;
  els.tasksLoadStatus.textContent = listing.loaded ? 'Loading more tasks…' : 'Loading earlier tasks…';
  renderListing();
  const params = new URLSearchParams({ limit: String(listing.pageSize) });
  if (listing.loaded && listing.cursor) params.set('cursor', listing.cursor);
  try {
    const data = await api(`/api/tasks?${params}`);
    const views = Array.isArray(data.tasks) ? data.tasks : [];
    let added = 0;
    for (const view of views) {
      const taskId = str(view && view.taskId);
      if (!taskId || state.tasks.has(taskId)) continue;
      addTask(taskFromView(view), { past: true });
      added += 1;
    }
    listing.loaded = true;
    listing.key = state.apiKey;
    listing.cursor = str(data.nextCursor) || null;
    if (listing.refused) clearError();
    listing.refused = false;
    els.tasksLoadStatus.textContent = views.length === 0 || (added === 0 && !listing.cursor)
      ? ''
      : `Loaded ${added} earlier task${added === 1 ? '' : 's'}.`;
    watchTasks();
  } catch (err) {
    listing.failed = true;
    if (err instanceof ApiError && err.status === 401) {
      listing.refused = true;
      // The same message and key field as every other refused request.
      showApiError(err);
      els.tasksLoadStatus.textContent = 'Earlier tasks could not be loaded: the API key is missing or wrong.';
    } else {
      if (!(err instanceof ApiError)) console.error(err);
      els.tasksLoadStatus.textContent = `Earlier tasks could not be loaded: ${err instanceof ApiError ? err.message : 'unexpected error'}`;
    }
  } finally {
    listing.loading = false;
    renderListing();
  }
}

/**
 * Takes every task off the page and closes the stream: another key's tasks (or none) are
 * about to be shown, and one key's tasks must not stay on screen under another.
 */
function forgetTasks() {
  for (const task of state.tasks.values()) {
    task.el.root.remove();
    if (task.thumbUrl && task.thumbUrl.startsWith('blob:')) URL.revokeObjectURL(task.thumbUrl);
  }
  state.tasks.clear();
  Object.assign(state.listing, { cursor: null, loaded: false, failed: false, refused: false, key: '' });
  els.tasksEmpty.hidden = false;
  els.tasksLoadStatus.textContent = '';
  watchTasks();
  renderStats();
  renderListing();
}

function renderListing() {
  const listing = state.listing;
  const more = listing.loaded && listing.cursor !== null;
  // Hidden during the first read (its status line says so) and once every page is in.
  els.tasksMore.hidden = !(more || listing.failed || (listing.loading && listing.loaded));
  els.tasksMore.disabled = listing.loading;
  els.tasksMore.textContent = listing.loading ? 'Loading…' : (listing.failed ? 'Try again' : 'Load more');
  els.tasksLoadStatus.hidden = els.tasksLoadStatus.textContent === '';
  renderStats(); // says whether more tasks are left to load
}

// ---------------------------------------------------------------------------
// Cancel and retry
// ---------------------------------------------------------------------------

async function cancelTask(task) {
  task.busy = true;
  task.actionError = '';
  updateTaskCard(task, Date.now());
  try {
    const data = await api(`/api/tasks/${encodeURIComponent(task.taskId)}/cancel`, { method: 'POST', json: {} });
    applyTaskStatus(task, data);
  } catch (err) {
    if (!(err instanceof ApiError)) console.error(err);
    task.actionError = `Could not cancel: ${err instanceof ApiError ? err.message : 'unexpected error'}`;
  } finally {
    task.busy = false;
    updateTaskCard(task, Date.now());
    renderStats();
    if (task.done) watchTasks();
  }
}

async function retryTask(task) {
  task.busy = true;
  task.actionError = '';
  updateTaskCard(task, Date.now());
  try {
    const data = await api(`/api/tasks/${encodeURIComponent(task.taskId)}/retry`, { method: 'POST', json: {} });
    const taskId = str(data.taskId);
    if (taskId && !state.tasks.has(taskId)) {
      const retried = createTask({
        taskId, source: null, fileEntry: null, prompt: task.prompt, outputFormat: task.outputFormat, provider: task.provider,
      });
      retried.thumbUrl = task.thumbUrl;
      retried.sourceName = task.sourceName;
      addTask(retried);
      watchTasks();
    }
  } catch (err) {
    if (!(err instanceof ApiError)) console.error(err);
    task.actionError = `Could not retry: ${err instanceof ApiError ? err.message : 'unexpected error'}`;
  } finally {
    task.busy = false;
    updateTaskCard(task, Date.now());
  }
}

// ---------------------------------------------------------------------------
// Task list: filter and summary
// ---------------------------------------------------------------------------

function matchesFilter(task) {
  switch (state.filter) {
    case 'active': return !task.done;
    case 'completed': return task.status === 'completed';
    case 'failed': return task.done && task.status === 'failed';
    default: return true;
  }
}

function renderStats() {
  const tasks = Array.from(state.tasks.values());
  const active = tasks.filter((t) => !t.done).length;
  const completed = tasks.filter((t) => t.status === 'completed').length;
  const failed = tasks.filter((t) => t.done && t.status === 'failed').length;
  const credits = tasks.reduce((sum, t) => sum + (typeof t.credits === 'number' ? t.credits : 0), 0);
  // It counts the tasks on this page, not every task on the server: says so, and whether
  // more are left to load.
  const more = state.listing.loaded && state.listing.cursor !== null;
  els.taskStats.textContent = tasks.length === 0
    ? ''
    : `${tasks.length} task${tasks.length === 1 ? '' : 's'} on this page${more ? ' (more to load)' : ''}: ${active} running · ${completed} completed · ${failed} failed${credits ? ` · ${credits} credits` : ''}`;
}

function applyFilter() {
  state.filter = els.taskFilter.value;
  const now = Date.now();
  for (const task of state.tasks.values()) updateTaskCard(task, now);
}

// ---------------------------------------------------------------------------
// Live progress: ONE EventSource for every running task, and one clock
// ---------------------------------------------------------------------------

/**
 * (Re)opens the event stream for the tasks still running. A reopened stream resumes
 * after the last event seen, so nothing published in between is lost; the first one
 * starts with the tasks' current state.
 */
function watchTasks() {
  const ids = Array.from(state.tasks.values()).filter(isRunning).map((t) => t.taskId);
  const key = ids.join(',');
  if (state.stream && key === state.streamKey) return;
  if (state.stream) {
    state.stream.close();
    state.stream = null;
  }
  state.streamKey = key;
  // A task this stream did not watch before may have changed before it was added (a past
  // task read from /api/tasks, or a new one whose first events went by while another
  // stream was open): such a stream starts with the current state of its tasks instead
  // of resuming, so nothing is missed.
  const added = ids.some((id) => !state.watched.has(id));
  state.watched = new Set(ids);
  if (ids.length === 0) return;
  const resumeFrom = added || !state.lastEventId ? UNKNOWN_EVENT_ID : state.lastEventId;
  const params = new URLSearchParams({ taskIds: key, lastEventId: resumeFrom });
  // EventSource cannot send an Authorization header; the server takes the key here instead.
  if (state.apiKey) params.set('access_token', state.apiKey);
  const stream = new EventSource(`/api/events?${params}`);
  stream.addEventListener('message', (event) => {
    if (event.lastEventId) state.lastEventId = event.lastEventId;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return; // not ours to show; the next event carries the state anyway
    }
    handleTaskEvent(data);
  });
  stream.addEventListener('open', () => setStreamNotice(''));
  stream.addEventListener('error', () => {
    // EventSource reconnects by itself (sending Last-Event-ID); just say so meanwhile.
    if (stream.readyState === EventSource.CLOSED) {
      setStreamNotice('Live updates stopped: the server refused the stream. Reload the page to try again.');
    } else {
      setStreamNotice('Live updates interrupted: reconnecting…');
    }
  });
  state.stream = stream;
  ensureClock();
}

function setStreamNotice(message) {
  els.streamNotice.textContent = message;
  els.streamNotice.hidden = !message;
}

function handleTaskEvent(data) {
  const task = state.tasks.get(str(data && data.taskId));
  if (!task || task.done) return;
  applyTaskStatus(task, data);
  updateTaskCard(task, Date.now());
  renderStats();
  if (task.done) {
    fetchCredits(task);
    // Stop watching finished tasks; the stream closes when none is left.
    watchTasks();
  }
}

/** Credits are not part of events: read them once when a task ends. */
async function fetchCredits(task) {
  try {
    const data = await api(`/api/tasks/${encodeURIComponent(task.taskId)}`);
    if (typeof data.consumeCredits === 'number') {
      task.credits = data.consumeCredits;
      updateTaskCard(task, Date.now());
      renderStats();
    }
  } catch {
    // Credits are a detail; the result is already shown.
  }
}

function ensureClock() {
  if (state.timer !== null) return;
  if (Array.from(state.tasks.values()).some(isRunning)) state.timer = window.setTimeout(clockTick, TICK_MS);
}

function clockTick() {
  state.timer = null;
  const now = Date.now();
  for (const task of state.tasks.values()) {
    if (isRunning(task)) updateTaskCard(task, now);
  }
  ensureClock();
}

/**
 * Applies a task's status (an event, or a task as the API answers it). `quiet` skips the
 * announcement (past tasks read on load); `endedAt` is when a finished task ended.
 */
function applyTaskStatus(task, data, { quiet = false, endedAt = Date.now() } = {}) {
  const previous = task.status;
  const status = str(data.status) || task.status;
  task.status = status;
  task.state = str(data.state) || task.state;
  if (typeof data.consumeCredits === 'number') task.credits = data.consumeCredits;

  if (status === 'completed' || status === 'failed') {
    task.done = true;
    task.endedAt = endedAt;
    if (status === 'completed') {
      task.resultUrls = Array.isArray(data.resultUrls) ? data.resultUrls.filter((u) => typeof u === 'string') : [];
    } else {
      const error = data.error;
      task.error = (error && typeof error === 'object' ? str(error.message) : str(error))
        || (task.state === 'canceled' ? 'Canceled.' : 'The task failed without an error message.');
    }
  }
  // A queued task may carry why it waits: its provider is paused (no credits, rate limit)
  // or cannot be reached.
  // Events carry `error` and `errorCode`; task views carry `error: {code, message}`.
  const error = data.error;
  const code = str(data.errorCode) || (error && typeof error === 'object' ? str(error.code) : '');
  const paused = !task.done && (code === 'provider_paused' || code === 'provider_unreachable');
  task.notice = paused ? (error && typeof error === 'object' ? str(error.message) : str(error)) : '';
  if (paused) checkProviders();

  if (status !== previous && !quiet) {
    let text = `Task ${task.taskId}: ${STATUS_LABELS[status] || status}.`;
    if (status === 'completed') {
      const shown = task.resultUrls.filter((u) => safeHttpUrl(u) !== null).length;
      text += ` ${shown} result image${shown === 1 ? '' : 's'}.`;
    }
    if (status === 'failed') text += ` ${task.error}`;
    announce(text);
  }
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------

function cacheElements() {
  Object.assign(els, {
    providerBadge: byId('provider-badge'),
    serverVersion: byId('server-version'),
    simulatorNotice: byId('simulator-notice'),
    simulatorNoticeText: byId('simulator-notice-text'),
    providerNotice: byId('provider-notice'),
    providerNoticeText: byId('provider-notice-text'),
    apiKeySection: byId('api-key-section'),
    apiKeyInput: byId('api-key-input'),
    apiKeyClear: byId('api-key-clear'),
    errorArea: byId('error-area'),
    errorMessage: byId('error-message'),
    errorDetails: byId('error-details'),
    errorCodeLine: byId('error-code-line'),
    errorCode: byId('error-code'),
    errorDismiss: byId('error-dismiss'),
    form: byId('generate-form'),
    dropZone: byId('drop-zone'),
    dropHint: byId('drop-hint'),
    fileInput: byId('file-input'),
    fileSummary: byId('file-summary'),
    fileList: byId('file-list'),
    promptInput: byId('prompt-input'),
    promptCounter: byId('prompt-counter'),
    aspectRatio: byId('aspect-ratio'),
    outputFormat: byId('output-format'),
    providerSelect: byId('provider-select'),
    generateButton: byId('generate-button'),
    generateHint: byId('generate-hint'),
    formErrors: byId('form-errors'),
    formStatus: byId('form-status'),
    tasksEmpty: byId('tasks-empty'),
    taskFilter: byId('task-filter'),
    taskStats: byId('task-stats'),
    streamNotice: byId('stream-notice'),
    batchToggle: byId('batch-toggle'),
    taskList: byId('task-list'),
    tasksMore: byId('tasks-more'),
    tasksLoadStatus: byId('tasks-load-status'),
    liveRegion: byId('live-region'),
  });
}

function bindEvents() {
  els.fileInput.addEventListener('change', () => {
    addFiles(els.fileInput.files);
    els.fileInput.value = ''; // lets the same file be chosen again after removal
  });
  els.fileList.addEventListener('click', handleRemoveClick);
  setupDragAndDrop();

  els.promptInput.addEventListener('input', renderForm);
  els.promptInput.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      // click() on the (possibly disabled) submit button respects its state.
      els.generateButton.click();
    }
  });
  els.form.addEventListener('submit', handleSubmit);
  els.taskFilter.addEventListener('change', applyFilter);
  els.tasksMore.addEventListener('click', loadTaskPage);

  els.apiKeyInput.addEventListener('input', () => {
    state.apiKey = els.apiKeyInput.value.trim();
    state.authErrorShown = false;
    saveApiKey(state.apiKey);
  });
  // A key entered (or corrected) after the list could not be read: read it now. Another
  // key than the one the list was read with: show that key's tasks instead.
  els.apiKeyInput.addEventListener('change', () => {
    if (!state.apiKey) return;
    if (state.listing.loaded && state.apiKey !== state.listing.key) forgetTasks();
    if (!state.listing.loaded) loadTaskPage();
  });
  els.apiKeyClear.addEventListener('click', () => {
    state.apiKey = '';
    els.apiKeyInput.value = '';
    saveApiKey('');
    // On a server that needs keys, the tasks on screen belong to the key just forgotten.
    if (state.info && state.info.apiKeysRequired === true) forgetTasks();
    els.apiKeyInput.focus();
  });
  els.errorDismiss.addEventListener('click', () => {
    clearError();
    els.promptInput.focus();
  });
}

function init() {
  cacheElements();
  state.apiKey = loadApiKey();
  els.apiKeyInput.value = state.apiKey;
  bindEvents();
  state.listing.pageSize = listingPageSize();
  renderDropHint();
  renderFiles();
  renderForm();
  renderListing();
  // The info says whether a key is needed; past tasks are read after it.
  loadInfo().then(loadTaskPage);
  checkProviders();
}

init();

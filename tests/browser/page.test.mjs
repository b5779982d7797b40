// The web page in a real browser: Debian's chromium, headless, driven by playwright-core
// (no browser download). Starts a freshly built darkroom (`target/debug/darkroom serve`) on
// a free loopback port with a temporary data directory and the built-in simulators. First
// the form: the batch checkbox on one row with its label, the provider select not cutting
// its text, the simulator banner naming both simulated providers, the API docs link
// answering, and files the server would refuse (not an image, a fake PNG, over the upload
// limit the page reads from /api/info, undecodable) rejected on selection: named next to
// Generate, no thumbnail, Generate disabled. Then it uploads two images through the page,
// submits, and waits for both results to appear without a reload (the page follows
// progress over SSE); then a batch of two. Every card names its provider and, in a batch,
// the batch. After a reload the list shows those tasks again (read from GET /api/tasks),
// with the batch's ZIP link, "Load more" pages through them, a past unfinished task
// finishes live and a canceled one says so. Last, a second server with API keys: the list
// waits for a key, a wrong key gets the page's 401 message, the right one shows the key's
// tasks. The Statistics tab draws GET /api/stats as SVG charts (throughput, stage
// latencies, credits, failures by code, providers) that match the API's figures, follow a
// new task live, fit the phone width, and are saved as docs/statistics.png at desktop
// width. Any console error or page error fails it (except the one 401 the wrong key is
// meant to cause).
//
// Usage: node page.test.mjs   (from tests/browser, after `npm ci` and `cargo build`)
// DARKROOM_BINARY=/path/to/darkroom runs another build than target/debug/darkroom.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '..', '..');
const BINARY = process.env.DARKROOM_BINARY || join(ROOT, 'target', 'debug', 'darkroom');
const CHROMIUM = '/usr/bin/chromium';
const TIMEOUT_MS = 60_000;
// Gemini tasks (made through the API below) in the built-in simulator. They are held
// unfinished by an input image the test serves only when it says so (heldInput), not by
// the simulator's latency.
const GEMINI_LATENCY_MS = '200-500';
const API_KEY = 'dk_browser_test_key_0123456789';
const OTHER_KEY = 'dk_browser_other_key_0123456789';

function fail(message) {
  console.error(`browser test: FAIL: ${message}`);
  process.exitCode = 1;
}

function freePort() {
  return new Promise((ok, err) => {
    const server = createServer();
    server.on('error', err);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

// A small valid PNG (solid colour), built here so the test needs no fixture files.
function png(width, height, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < height; y += 1) {
    rows.push(Buffer.from([0]));
    for (let x = 0; x < width; x += 1) rows.push(Buffer.from([r, g, b]));
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

async function waitForServer(url, child) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`darkroom exited early with code ${child.exitCode}`);
    try {
      const response = await fetch(`${url}/api/info`);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`darkroom did not answer at ${url} within 30 s`);
}

/**
 * A loopback server whose one image, `/held.png`, is answered only after `release()`: a
 * Gemini task given it as a reference cannot finish before then, however slow the machine.
 * `requests` counts the requests that came in.
 */
async function heldInput() {
  const image = png(24, 24, [90, 90, 220]);
  let release;
  const released = new Promise((ok) => { release = ok; });
  const state = { requests: 0 };
  const server = createHttpServer((request, response) => {
    state.requests += 1;
    released.then(() => {
      response.writeHead(200, { 'Content-Type': 'image/png', 'Content-Length': image.length });
      response.end(image);
    });
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const host = `127.0.0.1:${server.address().port}`;
  return {
    host,
    url: `http://${host}/held.png`,
    state,
    release,
    close() {
      release();
      server.closeAllConnections();
      return new Promise((ok) => server.close(ok));
    },
  };
}

/** A JSON call to darkroom's API from node (not the page); throws on a non-2xx answer. */
async function call(base, path, { method = 'GET', json, form, key } = {}) {
  const headers = { Accept: 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const response = await fetch(`${base}${path}`, { method, headers, body });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: HTTP ${response.status} ${JSON.stringify(data)}`);
  return data;
}

/** Uploads one small PNG through the API; returns its { key, url }. */
async function uploadPng(base, key) {
  const form = new FormData();
  form.append('files', new Blob([png(32, 32, [200, 160, 40])], { type: 'image/png' }), 'api.png');
  const data = await call(base, '/api/upload', { method: 'POST', form, key });
  const [uploaded] = data.uploaded;
  return { key: uploaded.key, url: uploaded.url };
}

/** Creates one task through the API; returns its id. */
async function createTask(base, upload, { provider, key, referenceUrls } = {}) {
  const data = await call(base, '/api/generate', {
    method: 'POST',
    json: {
      prompt: 'made through the API',
      uploads: [upload],
      ...(provider ? { provider } : {}),
      ...(referenceUrls ? { referenceUrls } : {}),
    },
    key,
  });
  return data.taskIds[0];
}

function startServer(port, dataDir, extraEnv = {}) {
  const { DARKROOM_BINARY: _binary, ...inherited } = process.env; // the test's, not darkroom's
  return spawn(BINARY, ['serve'], {
    env: {
      ...inherited,
      DARKROOM_LISTEN: `127.0.0.1:${port}`,
      DARKROOM_DATA_DIR: dataDir,
      DARKROOM_SIM_LATENCY_MS: '200-500',
      DARKROOM_GEMINI_SIM_LATENCY_MS: GEMINI_LATENCY_MS,
      DARKROOM_LOG: 'warn',
      ...extraEnv,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

async function stopServer(server) {
  if (!server) return;
  if (server.exitCode === null) server.kill('SIGTERM');
  await new Promise((r) => { if (server.exitCode !== null) r(); else server.on('exit', r); });
}

/** Whether every result image on the page loaded (waits for those still loading). */
function resultImagesLoaded(page) {
  return page.$$eval('img.result-image', (imgs) => Promise.all(imgs.map((img) => (img.complete
    ? img.naturalWidth > 0
    : new Promise((ok) => { img.onload = () => ok(img.naturalWidth > 0); img.onerror = () => ok(false); })))));
}

/** { taskId: { status, provider, batch, message, retryShown, cancelShown, results } } of every card shown. */
function cards(page) {
  return page.$$eval('#task-list li.task-card', (list) => Object.fromEntries(list.map((c) => [c.dataset.taskId, {
    status: c.dataset.status,
    provider: c.querySelector('.task-provider') ? c.querySelector('.task-provider').textContent : '',
    batch: c.querySelector('.task-batch-id') ? c.querySelector('.task-batch-id').textContent : '',
    hidden: c.hidden,
    message: c.querySelector('.task-message').hidden ? '' : c.querySelector('.task-message').textContent,
    retryShown: !c.querySelector('.task-retry').hidden,
    cancelShown: !c.querySelector('.task-cancel').hidden,
    results: c.querySelectorAll('img.result-image').length,
  }])));
}

/** Chooses `files` in the page's file picker and waits until each is listed. */
async function chooseFiles(page, files) {
  await page.setInputFiles('#file-input', files);
  await page.waitForSelector(`#file-list li:nth-child(${files.length})`, { timeout: TIMEOUT_MS });
}

/** Waits for a task card that is still pending and says the provider is out of credits. */
async function waitForCardWaitingOnCredits(page) {
  await page.waitForFunction(
    () => Array.from(document.querySelectorAll('#task-list li.task-card'))
      .some((card) => card.dataset.status === 'pending' && /insufficient credits/.test(card.textContent)),
    undefined,
    { timeout: TIMEOUT_MS },
  );
}

/**
 * Where the batch checkbox sits against its label: on one row (the box left of the label,
 * centred on its first line), left-aligned with the prompt, the label not bold.
 */
async function checkboxLayout(page) {
  return page.evaluate(() => {
    const box = document.querySelector('#batch-toggle').getBoundingClientRect();
    const labelEl = document.querySelector('label[for="batch-toggle"]');
    const label = labelEl.getBoundingClientRect();
    const style = getComputedStyle(labelEl);
    const lineHeight = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.5;
    const prompt = document.querySelector('#prompt-input').getBoundingClientRect();
    const middle = box.top + box.height / 2;
    const problems = [];
    if (box.right > label.left) problems.push(`the box (right ${box.right}) is not left of its label (left ${label.left})`);
    if (middle < label.top || middle > label.top + lineHeight) {
      problems.push(`the box (middle ${middle}) is not on the label's first line (${label.top}–${label.top + lineHeight})`);
    }
    if (Math.abs(box.left - prompt.left) > 4) problems.push(`the box (left ${box.left}) is not left-aligned with the prompt (left ${prompt.left})`);
    if (Number(style.fontWeight) >= 600) problems.push(`the label is bold (${style.fontWeight})`);
    if (style.textAlign === 'center') problems.push('the label is centred');
    return problems;
  });
}

/** Whether the provider select shows its longest option whole: "" if so, else why not. */
async function providerSelectClipped(page) {
  return page.evaluate(() => {
    const select = document.querySelector('#provider-select');
    if (select.scrollWidth > select.clientWidth) return `scrollWidth ${select.scrollWidth} > clientWidth ${select.clientWidth}`;
    // The select's own scrollWidth does not grow with its text in every engine: measure the
    // longest option in the select's font against its text box (less padding and arrow).
    const style = getComputedStyle(select);
    const context = document.createElement('canvas').getContext('2d');
    context.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const longest = Array.from(select.options).reduce((a, o) => (context.measureText(o.text).width > context.measureText(a).width ? o.text : a), '');
    const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 20; // 20: the arrow
    const needed = context.measureText(longest).width;
    return needed > room ? `"${longest}" needs ${Math.ceil(needed)} px, the select has ${Math.floor(room)}` : '';
  });
}

async function main() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)`);
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build first`);

  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-'));
  const profileDir = mkdtempSync(join(tmpdir(), 'darkroom-chromium-'));
  const url = `http://127.0.0.1:${port}`;
  const held = await heldInput();
  // A small upload limit: the page must read it from /api/info (its built-in default is 10 MB).
  const maxUploadBytes = 200_000;
  const server = startServer(port, dataDir, {
    DARKROOM_TRUSTED_FETCH_HOSTS: held.host,
    DARKROOM_MAX_UPLOAD_BYTES: String(maxUploadBytes),
  });
  const keyedDataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-keyed-'));
  let keyedServer;
  const creditDataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-credits-'));
  let creditServer;
  const floorDataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-floor-'));
  let floorServer;
  let creditSim;
  let browser;
  const errors = [];
  try {
    await waitForServer(url, server);
    // A fresh profile directory per run (playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
      // Phone width: the page must work there too.
      viewport: { width: 390, height: 844 },
    });
    const page = browser.pages()[0] || await browser.newPage();
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`console: ${message.text()}`);
    });
    page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
    let polls = 0;
    let posts = 0; // requests that could create or change a task
    page.on('request', (request) => {
      if (request.url().includes('/api/task-status')) polls += 1;
      if (request.method() !== 'GET') posts += 1;
    });

    await page.goto(url, { waitUntil: 'networkidle' });
    // --- The form: layout, the banner, the docs link ----------------------------------
    const layout = await checkboxLayout(page);
    if (layout.length > 0) throw new Error(`the batch checkbox and its label: ${layout.join('; ')}`);
    await page.waitForFunction(() => document.querySelectorAll('#provider-select option').length >= 2, undefined, { timeout: TIMEOUT_MS });
    const clippedPhone = await providerSelectClipped(page);
    if (clippedPhone) throw new Error(`the provider select cuts its text at 390 px: ${clippedPhone}`);
    await page.setViewportSize({ width: 1024, height: 768 });
    const clippedWide = await providerSelectClipped(page);
    const layoutWide = await checkboxLayout(page);
    await page.setViewportSize({ width: 390, height: 844 });
    if (clippedWide) throw new Error(`the provider select cuts its text at 1024 px: ${clippedWide}`);
    if (layoutWide.length > 0) throw new Error(`at 1024 px, the batch checkbox and its label: ${layoutWide.join('; ')}`);
    await page.waitForSelector('#simulator-notice:not([hidden])', { timeout: TIMEOUT_MS });
    const banner = (await page.textContent('#simulator-notice')).trim();
    if (!banner.includes('KIE') || !banner.includes('Gemini')) {
      throw new Error(`the simulator banner should name KIE and Gemini, both simulated: "${banner}"`);
    }
    const docsHref = await page.getAttribute('#api-docs-link', 'href');
    if (!(await page.isVisible('#api-docs-link'))) throw new Error('the API docs link is not shown');
    const docsAnswer = await fetch(new URL(docsHref, url));
    if (docsAnswer.status !== 200 || !(await docsAnswer.text()).includes('swagger')) {
      throw new Error(`the API docs link ${docsHref} answers HTTP ${docsAnswer.status}, not the docs page`);
    }

    // --- Files the server would refuse are rejected on selection ----------------------
    await page.fill('#prompt-input', 'a watercolour postcard of this picture');
    const oversized = Buffer.concat([png(8, 8, [1, 2, 3]), Buffer.alloc(maxUploadBytes + 50_000)]);
    const badFiles = [
      { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not an image at all') },
      { name: 'fake.png', mimeType: 'image/png', buffer: Buffer.from('<html>not a png</html>') },
      { name: 'huge.png', mimeType: 'image/png', buffer: oversized },
      // A PNG's first bytes and nothing after them: the browser cannot show it.
      { name: 'broken.png', mimeType: 'image/png', buffer: png(8, 8, [1, 2, 3]).subarray(0, 40) },
    ];
    await chooseFiles(page, badFiles);
    const rejected = await page.evaluate(() => ({
      errors: Array.from(document.querySelectorAll('#form-errors li')).map((li) => li.textContent),
      errorsShown: !document.querySelector('#form-errors').hidden,
      thumbnails: document.querySelectorAll('#file-list img').length,
      generateDisabled: document.querySelector('#generate-button').disabled,
    }));
    const named = (name) => rejected.errors.some((line) => line.startsWith(name));
    if (!rejected.errorsShown || !badFiles.every((f) => named(f.name))) {
      throw new Error(`each bad file should be named next to Generate, saw ${JSON.stringify(rejected.errors)}`);
    }
    const reasons = {
      'notes.txt': 'is not a PNG, JPEG or WebP image', // by its type and its bytes
      'fake.png': 'is not a PNG, JPEG or WebP image', // by its bytes: named and typed as a PNG
      'huge.png': '195.3 KB', // the server's limit, read from /api/info (the page's default is 10 MB)
      'broken.png': 'cannot be read as an image',
    };
    for (const [name, reason] of Object.entries(reasons)) {
      if (!rejected.errors.some((line) => line.startsWith(name) && line.includes(reason))) {
        throw new Error(`${name} should be refused with "${reason}", saw ${JSON.stringify(rejected.errors)}`);
      }
    }
    if (rejected.thumbnails !== 0) throw new Error(`${rejected.thumbnails} thumbnails shown for files that are not images`);
    if (!rejected.generateDisabled) throw new Error('Generate is enabled with no image that can be sent');
    // A good image beside them: Generate is enabled (only it would be sent).
    await page.setInputFiles('#file-input', [{ name: 'ok.png', mimeType: 'image/png', buffer: png(20, 20, [9, 9, 9]) }]);
    await page.waitForSelector('#file-list li[data-file-name="ok.png"] img.file-thumb', { timeout: TIMEOUT_MS });
    if (await page.isDisabled('#generate-button')) throw new Error('Generate stays disabled beside a good image');
    for (const name of ['notes.txt', 'fake.png', 'huge.png', 'broken.png', 'ok.png']) await page.click(`button[aria-label="Remove ${name}"]`);
    if (!(await page.isHidden('#form-errors')) || !(await page.isDisabled('#generate-button'))) {
      throw new Error('with every file removed the form errors should go and Generate be disabled');
    }

    const started = Date.now();
    await chooseFiles(page, [
      { name: 'red.png', mimeType: 'image/png', buffer: png(64, 48, [200, 30, 30]) },
      { name: 'blue.png', mimeType: 'image/png', buffer: png(48, 64, [30, 30, 200]) },
    ]);
    await page.fill('#prompt-input', 'a watercolour postcard of this picture');
    await page.click('#generate-button');

    // Both cards appear, then both results, with no reload.
    await page.waitForSelector('#task-list li.task-card:nth-child(2)', { timeout: TIMEOUT_MS });
    await page.waitForFunction(
      () => document.querySelectorAll('#task-list li.task-card img.result-image').length >= 2,
      undefined,
      { timeout: TIMEOUT_MS },
    );
    const statuses = await page.$$eval('#task-list li.task-card', (cards) => cards.map((c) => c.dataset.status));
    if (statuses.length !== 2 || statuses.some((s) => s !== 'completed')) {
      throw new Error(`expected two completed cards, saw ${JSON.stringify(statuses)}`);
    }
    // The result images must actually load.
    const loaded = await page.$$eval('img.result-image', (imgs) => Promise.all(imgs.map((img) => (img.complete
      ? img.naturalWidth > 0
      : new Promise((ok) => { img.onload = () => ok(true); img.onerror = () => ok(false); })))));
    if (!loaded.every(Boolean)) throw new Error('a result image did not load');
    // A batch: two more images, submitted as one; its ZIP link appears and both finish.
    await chooseFiles(page, [
      { name: 'green.png', mimeType: 'image/png', buffer: png(40, 40, [30, 200, 30]) },
      { name: 'grey.png', mimeType: 'image/png', buffer: png(36, 52, [120, 120, 120]) },
    ]);
    await page.check('#batch-toggle');
    await page.click('#generate-button');
    await page.waitForSelector('#form-status a.batch-zip', { timeout: TIMEOUT_MS });
    await page.waitForFunction(
      () => document.querySelectorAll('#task-list li.task-card img.result-image').length >= 4,
      undefined,
      { timeout: TIMEOUT_MS },
    );
    const zipHref = await page.getAttribute('#form-status a.batch-zip', 'href');
    const batchId = new URL(zipHref, url).pathname.split('/')[3];
    // Each card says its provider; the batch's two say the batch.
    const live = Object.values(await cards(page));
    if (!live.every((c) => c.provider === 'KIE') || live.filter((c) => c.batch === batchId).length !== 2) {
      throw new Error(`each card should show its provider (KIE) and the batch's 2 cards ${batchId}, saw ${JSON.stringify(live)}`);
    }
    const zip = await fetch(new URL(zipHref, url));
    const zipBytes = Buffer.from(await zip.arrayBuffer());
    if (zip.status !== 200 || zipBytes.readUInt32LE(0) !== 0x04034b50) {
      throw new Error(`the batch ZIP link did not give a ZIP (HTTP ${zip.status})`);
    }
    // The filter hides what does not match.
    await page.selectOption('#task-filter', 'failed');
    const shownWhenFailed = await page.$$eval('#task-list li.task-card', (cards) => cards.filter((c) => !c.hidden).length);
    if (shownWhenFailed !== 0) throw new Error(`filter "failed" still shows ${shownWhenFailed} completed cards`);
    await page.selectOption('#task-filter', 'all');
    const stats = await page.textContent('#task-stats');
    const liveMs = Date.now() - started;
    const sessionIds = Object.keys(await cards(page));

    // --- Past tasks: after a reload the list is read from GET /api/tasks ---------------
    posts = 0;
    await page.reload({ waitUntil: 'networkidle' });
    await page.waitForFunction(
      () => document.querySelectorAll('#task-list li.task-card img.result-image').length >= 4,
      undefined,
      { timeout: TIMEOUT_MS },
    );
    const reloaded = await cards(page);
    const reloadedIds = Object.keys(reloaded);
    if (reloadedIds.length !== 4 || !sessionIds.every((id) => reloaded[id] && reloaded[id].status === 'completed')) {
      throw new Error(`after a reload expected the 4 tasks completed, saw ${JSON.stringify(reloaded)}`);
    }
    // Newest first, as the session showed them.
    if (reloadedIds.join() !== sessionIds.join()) {
      throw new Error(`after a reload the order changed: ${reloadedIds.join()} vs ${sessionIds.join()}`);
    }
    if (!(await resultImagesLoaded(page)).every(Boolean)) throw new Error('a past result image did not load');
    const downloads = await page.$$eval('#task-list a.result-download', (links) => links.length);
    if (downloads !== 4) throw new Error(`expected 4 download links on past tasks, saw ${downloads}`);
    // The batch's two cards keep its ZIP link after the reload (read from each task's batchId).
    const past = Object.values(reloaded);
    if (!past.every((c) => c.provider === 'KIE') || past.filter((c) => c.batch === batchId).length !== 2) {
      throw new Error(`after a reload each card should show its provider (KIE) and the batch's 2 cards ${batchId}, saw ${JSON.stringify(past)}`);
    }
    const batchLinks = await page.$$eval('#task-list li.task-card a.task-batch-zip', (links) => links.map((a) => a.getAttribute('href')));
    if (batchLinks.length !== 2 || !batchLinks.every((href) => href === `/api/batches/${batchId}/zip?wait=true`)) {
      throw new Error(`after a reload expected the batch's 2 cards to link its ZIP, saw ${JSON.stringify(batchLinks)}`);
    }
    const reloadedStats = await page.textContent('#task-stats');
    if (!reloadedStats.startsWith('4 tasks on this page: ') || !reloadedStats.includes('4 completed')) {
      throw new Error(`the summary after a reload does not count the past tasks: "${reloadedStats}"`);
    }
    if (!(await page.isHidden('#tasks-more'))) throw new Error('"Load more" is shown though one page held every task');
    if (posts > 0) throw new Error(`the reloaded page sent ${posts} non-GET requests; it must only read`);

    // --- Load more, a past task still running, a canceled one ---------------------------
    // Made through the API (not this page): a Gemini task to cancel, then one that is still
    // running when the page lists it. Both wait for the held reference image, so neither
    // can finish before the test releases it.
    const upload = await uploadPng(url, undefined);
    const referenceUrls = [held.url];
    const canceledId = await createTask(url, upload, { provider: 'gemini', referenceUrls });
    await call(url, `/api/tasks/${canceledId}/cancel`, { method: 'POST', json: {} });
    const runningId = await createTask(url, upload, { provider: 'gemini', referenceUrls });
    posts = 0;
    await page.goto(`${url}/?pageSize=2`, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector(`#task-list li.task-card[data-task-id="${canceledId}"]`, { timeout: TIMEOUT_MS });
    await page.waitForSelector(`#task-list li.task-card[data-task-id="${runningId}"]`, { timeout: TIMEOUT_MS });
    const firstPage = await cards(page);
    if (Object.keys(firstPage).length !== 2) throw new Error(`pageSize=2 showed ${Object.keys(firstPage).length} cards`);
    // The summary counts what the page holds, and says more are left to load.
    const firstStats = await page.textContent('#task-stats');
    if (!firstStats.startsWith('2 tasks on this page (more to load): ')) {
      throw new Error(`with more tasks to load the summary should say it counts the 2 shown: "${firstStats}"`);
    }
    if (firstPage[runningId].provider !== 'Gemini') {
      throw new Error(`the Gemini task's card should say Gemini, saw ${JSON.stringify(firstPage[runningId])}`);
    }
    if (firstPage[runningId].status === 'completed' || !firstPage[runningId].cancelShown) {
      throw new Error(`the running past task should be listed unfinished with Cancel, saw ${JSON.stringify(firstPage[runningId])}`);
    }
    const heldRequests = held.state.requests;
    let pagesRead = 1;
    while (await page.isVisible('#tasks-more')) {
      const before = await page.$$eval('#task-list li.task-card', (list) => list.length);
      await page.click('#tasks-more');
      await page.waitForFunction(
        (n) => document.querySelectorAll('#task-list li.task-card').length > n
          && !document.querySelector('#tasks-more').disabled,
        before,
        { timeout: TIMEOUT_MS },
      );
      pagesRead += 1;
      if (pagesRead > 5) throw new Error('"Load more" never ran out');
    }
    const allIds = Object.keys(await cards(page));
    const expectedIds = [runningId, canceledId, ...sessionIds];
    if (pagesRead !== 3 || allIds.join() !== expectedIds.join()) {
      throw new Error(`"Load more" read ${pagesRead} pages and showed ${allIds.join()}; expected 3 pages and ${expectedIds.join()}`);
    }
    // Released, the running one finishes on the page over SSE (no reload, no polling).
    held.release();
    await page.waitForSelector(`#task-list li.task-card[data-task-id="${runningId}"][data-status="completed"] img.result-image`, { timeout: TIMEOUT_MS });
    const paged = await cards(page);
    const canceled = paged[canceledId];
    if (canceled.status !== 'failed' || canceled.message !== 'Canceled.' || canceled.retryShown || canceled.cancelShown) {
      throw new Error(`the canceled past task should say "Canceled." with no buttons, saw ${JSON.stringify(canceled)}`);
    }
    if (!(await resultImagesLoaded(page)).every(Boolean)) throw new Error('a result image did not load after "Load more"');
    await page.selectOption('#task-filter', 'failed');
    const failedShown = Object.entries(await cards(page)).filter(([, c]) => !c.hidden).map(([id]) => id);
    if (failedShown.join() !== canceledId) throw new Error(`filter "failed" shows ${failedShown.join()}, not the canceled task`);
    await page.selectOption('#task-filter', 'all');
    const pagedStats = await page.textContent('#task-stats');
    if (!pagedStats.startsWith('6 tasks on this page: ') || !pagedStats.includes('5 completed') || !pagedStats.includes('1 failed')) {
      throw new Error(`the summary does not count every loaded task: "${pagedStats}"`);
    }
    if (posts > 0) throw new Error(`the page sent ${posts} non-GET requests while listing; it must only read`);

    // --- Statistics: charts drawn from GET /api/stats, live, at any width -------------
    const expected = await call(url, '/api/stats?window=24h');
    await page.click('#tab-stats');
    await page.waitForSelector('#chart-throughput svg rect.bar', { timeout: TIMEOUT_MS });
    const charts = () => page.evaluate(() => {
      const values = (selector) => Array.from(document.querySelectorAll(selector)).map((r) => Number(r.dataset.value));
      const tile = (label) => {
        const dt = Array.from(document.querySelectorAll('#stats-tiles dt')).find((d) => d.textContent === label);
        return dt ? dt.nextElementSibling.textContent : '';
      };
      return {
        hash: window.location.hash,
        tasksShown: !document.querySelector('#view-tasks').hidden,
        throughput: values('#chart-throughput rect.bar').reduce((a, b) => a + b, 0),
        latencyBars: values('#chart-latency rect.bar').filter((v) => v > 0).length,
        credits: values('#chart-credits rect.bar').reduce((a, b) => a + b, 0),
        failures: Array.from(document.querySelectorAll('#chart-failures rect.bar title')).map((t) => t.textContent),
        providers: document.querySelector('#stats-providers').textContent,
        tasks: tile('Tasks'),
        overflow: document.documentElement.scrollWidth - window.innerWidth,
        svgWidths: Array.from(document.querySelectorAll('#view-stats svg')).map((svg) => svg.getBoundingClientRect().right),
      };
    });
    const drawn = await charts();
    if (drawn.hash !== '#statistics' || drawn.tasksShown) throw new Error(`the Statistics tab should show its view alone at #statistics, saw ${JSON.stringify(drawn)}`);
    if (drawn.throughput !== expected.tasks || expected.tasks !== 6) {
      throw new Error(`the throughput chart should draw the ${expected.tasks} tasks of /api/stats (6 expected), drew ${drawn.throughput}`);
    }
    if (drawn.latencyBars !== 9) throw new Error(`the latency chart should draw p50, p95 and p99 of 3 stages, drew ${drawn.latencyBars} bars`);
    if (drawn.credits !== expected.credits || expected.credits <= 0) {
      throw new Error(`the credits chart should draw the ${expected.credits} credits spent, drew ${drawn.credits}`);
    }
    if (drawn.failures.length !== 1 || !drawn.failures[0].startsWith('canceled')) {
      throw new Error(`the failures chart should show the one canceled task, saw ${JSON.stringify(drawn.failures)}`);
    }
    if (!/KIE working/.test(drawn.providers) || !/Gemini working/.test(drawn.providers)) {
      throw new Error(`the providers card should say KIE and Gemini are working, saw "${drawn.providers}"`);
    }
    if (drawn.overflow > 0 || drawn.svgWidths.some((right) => right > 390)) {
      throw new Error(`the Statistics view overflows the phone width: ${JSON.stringify(drawn)}`);
    }
    // Live: a task made elsewhere shows up on its event, well before the 15 s refresh.
    const liveStarted = Date.now();
    await createTask(url, upload, {});
    await page.waitForFunction(() => Array.from(document.querySelectorAll('#stats-tiles dt'))
      .some((d) => d.textContent === 'Tasks' && d.nextElementSibling.textContent === '7'), undefined, { timeout: 10_000 });
    const statsLiveMs = Date.now() - liveStarted;
    // Wide, for the screenshot: docs/statistics.png (linked from docs/API.md) only when
    // UPDATE_SCREENSHOTS=1, so a test run leaves the checkout clean; otherwise under target/.
    await page.setViewportSize({ width: 1100, height: 900 });
    await page.waitForFunction(() => Array.from(document.querySelectorAll('#chart-throughput svg')).some((svg) => svg.getBoundingClientRect().width > 400), undefined, { timeout: TIMEOUT_MS });
    await page.waitForSelector('#stats-keys-card:not([hidden])', { timeout: TIMEOUT_MS });
    const shot = process.env.UPDATE_SCREENSHOTS === '1'
      ? join(ROOT, 'docs', 'statistics.png')
      : join(ROOT, 'target', 'statistics.png');
    await page.screenshot({ path: shot, fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    // A reload at #statistics opens the view directly.
    await page.reload({ waitUntil: 'networkidle' });
    await page.waitForSelector('#chart-throughput svg rect.bar', { timeout: TIMEOUT_MS });
    await page.click('#tab-tasks');
    if (!(await page.isVisible('#generate-form')) || (await page.isVisible('#view-stats'))) {
      throw new Error('the Generate tab should bring the form back and hide the statistics');
    }

    // --- The API docs: Swagger UI from the binary, nothing from another host -----------
    const docs = await browser.newPage();
    const docsErrors = [];
    const foreign = [];
    docs.on('console', (message) => {
      if (message.type() === 'error') docsErrors.push(`console: ${message.text()}`);
    });
    docs.on('pageerror', (error) => docsErrors.push(`page error: ${error.message}`));
    docs.on('request', (request) => {
      const target = new URL(request.url());
      if (target.protocol !== 'data:' && target.origin !== url) foreign.push(request.url());
    });
    await docs.goto(`${url}/api/docs`, { waitUntil: 'networkidle' });
    await docs.waitForFunction(() => document.querySelectorAll('.opblock').length >= 20, undefined, { timeout: TIMEOUT_MS });
    const operations = await docs.$$eval('.opblock', (blocks) => blocks.length);
    const docsTitle = await docs.textContent('.info .title');
    if (!docsTitle.includes('darkroom')) throw new Error(`the docs page shows "${docsTitle}", not darkroom's document`);
    if (foreign.length > 0) throw new Error(`the docs page asked another host: ${foreign.join(', ')}`);
    if (docsErrors.length > 0) throw new Error(`docs page console errors:\n  ${docsErrors.join('\n  ')}`);
    await docs.close();

    // --- Out of credits: the page says why a task waits -------------------------------
    // A standalone KIE simulator with credits for one image, and a darkroom using it as
    // "real" KIE: of two tasks one runs, the other meets the 402 and waits in the queue.
    const simPort = await freePort();
    creditSim = spawn(BINARY, ['kie-sim', '--host', '127.0.0.1', '--port', String(simPort),
      '--latency-ms', '200-400', '--credits', '4'], {
      env: { ...process.env, DARKROOM_LOG: 'warn' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const simUrl = `127.0.0.1:${simPort}`;
    const creditPort = await freePort();
    const creditUrl = `http://127.0.0.1:${creditPort}`;
    creditServer = startServer(creditPort, creditDataDir, {
      KIE_API_TOKEN: 'browser-test-token',
      KIE_BASE_URL: `http://${simUrl}`,
      KIE_UPLOAD_BASE_URL: `http://${simUrl}`,
      DARKROOM_TRUSTED_FETCH_HOSTS: simUrl,
      DARKROOM_KIE_CREDITS_PAUSE_SECS: '600',
    });
    await waitForServer(creditUrl, creditServer);
    await page.goto(creditUrl, { waitUntil: 'networkidle' });
    if (await page.isVisible('#provider-notice')) throw new Error('the pause notice shows before any pause');
    // KIE is "real" here (the standalone simulator stands in for it); only Gemini is simulated.
    await page.waitForSelector('#simulator-notice:not([hidden])', { timeout: TIMEOUT_MS });
    const partBanner = (await page.textContent('#simulator-notice')).trim();
    if (!partBanner.includes('Gemini') || partBanner.includes('KIE')) {
      throw new Error(`with real KIE the simulator banner should name Gemini only: "${partBanner}"`);
    }
    await chooseFiles(page, [
      { name: 'one.png', mimeType: 'image/png', buffer: png(30, 30, [10, 120, 200]) },
      { name: 'two.png', mimeType: 'image/png', buffer: png(30, 30, [200, 120, 10]) },
    ]);
    await page.fill('#prompt-input', 'a poster of this');
    await page.click('#generate-button');
    await page.waitForSelector('#task-list li.task-card[data-status="completed"] img.result-image', { timeout: TIMEOUT_MS });
    await waitForCardWaitingOnCredits(page);
    await page.waitForSelector('#provider-notice:not([hidden])', { timeout: TIMEOUT_MS });
    const pauseNotice = await page.textContent('#provider-notice');
    if (!/KIE reports insufficient credits/.test(pauseNotice) || !/wait in the queue/.test(pauseNotice)) {
      throw new Error(`the pause notice should say KIE is out of credits, saw "${pauseNotice}"`);
    }
    // After a reload the waiting task (read from /api/tasks) still says why.
    await page.reload({ waitUntil: 'networkidle' });
    await waitForCardWaitingOnCredits(page);
    await page.waitForSelector('#provider-notice:not([hidden])', { timeout: TIMEOUT_MS });

    // --- Below the credit floor: the page says so, and a top-up lifts it -----------------
    // The same simulator topped up to 100 credits, and a second darkroom holding KIE to a
    // floor of 200: its first reading (at start) pauses KIE with code credit_floor.
    const simAnswer = await fetch(`http://${simUrl}/sim/credits`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ credits: 100 }),
    });
    if (simAnswer.status !== 200) throw new Error(`POST /sim/credits answered ${simAnswer.status}`);
    const floorPort = await freePort();
    const floorUrl = `http://127.0.0.1:${floorPort}`;
    floorServer = startServer(floorPort, floorDataDir, {
      KIE_API_TOKEN: 'browser-test-token',
      KIE_BASE_URL: `http://${simUrl}`,
      KIE_UPLOAD_BASE_URL: `http://${simUrl}`,
      DARKROOM_TRUSTED_FETCH_HOSTS: simUrl,
      DARKROOM_KIE_CREDIT_FLOOR: '200',
      DARKROOM_KIE_CREDIT_CHECK_SECS: '1',
    });
    await waitForServer(floorUrl, floorServer);
    const floorReady = async () => (await (await fetch(`${floorUrl}/readyz`)).json()).providers.kie;
    for (let i = 0; (await floorReady()).code !== 'credit_floor'; i += 1) {
      if (i > 100) throw new Error(`KIE is not paused at the floor: ${JSON.stringify(await floorReady())}`);
      await new Promise((done) => setTimeout(done, 100));
    }
    await page.goto(floorUrl, { waitUntil: 'networkidle' });
    await page.waitForSelector('#provider-notice:not([hidden])', { timeout: TIMEOUT_MS });
    const floorNotice = (await page.textContent('#provider-notice')).trim();
    if (!/KIE's credit balance \(100\) is below the floor of 200/.test(floorNotice) || !/wait in the queue/.test(floorNotice)) {
      throw new Error(`the notice should name the balance and the floor, saw "${floorNotice}"`);
    }
    await fetch(`http://${simUrl}/sim/credits`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ credits: 1000 }),
    });
    for (let i = 0; (await floorReady()).status !== 'ok'; i += 1) {
      if (i > 100) throw new Error(`the top-up did not lift the floor pause: ${JSON.stringify(await floorReady())}`);
      await new Promise((done) => setTimeout(done, 100));
    }
    await page.reload({ waitUntil: 'networkidle' });
    if (await page.isVisible('#provider-notice')) throw new Error('the floor notice stays after the top-up');

    // --- API keys: the list uses the page's key; a wrong one gets the 401 message --------
    const keyedPort = await freePort();
    const keyedUrl = `http://127.0.0.1:${keyedPort}`;
    keyedServer = startServer(keyedPort, keyedDataDir, { DARKROOM_API_KEYS: `tester:${API_KEY},other:${OTHER_KEY}` });
    await waitForServer(keyedUrl, keyedServer);
    const keyedTask = await createTask(keyedUrl, await uploadPng(keyedUrl, API_KEY), { key: API_KEY });
    const otherTask = await createTask(keyedUrl, await uploadPng(keyedUrl, OTHER_KEY), { key: OTHER_KEY });
    let refused = 0;
    page.on('response', (response) => {
      if (response.status() === 401) refused += 1;
    });
    await page.goto(keyedUrl, { waitUntil: 'networkidle' });
    await page.waitForSelector('#tasks-load-status:has-text("Enter your API key")', { timeout: TIMEOUT_MS });
    if (refused > 0 || await page.isVisible('#error-area')) throw new Error('the list was asked for without a key');
    const errorsBeforeWrongKey = errors.length;
    await page.fill('#api-key-input', 'dk_wrong_key_0123456789abcdef');
    await page.press('#api-key-input', 'Enter');
    await page.waitForSelector('#error-area:not([hidden])', { timeout: TIMEOUT_MS });
    const refusal = await page.textContent('#error-message');
    if (refusal !== 'API key missing or wrong' || refused !== 1) {
      throw new Error(`a wrong key should give one 401 and the page's message, saw ${refused} and "${refusal}"`);
    }
    // Chromium logs the refused request itself as a console error: that one is expected.
    const logged = errors.splice(errorsBeforeWrongKey);
    const unexpected = logged.filter((e) => !/status of 401/.test(e));
    errors.push(...unexpected);
    if (logged.length - unexpected.length > 1) throw new Error(`more than one 401 logged: ${logged.join('; ')}`);
    await page.fill('#api-key-input', API_KEY);
    await page.press('#api-key-input', 'Enter');
    await page.waitForSelector(`#task-list li.task-card[data-task-id="${keyedTask}"][data-status="completed"] img.result-image`, { timeout: TIMEOUT_MS });
    if (await page.isVisible('#error-area')) throw new Error('the 401 message stayed after the right key loaded the list');
    if (!(await resultImagesLoaded(page)).every(Boolean)) throw new Error('a signed result image did not load');
    // Another key: its tasks replace the first key's on screen (none of tester's stays).
    await page.fill('#api-key-input', OTHER_KEY);
    await page.press('#api-key-input', 'Enter');
    await page.waitForSelector(`#task-list li.task-card[data-task-id="${otherTask}"][data-status="completed"] img.result-image`, { timeout: TIMEOUT_MS });
    const shownForOther = Object.keys(await cards(page));
    if (shownForOther.join() !== otherTask) {
      throw new Error(`after switching keys the list shows ${shownForOther.join()}, expected only ${otherTask}`);
    }

    if (polls > 0) throw new Error(`the page polled /api/task-status ${polls} times; it must follow SSE`);
    if (errors.length > 0) throw new Error(`console errors:\n  ${errors.join('\n  ')}`);
    console.log(`browser test: ok: the form (checkbox on its label's row, provider select unclipped at 390 and 1024 px, banner "${banner}", API docs link ${docsHref} → 200); ${badFiles.length} bad files refused on selection with no thumbnail and Generate disabled; 2 single tasks + a batch of 2 → 4 results shown live (and the batch ZIP) in ${liveMs} ms at 390 px wide; after a reload the 4 past tasks with their images (the batch's 2 cards with its ZIP link), "Load more" over ${pagesRead} pages of 2, a past running task (held on its input, ${heldRequests} held input requests when listed) finished live once released, a canceled one shown; the list with an API key (a wrong key → "${refusal}"; another key swaps the list); the Statistics view (${drawn.throughput} tasks, ${drawn.latencyBars} latency bars, ${drawn.credits} credits, a new task shown in ${statsLiveMs} ms, ${shot} saved); the API docs page with ${operations} operations and 0 requests to other hosts; out of credits: "${pauseNotice.trim()}"; below the floor: "${floorNotice}", lifted by a top-up; 0 polls, 0 console errors; summary "${stats}" → "${pagedStats}"`);
  } finally {
    if (browser) await browser.close();
    await held.close();
    await stopServer(server);
    await stopServer(keyedServer);
    await stopServer(creditServer);
    await stopServer(floorServer);
    await stopServer(creditSim);
    rmSync(creditDataDir, { recursive: true, force: true });
    rmSync(floorDataDir, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(keyedDataDir, { recursive: true, force: true });
    rmSync(profileDir, { recursive: true, force: true });
  }
}

main().catch((error) => fail(error && error.stack ? error.stack : String(error)));

// The web page in a real browser: Debian's chromium, headless, driven by playwright-core
// (no browser download). Starts a freshly built darkroom (`target/debug/darkroom serve`) on
// a free loopback port with a temporary data directory and the built-in simulator, uploads
// two images through the page, submits, and waits for both results to appear without a
// reload (the page follows progress over SSE); then a batch of two. After a reload the
// list shows those tasks again (read from GET /api/tasks), "Load more" pages through them,
// a past unfinished task finishes live and a canceled one says so. Last, a second server
// with API keys: the list waits for a key, a wrong key gets the page's 401 message, the
// right one shows the key's tasks. Any console error or page error fails it (except the
// one 401 the wrong key is meant to cause).
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

/** { taskId: { status, message, retryShown, cancelShown, results } } of every card shown. */
function cards(page) {
  return page.$$eval('#task-list li.task-card', (list) => Object.fromEntries(list.map((c) => [c.dataset.taskId, {
    status: c.dataset.status,
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

async function main() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)`);
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build first`);

  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-'));
  const profileDir = mkdtempSync(join(tmpdir(), 'darkroom-chromium-'));
  const url = `http://127.0.0.1:${port}`;
  const held = await heldInput();
  const server = startServer(port, dataDir, { DARKROOM_TRUSTED_FETCH_HOSTS: held.host });
  const keyedDataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-keyed-'));
  let keyedServer;
  const creditDataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-credits-'));
  let creditServer;
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

    const started = Date.now();
    await page.goto(url, { waitUntil: 'networkidle' });
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
    const batchId = new URL(zipHref, url).pathname.split('/')[3];
    const batchLinks = await page.$$eval('#task-list li.task-card a.task-batch-zip', (links) => links.map((a) => a.getAttribute('href')));
    if (batchLinks.length !== 2 || !batchLinks.every((href) => href === `/api/batches/${batchId}/zip?wait=true`)) {
      throw new Error(`after a reload expected the batch's 2 cards to link its ZIP, saw ${JSON.stringify(batchLinks)}`);
    }
    const reloadedStats = await page.textContent('#task-stats');
    if (!reloadedStats.startsWith('4 tasks') || !reloadedStats.includes('4 completed')) {
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
    if (!pagedStats.startsWith('6 tasks') || !pagedStats.includes('5 completed') || !pagedStats.includes('1 failed')) {
      throw new Error(`the summary does not count every loaded task: "${pagedStats}"`);
    }
    if (posts > 0) throw new Error(`the page sent ${posts} non-GET requests while listing; it must only read`);

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
    console.log(`browser test: ok: 2 single tasks + a batch of 2 → 4 results shown live (and the batch ZIP) in ${liveMs} ms at 390 px wide; after a reload the 4 past tasks with their images (the batch's 2 cards with its ZIP link), "Load more" over ${pagesRead} pages of 2, a past running task (held on its input, ${heldRequests} held input requests when listed) finished live once released, a canceled one shown; the list with an API key (a wrong key → "${refusal}"; another key swaps the list); the API docs page with ${operations} operations and 0 requests to other hosts; out of credits: "${pauseNotice.trim()}"; 0 polls, 0 console errors; summary "${stats}" → "${pagedStats}"`);
  } finally {
    if (browser) await browser.close();
    await held.close();
    await stopServer(server);
    await stopServer(keyedServer);
    await stopServer(creditServer);
    await stopServer(creditSim);
    rmSync(creditDataDir, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(keyedDataDir, { recursive: true, force: true });
    rmSync(profileDir, { recursive: true, force: true });
  }
}

main().catch((error) => fail(error && error.stack ? error.stack : String(error)));

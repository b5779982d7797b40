// The web page in a real browser: Debian's chromium, headless, driven by playwright-core
// (no browser download). Starts a freshly built darkroom (`target/debug/darkroom serve`) on
// a free loopback port with a temporary data directory and the built-in simulator, uploads
// two images through the page, submits, and waits for both results to appear without a
// reload (the page follows progress over SSE). Any console error or page error fails it.
//
// Usage: node page.test.mjs   (from tests/browser, after `npm ci` and `cargo build`)

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '..', '..');
const BINARY = join(ROOT, 'target', 'debug', 'darkroom');
const CHROMIUM = '/usr/bin/chromium';
const TIMEOUT_MS = 60_000;

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

async function main() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)`);
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build first`);

  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'darkroom-browser-'));
  const profileDir = mkdtempSync(join(tmpdir(), 'darkroom-chromium-'));
  const url = `http://127.0.0.1:${port}`;
  const server = spawn(BINARY, ['serve'], {
    env: {
      ...process.env,
      DARKROOM_LISTEN: `127.0.0.1:${port}`,
      DARKROOM_DATA_DIR: dataDir,
      DARKROOM_SIM_LATENCY_MS: '200-500',
      DARKROOM_LOG: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
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
    page.on('request', (request) => {
      if (request.url().includes('/api/task-status')) polls += 1;
    });

    const started = Date.now();
    await page.goto(url, { waitUntil: 'networkidle' });
    await page.setInputFiles('#file-input', [
      { name: 'red.png', mimeType: 'image/png', buffer: png(64, 48, [200, 30, 30]) },
      { name: 'blue.png', mimeType: 'image/png', buffer: png(48, 64, [30, 30, 200]) },
    ]);
    await page.waitForSelector('#file-list li:nth-child(2)', { timeout: TIMEOUT_MS });
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
    await page.setInputFiles('#file-input', [
      { name: 'green.png', mimeType: 'image/png', buffer: png(40, 40, [30, 200, 30]) },
      { name: 'grey.png', mimeType: 'image/png', buffer: png(36, 52, [120, 120, 120]) },
    ]);
    await page.waitForSelector('#file-list li:nth-child(2)', { timeout: TIMEOUT_MS });
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
    if (polls > 0) throw new Error(`the page polled /api/task-status ${polls} times; it must follow SSE`);
    if (errors.length > 0) throw new Error(`console errors:\n  ${errors.join('\n  ')}`);
    console.log(`browser test: ok: 2 single tasks + a batch of 2 → 4 results shown live (and the batch ZIP) in ${Date.now() - started} ms at 390 px wide, 0 polls, 0 console errors; summary "${stats}"`);
  } finally {
    if (browser) await browser.close();
    server.kill('SIGTERM');
    await new Promise((r) => { if (server.exitCode !== null) r(); else server.on('exit', r); });
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(profileDir, { recursive: true, force: true });
  }
}

main().catch((error) => fail(error && error.stack ? error.stack : String(error)));

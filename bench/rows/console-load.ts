import { existsSync } from 'node:fs'
import { createServer } from 'node:http'
import { gzipSync } from 'node:zlib'
import type { Browser, Page } from 'playwright-core'
import { API_KEY, execute, median, round, type Proc } from '../lib.js'
import { log, quick, rows, server } from '../context.js'

/** The browser: Debian's Chromium, as the console's tests use it. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

/** One first load as the browser saw it. */
interface Load {
  /** From navigation start to the frame after the first run-list row was inserted, ms (the page's clock). */
  shownMs: number
  requests: number
  /** Response headers and bodies (bodies as served: encoded), bytes. */
  bytes: number
  bodyBytes: number
  /** The bodies gzipped: what compression would have sent. */
  gzipBytes: number
  urls: string[]
}

/**
 * Installed before the page's own scripts (the CSP does not apply to it): the key in the tab, as
 * after signing in, and a watch for the first row of a run list (`table.list td.prompt a`),
 * recording the frame after it appeared.
 */
function watchRunList (key: string): void {
  try {
    sessionStorage.setItem('ccapi.key', key)
  } catch {}
  const w = window as unknown as { __shown?: number }
  new MutationObserver((_, observer) => {
    if (document.querySelector('table.list td.prompt a') === null) return
    observer.disconnect()
    requestAnimationFrame(() => { w.__shown = performance.now() })
  }).observe(document, { childList: true, subtree: true })
}

/** Load `url` in a fresh context (empty cache and storage); what it took until the run list showed and every request made by then was answered. */
async function firstLoad (browser: Browser, url: string): Promise<Load> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  try {
    context.setDefaultTimeout(30_000)
    await context.addInitScript(watchRunList, API_KEY)
    const page: Page = await context.newPage()
    const origin = new URL(url).origin
    const sizes: Array<Promise<{ url: string, bytes: number, body: number, gzip: number }>> = []
    let pending = 0
    page.on('request', () => { pending++ })
    page.on('requestfailed', () => { pending-- })
    page.on('requestfinished', request => {
      pending--
      if (!request.url().startsWith(origin)) return
      sizes.push((async () => {
        const s = await request.sizes()
        const body = await (await request.response())?.body().catch(() => Buffer.alloc(0)) ?? Buffer.alloc(0)
        return { url: request.url().slice(origin.length), bytes: s.responseHeadersSize + s.responseBodySize, body: s.responseBodySize, gzip: gzipSync(body).length }
      })())
    })
    await page.goto(url)
    await page.waitForFunction(() => (window as unknown as { __shown?: number }).__shown !== undefined)
    // Every request the page made until then, answered (the console polls again only after 3 s).
    await new Promise<void>(resolve => {
      const check = (): void => { if (pending <= 0) resolve(); else setTimeout(check, 10) }
      check()
    })
    const shownMs = await page.evaluate(() => (window as unknown as { __shown: number }).__shown)
    const all = await Promise.all(sizes)
    const sum = (k: 'bytes' | 'body' | 'gzip'): number => all.reduce((a, s) => a + s[k], 0)
    return { shownMs, requests: all.length, bytes: sum('bytes'), bodyBytes: sum('body'), gzipBytes: sum('gzip'), urls: all.map(s => s.url) }
  } finally {
    await context.close()
  }
}

/** A bare node http server answering one static page of `size` bytes that ends in a run-list row. */
async function staticPage (size: number): Promise<{ url: string, close: () => Promise<void> }> {
  const head = '<!doctype html><html><head><meta charset="utf-8"><title>static</title></head><body><!--'
  const tail = '--><table class="list"><tr><td class="prompt"><a href="#">static</a></td></tr></table></body></html>'
  const page = Buffer.from(head + 'x'.repeat(Math.max(0, size - head.length - tail.length)) + tail)
  const srv = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': page.length })
    res.end(page)
  })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${(srv.address() as { port: number }).port}/`, close: async () => await new Promise<void>(resolve => srv.close(() => resolve())) }
}

/**
 * Row 14: the web console's first load in Chromium (fresh cache, the key already in the tab):
 * every byte the page fetched from the server (as served) until the list showed, and the
 * time from navigation to the first rendered row of the run list, against one static page of the
 * same size from a bare node http server in the same browser. Skipped, with a note, without Chromium.
 */
export async function consoleLoad (): Promise<void> {
  const loads = quick ? 1 : 7
  const listed = 20
  if (!existsSync(CHROMIUM)) {
    log(`row 14: skipped, no Chromium at ${CHROMIUM}`)
    rows.push({ row: 14, what: '/console first load', compared_with: '—', measured: `skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`, baseline: '—', figure: null, unit: '', budget: 'first load ≤ 100 KB; run list ≤ 1 s', pass: true, smoke_pass: true, details: { skipped: true } })
    return
  }
  log(`row 14: /console first load in Chromium, ${loads} loads (${listed} runs listed), against a static page of the same size`)
  const { chromium } = await import('playwright-core')
  // The server with runs to list, and the browser, started side by side. Root (CI) cannot use
  // Chromium's own sandbox; /dev/shm may be tiny in containers.
  const launching = chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] })
  // Its failure is awaited below, not an unhandled rejection meanwhile.
  launching.catch(() => {})
  let browser: Browser | undefined
  let srv: Proc | undefined
  let bare: { url: string, close: () => Promise<void> } | undefined
  const ours: Load[] = []
  const base: Load[] = []
  try {
    srv = await server({}, true)
    await Promise.all(Array.from({ length: listed }, async (_, i) => await execute(srv!.url, { prompt: `listed run ${i}` })))
    browser = await launching
    const consoleUrl = `${srv.url}/console/`
    // The first load sizes the static page. The full run warms the browser up with it (and the
    // static page with one of its own) and counts the loads after; the smoke test counts it.
    const first = await firstLoad(browser, consoleUrl)
    bare = await staticPage(first.bodyBytes)
    if (quick) {
      ours.push(first)
      base.push(await firstLoad(browser, bare.url))
    } else {
      await firstLoad(browser, bare.url)
      for (let i = 0; i < loads; i++) {
        const t0 = Date.now()
        ours.push(await firstLoad(browser, consoleUrl))
        base.push(await firstLoad(browser, bare.url))
        log(`row 14: load ${i + 1} of ${loads}: ${Date.now() - t0} ms`)
      }
    }
  } finally {
    await (browser ?? await launching.catch(() => undefined))?.close()
    await bare?.close()
    await srv?.stop()
  }
  const ms = median(ours.map(l => l.shownMs))
  const baseMs = median(base.map(l => l.shownMs))
  const bytes = Math.max(...ours.map(l => l.bytes))
  const last = ours.at(-1)!
  const kb = (b: number): number => round(b / 1024, 1)
  rows.push({
    row: 14,
    what: `/console first load in Chromium (fresh cache, key in the tab, ${listed} runs listed): bytes fetched from the server as served, and navigation to the first rendered run-list row (${loads === 1 ? 'one load' : `median of ${loads}`})`,
    compared_with: 'a static page of the same size from a bare node http server, same browser',
    measured: `${kb(bytes)} KB in ${last.requests} requests (bodies ${kb(last.bodyBytes)} KB, ${kb(last.gzipBytes)} KB gzipped); run list at ${round(ms, 0)} ms`,
    baseline: `${kb(base.at(-1)!.bytes)} KB in ${base.at(-1)!.requests} request(s); shown at ${round(baseMs, 0)} ms`,
    figure: round(ms, 0),
    unit: 'ms to the run list',
    budget: 'first load ≤ 100 KB; run list ≤ 1 s',
    pass: bytes <= 100 * 1024 && ms <= 1000,
    smoke_pass: bytes <= 200 * 1024 && ms <= 5000,
    details: {
      console_ms: ours.map(l => round(l.shownMs, 1)),
      static_ms: base.map(l => round(l.shownMs, 1)),
      bytes: last.bytes,
      body_bytes: last.bodyBytes,
      gzip_body_bytes: last.gzipBytes,
      requests: last.urls
    }
  })
}

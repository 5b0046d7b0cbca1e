import { test } from 'tap'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { API_KEY, auth, build, eventually, listen } from '../helper.js'
import { CONSOLE_CSP } from '../../plugins/console.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const SHOTS = process.env.CONSOLE_SCREENSHOTS === '1'
const SHOTS_DIR = fileURLToPath(new URL('../../docs/console/', import.meta.url))

declare global {
  interface Window { __pwned?: unknown, __notes?: string[] }
}

test('the console\'s own responses: headers, redirect, files', async t => {
  const { app } = await build(t)
  const page = await app.inject({ url: '/console/' })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /^text\/html/)
  t.equal(page.headers['content-security-policy'], CONSOLE_CSP, 'the strict CSP')
  t.equal(page.headers['x-content-type-options'], 'nosniff')
  t.equal(page.headers['referrer-policy'], 'no-referrer')
  t.equal(page.headers['cache-control'], 'no-cache')
  t.notMatch(page.body, /<script>|<style>|style=|\son[a-z]+=/i, 'no inline script, style or handlers')
  const bare = await app.inject({ url: '/console' })
  t.equal(bare.statusCode, 302)
  t.equal(bare.headers.location, 'console/', 'a relative redirect: works under a path prefix')
  t.equal(bare.headers['content-security-policy'], CONSOLE_CSP)
  const js = await app.inject({ url: '/console/app.js' })
  t.equal(js.statusCode, 200)
  t.match(js.headers['content-type'], /javascript/)
  t.equal(js.headers['content-security-policy'], CONSOLE_CSP)
  t.equal((await app.inject({ url: '/console/nope.js' })).statusCode, 404)
  t.equal((await app.inject({ url: '/console/../package.json' })).statusCode, 404, 'nothing outside console/')
  t.equal((await app.inject({ url: '/api/runs' })).statusCode, 401, 'the API still wants its key')
})

test('the web console in a browser', { skip: existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)` }, async t => {
  const { chromium } = await import('playwright-core')
  const { app, model, box } = await build(t)
  const base = await listen(app)
  let browser: Browser | undefined
  const closeBrowser = async () => {
    const b = browser
    browser = undefined
    await b?.close()
  }
  // Closed at the end of the test, and here if it fails on the way: no Chromium left behind.
  t.teardown(closeBrowser)
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Root (CI) cannot use Chromium's own sandbox; /dev/shm may be tiny in containers.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu']
  })
  const context: BrowserContext = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  context.setDefaultTimeout(30_000)
  // Notifications: granted, and recorded instead of shown (a stand-in installed before the page's
  // scripts; the CSP does not apply to the test's own init script).
  await context.addInitScript(() => {
    window.__notes = []
    class FakeNotification {
      static permission = 'granted'
      static requestPermission = async () => 'granted'
      constructor (title: string) { window.__notes!.push(title) }
    }
    Object.defineProperty(window, 'Notification', { value: FakeNotification, configurable: true })
  })
  const page: Page = await context.newPage()
  const pageErrors: string[] = []
  page.on('pageerror', e => pageErrors.push(e.message))
  const cspViolations: string[] = []
  page.on('console', m => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()) })

  const shot = async (name: string) => {
    if (!SHOTS) return
    mkdirSync(SHOTS_DIR, { recursive: true })
    await page.screenshot({ path: join(SHOTS_DIR, `${name}.png`) })
  }
  const runIdOfPage = () => /#\/runs\/([0-9a-f-]{36})$/.exec(page.url())?.[1] ?? ''
  const view = async (id: string) => (await app.inject({ url: `/api/runs/${id}`, headers: auth })).json()
  const nav = (name: string | RegExp) => page.getByRole('navigation').getByRole('link', { name, exact: typeof name === 'string' })
  const result = () => page.getByRole('heading', { name: 'Result', exact: true })
  /** Fill the new-run form on the Runs page and start the run; answers its id. */
  const startRun = async (prompt: string, opts: { ask?: boolean, mode?: string } = {}) => {
    await nav('Runs').click()
    await page.getByLabel('Prompt', { exact: true }).fill(prompt)
    if (opts.mode !== undefined) await page.getByLabel('Permission mode').selectOption(opts.mode)
    if (opts.ask === true) await page.getByLabel('Ask before tools run').check()
    await page.getByRole('button', { name: 'Run', exact: true }).click()
    await page.waitForURL(/#\/runs\/[0-9a-f-]{36}$/)
    return runIdOfPage()
  }

  await t.test('a wrong key is refused with an alert', async t => {
    await page.goto(`${base}/console`)
    t.match(page.url(), /\/console\/$/, '/console redirects to /console/')
    await shot('sign-in')
    await page.getByLabel('API key').fill('not-the-key')
    await page.getByRole('button', { name: 'Sign in' }).click()
    const alert = page.getByRole('alert').filter({ hasText: /refused/i })
    await alert.waitFor()
    t.ok(await alert.isVisible(), 'the alert says the key was refused')
    t.equal(await page.getByRole('navigation').getByRole('link').count(), 0, 'still signed out')
  })

  await t.test('sign in: the key stays in the tab, never in a URL', async t => {
    await page.getByLabel('API key').fill(API_KEY)
    await page.getByRole('button', { name: 'Sign in' }).click()
    await nav('Runs').waitFor()
    for (const name of ['Runs', 'Approvals', 'Sessions', 'Server']) t.ok(await nav(name).isVisible(), `${name} in the navigation`)
    t.equal(await page.evaluate(() => Object.values(sessionStorage).includes('test-key-0123456789')), true, 'in sessionStorage')
    t.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage')
    t.notMatch(page.url(), API_KEY)
    await page.reload()
    await nav('Runs').waitFor()
    t.pass('a reload keeps the tab signed in')
  })

  let helloRun = ''
  await t.test('start a run: its text streams in, the list shows it', async t => {
    model.on('console says hello', [{ text: ['Hello from the console.', 'And a second piece.'], gapMs: 300 }])
    await nav('Runs').click()
    await page.getByRole('heading', { name: 'Recent runs' }).waitFor()
    helloRun = await startRun('console says hello')
    t.match(helloRun, /^[0-9a-f-]{36}$/, 'went to the run page')
    const log = page.getByLabel('Run events')
    await log.getByText('Hello from the console.').waitFor()
    await log.getByText('And a second piece.').waitFor()
    await result().waitFor()
    t.equal((await view(helloRun)).status, 'succeeded')
    await page.getByRole('heading', { name: 'Changes' }).waitFor()
    await shot('run')
    await nav('Runs').click()
    const row = page.getByRole('row').filter({ hasText: 'console says hello' })
    await row.waitFor()
    t.match(await row.textContent(), /succeeded/)
    await shot('runs')
  })

  await t.test('ask before tools run: Approve on the run page, the file is written', async t => {
    const file = join(box.work, 'console-approved.txt')
    model.on('console write approved', [{ tool: 'Write', input: { file_path: file, content: 'approved in the console\n' } }, { text: 'Wrote it.' }])
    const notesBefore = await page.evaluate(() => window.__notes?.length ?? 0)
    const id = await startRun('console write approved', { ask: true, mode: 'default' })
    await page.getByRole('heading', { name: 'Approval: Write' }).waitFor()
    t.ok(await page.locator('.entry.approval pre').getByText(file).isVisible(), 'the tool input is shown')
    await nav(/^Approvals \(1\)$/).waitFor()
    t.pass('the navigation counts it')
    t.notOk(existsSync(file), 'no file before the answer')
    t.ok(await eventually(async () => await page.evaluate(() => window.__notes?.length ?? 0) > notesBefore), 'a notification when it arrived')
    t.ok(await page.getByRole('button', { name: 'Always allow' }).isVisible(), 'always allow is offered')
    await page.getByRole('button', { name: 'Approve', exact: true }).click()
    await result().waitFor()
    t.equal((await view(id)).status, 'succeeded')
    t.ok(existsSync(file), 'the file exists once approved')
    await page.getByText('Allowed.', { exact: true }).waitFor()
    const diff = page.locator('pre.diff')
    await diff.waitFor()
    t.match(await diff.textContent(), /console-approved\.txt/, 'the changes, as a diff')
    await nav('Approvals').waitFor()
  })

  await t.test('deny from the Approvals page: the file never appears', async t => {
    const file = join(box.work, 'console-denied.txt')
    model.on('console write denied', [{ tool: 'Write', input: { file_path: file, content: 'no\n' } }, { text: 'Understood, not writing.' }])
    const id = await startRun('console write denied', { ask: true, mode: 'default' })
    await page.getByRole('heading', { name: 'Approval: Write' }).waitFor()
    await nav(/^Approvals \(1\)$/).click()
    const card = page.getByRole('article').filter({ hasText: 'console-denied.txt' })
    await card.waitFor()
    t.match(await card.textContent(), /Write/, 'the tool name')
    await shot('approvals')
    await card.getByRole('button', { name: 'Deny' }).click()
    await card.waitFor({ state: 'detached' })
    await page.getByText('Nothing waits for an answer.').waitFor()
    t.ok(await eventually(async () => (await view(id)).status === 'succeeded', 30_000), 'the run goes on and ends')
    t.notOk(existsSync(file), 'no file')
    await page.goto(`${base}/console/#/runs/${id}`)
    await page.getByText('Denied.', { exact: true }).waitFor()
    await page.getByLabel('Run events').getByText('Understood, not writing.').waitFor()
  })

  await t.test('send a message to a live run', async t => {
    model.on('console first question', [{ text: ['Thinking about it.', 'First answer.'], gapMs: 3000 }])
    model.on('console second question', [{ text: 'Second answer.' }])
    const id = await startRun('console first question')
    await page.getByText(/Session .* started/).waitFor()
    await page.getByLabel('Message').fill('console second question')
    await page.getByRole('button', { name: 'Send' }).click()
    await page.getByText('Message: console second question').waitFor()
    await page.getByLabel('Run events').getByText('Second answer.').waitFor()
    await result().waitFor()
    const done = await view(id)
    t.equal(done.status, 'succeeded')
    t.equal(done.result.output, 'Second answer.', 'the agent answered the message')
    t.ok(await page.getByLabel('Message').isHidden(), 'no message box once it ended')
  })

  await t.test('cancel a run', async t => {
    model.on('console never answers', [{ stall: true }])
    const id = await startRun('console never answers')
    await page.getByText(/Session .* started/).waitFor()
    await page.getByRole('button', { name: 'Interrupt' }).waitFor()
    await page.getByRole('button', { name: 'Cancel run' }).click()
    await result().waitFor()
    t.equal((await view(id)).status, 'cancelled')
    await page.locator('.result .status-cancelled').waitFor()
  })

  await t.test('run output is text: markup in it never runs', async t => {
    const evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    model.on('console markup', [{ text: `Here: ${evil} <b>bold?</b>` }])
    await startRun(`console markup ${evil}`)
    const log = page.getByLabel('Run events')
    await log.getByText('<script>window.__pwned=2</script>', { exact: false }).waitFor()
    await result().waitFor()
    t.equal(await page.evaluate(() => window.__pwned), undefined, 'no script ran')
    t.equal(await page.locator('main img').count(), 0, 'no <img> was made from the output or the prompt')
    t.equal(await page.locator('main script, main b').count(), 0, 'no element from the markup')
    t.ok(await page.locator('.result pre').getByText('<b>bold?</b>', { exact: false }).isVisible(), 'the result shown as text')
    await nav('Runs').click()
    await page.getByRole('link', { name: /console markup <img/ }).waitFor()
    t.equal(await page.locator('main img').count(), 0, 'nor in the list')
    t.equal(await page.evaluate(() => window.__pwned), undefined)
  })

  await t.test('sessions: the transcript, rename, fork, delete, continue', async t => {
    const { session_id: sessionId } = await view(helloRun)
    await nav('Sessions').click()
    await page.getByRole('heading', { name: 'Sessions' }).waitFor()
    await shot('sessions')
    await page.getByRole('link', { name: 'console says hello' }).click()
    await page.waitForURL(new RegExp(`#/sessions/${sessionId}$`))
    const transcript = page.getByLabel('Transcript')
    await transcript.getByText('Hello from the console.').waitFor()
    t.ok(await transcript.getByText('console says hello').first().isVisible(), 'the prompt is in it')
    await shot('session')

    await page.getByLabel('Title').fill('Renamed in the console')
    await page.getByRole('button', { name: 'Rename' }).click()
    await page.getByRole('heading', { name: 'Renamed in the console' }).waitFor()
    t.pass('renamed')

    model.on('console continues', [{ text: 'Continued the session.' }])
    await page.getByLabel('Prompt', { exact: true }).fill('console continues')
    await page.getByRole('button', { name: 'Continue' }).click()
    await page.waitForURL(/#\/runs\/[0-9a-f-]{36}$/)
    await result().waitFor()
    const cont = await view(runIdOfPage())
    t.equal(cont.session_id, sessionId, 'the run continued the session')
    t.ok(model.calls.find(c => c.prompt === 'console continues')?.userTexts.includes('console says hello'), 'with its history')

    await page.goto(`${base}/console/#/sessions/${sessionId}`)
    await page.getByRole('button', { name: 'Fork' }).click()
    await page.waitForURL(u => /#\/sessions\/[0-9a-f-]{36}$/.test(u.hash) && !u.hash.includes(sessionId))
    const forkId = /#\/sessions\/([0-9a-f-]{36})$/.exec(page.url())![1]!
    await page.getByLabel('Transcript').getByText('Hello from the console.').first().waitFor()
    t.pass('the fork has the transcript')
    page.once('dialog', d => { void d.accept() })
    await page.getByRole('button', { name: 'Delete' }).click()
    await page.waitForURL(/#\/sessions$/)
    t.equal((await app.inject({ url: `/api/sessions/${forkId}`, headers: auth })).statusCode, 404, 'the fork is deleted')
  })

  await t.test('server: /health as a definition list', async t => {
    await nav('Server').click()
    await page.getByRole('heading', { name: 'Isolation' }).waitFor()
    for (const term of ['status', 'level', 'enforced', 'parked', 'queued']) t.ok(await page.getByRole('term').filter({ hasText: new RegExp(`(^|\\.)${term}$`) }).first().isVisible(), `${term} shown`)
    t.ok(await page.getByRole('heading', { name: 'Cluster' }).isVisible())
    await shot('server')
  })

  await t.test('every screen fits 360 px', async t => {
    await page.setViewportSize({ width: 360, height: 740 })
    for (const hash of ['#/runs', `#/runs/${helloRun}`, '#/approvals', '#/sessions', '#/server']) {
      await page.goto(`${base}/console/${hash}`)
      await page.getByRole('heading', { level: 1 }).waitFor()
      await page.waitForLoadState('networkidle').catch(() => {})
      const width = await page.evaluate(() => document.documentElement.scrollWidth)
      t.ok(width <= 360, `${hash}: no sideways scrolling (${width} px)`)
    }
    await page.setViewportSize({ width: 1280, height: 800 })
  })

  await t.test('under a path prefix, it calls the API under the same prefix', async t => {
    // A stand-in for a proxy mounting the server at /p/: the browser sees only /p/… URLs.
    await context.route(u => u.pathname.startsWith('/p/'), async route => {
      // Unconditional (a 304 from the browser's cache headers cannot be handed back as is).
      const { 'if-none-match': _etag, 'if-modified-since': _since, ...headers } = route.request().headers()
      const res = await route.fetch({ url: route.request().url().replace('/p/', '/'), headers, maxRedirects: 0 })
      await route.fulfill({ response: res })
    })
    const p = await context.newPage()
    const urls: string[] = []
    p.on('pageerror', e => pageErrors.push(e.message))
    p.on('request', r => urls.push(new URL(r.url()).pathname))
    await p.goto(`${base}/p/console`)
    t.match(p.url(), /\/p\/console\/$/, 'the relative redirect keeps the prefix')
    // Chromium does not hand a redirect's next request to the route: load it afresh.
    await p.goto(`${base}/p/console/`)
    await p.getByLabel('API key').fill(API_KEY)
    await p.getByRole('button', { name: 'Sign in' }).click()
    await p.getByRole('navigation').getByRole('link', { name: 'Server' }).click()
    await p.getByRole('heading', { name: 'Isolation' }).waitFor()
    t.ok(urls.includes('/p/api/approvals'), 'API calls under /p/api')
    t.ok(urls.includes('/p/health'), 'health under /p/')
    t.notOk(urls.some(u => !u.startsWith('/p/')), 'nothing outside the prefix')
    await p.close()
  })

  t.same(pageErrors, [], 'no script errors in the page')
  t.same(cspViolations, [], 'no CSP violations')
  await closeBrowser()
})

import { test } from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { ConfigSchema } from '../../src/config.js'
import { auth, eventually, fakeModel, pidsInDir, pidsMatching, readSse, sandbox, startServer, testEnv, type SseEvent } from '../helper.js'
import { freePort } from '../fixtures/ports.js'

/**
 * The repo's deploy/nginx.conf, run by a real nginx in front of the real server on loopback. The
 * config is only rewritten where the container setup cannot apply on a test machine (upstream
 * address, listen address, pid/temp/log paths); everything that shapes proxying is as shipped.
 */

const REPO_CONF = readFileSync(fileURLToPath(new URL('../../deploy/nginx.conf', import.meta.url)), 'utf8')

interface T { teardown: (fn: () => unknown) => void }

/** Every nginx pid (masters and workers) this file started: none may outlive the file. */
const started = new Set<number>()

function findNginx (): string | null {
  // /usr/sbin is not on every user's PATH.
  for (const candidate of ['nginx', '/usr/sbin/nginx', '/usr/local/sbin/nginx']) {
    const r = spawnSync(candidate, ['-v'], { stdio: 'ignore' })
    if (r.error === undefined && r.status === 0) return candidate
  }
  return null
}
const NGINX = findNginx()
/**
 * Without nginx these tests are skipped, saying so, so `npm test` passes on a fresh machine; CI
 * sets REQUIRE_NGINX=1 (and installs nginx), where a missing nginx fails.
 */
const skip = NGINX === null && process.env.REQUIRE_NGINX !== '1'
  ? 'nginx is not installed (apt-get install nginx-light): deploy/nginx.conf is not tested'
  : false

function nginxBinary (): string {
  if (NGINX === null) throw new Error('nginx is not installed, so deploy/nginx.conf cannot be tested: install it (apt-get install nginx-light); .ci/run does')
  return NGINX
}

/** `from` replaced by `to`, failing loudly when the repo config no longer has `from`. */
function rewrite (conf: string, from: string | RegExp, to: string): string {
  const found = typeof from === 'string' ? conf.includes(from) : from.test(conf)
  if (!found) throw new Error(`deploy/nginx.conf no longer contains ${String(from)}: update the rewrite in ${import.meta.url}`)
  return typeof from === 'string' ? conf.replaceAll(from, to) : conf.replace(from, to)
}

const withoutComments = (conf: string): string => conf.replace(/#.*$/gm, '')

/** The repo config pointed at 127.0.0.1, with its pid, temp and log files in `dir`. */
function testConfig (dir: string, upstreamPort: number, listenPort: number): string {
  let conf = REPO_CONF
  conf = rewrite(conf, 'server api:8000;', `server 127.0.0.1:${upstreamPort};`)
  conf = rewrite(conf, 'listen 8080;', `listen 127.0.0.1:${listenPort};`)
  conf = rewrite(conf, 'pid /tmp/nginx.pid;', `pid ${dir}/nginx.pid;`)
  conf = rewrite(conf, '/tmp/nginx-', `${dir}/nginx-`)
  conf = rewrite(conf, 'access_log /dev/stdout main;', `access_log ${dir}/access.log main;`)
  if (withoutComments(conf).replaceAll(dir, '').includes('/tmp')) throw new Error('a /tmp path of deploy/nginx.conf was not moved to the test directory: parallel runs would collide')
  return conf
}

async function accepts (port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/** Live (not zombie) pids among `pids`. */
function alive (pids: Iterable<number>): number[] {
  return [...pids].filter(pid => {
    try {
      return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z'
    } catch {
      return false
    }
  })
}

function childrenOf (ppid: number): number[] {
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (Number(readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.split(' ')[1]) === ppid) pids.push(Number(name))
    } catch {
      // Gone while we looked.
    }
  }
  return pids
}

interface Nginx {
  base: string
  accessLog: () => string
  stderr: () => string
  /** SIGQUIT (graceful), SIGKILL for master and workers after 3 s; resolves when none is left. */
  stop: () => Promise<void>
}

/**
 * A real nginx with the test copy of deploy/nginx.conf (further changed by `edit`), stopped at the
 * end of the test.
 */
async function startNginx (t: T, upstream: string, edit: (conf: string) => string = conf => conf): Promise<Nginx> {
  const bin = nginxBinary()
  for (let attempt = 1; ; attempt++) {
    const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-nginx-')))
    // Run as root, the master switches its workers to `nobody` (the config has no `user`
    // directive, as in the container). The master creates the temp directories and chowns them to
    // the workers' user, but the workers must still reach them: open up the (0700) temp dir
    // rather than prepend `user root;`, so workers stay unprivileged as they are in deployment.
    chmodSync(dir, 0o755)
    const port = await freePort()
    const confPath = join(dir, 'nginx.conf')
    try {
      writeFileSync(confPath, edit(testConfig(dir, Number(new URL(upstream).port), port)))
    } catch (err) {
      rmSync(dir, { recursive: true, force: true })
      throw err
    }
    const child = spawn(bin, ['-p', `${dir}/`, '-c', confPath, '-e', 'stderr', '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
    let err = ''
    child.stdout.on('data', (c: Buffer) => { err += c.toString() })
    child.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const pids = new Set<number>([child.pid!])
    started.add(child.pid!)
    const note = (): void => {
      for (const pid of childrenOf(child.pid!)) { pids.add(pid); started.add(pid) }
    }
    let stopped: Promise<void> | undefined
    const stop = async (): Promise<void> => {
      stopped ??= (async () => {
        note()
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGQUIT')
          const quit = await Promise.race([exited.then(() => true), sleep(3000, false, { ref: false })])
          if (!quit) {
            for (const pid of alive(pids)) {
              try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
            }
            await exited
          }
        }
        await eventually(() => alive(pids).length === 0, 5000)
        rmSync(dir, { recursive: true, force: true })
      })()
      await stopped
    }
    t.teardown(stop)

    const up = await eventually(async () => child.exitCode !== null || await accepts(port), 10_000)
    if (up && child.exitCode === null) {
      note()
      return { base: `http://127.0.0.1:${port}`, accessLog: () => readFileSync(join(dir, 'access.log'), 'utf8'), stderr: () => err, stop }
    }
    await stop()
    // Another process may have taken the port between freePort() and nginx's bind().
    if (!/Address already in use/.test(err) || attempt === 3) throw new Error(`nginx did not start:\n${err}`)
  }
}

/** The API behind its own nginx: a sandbox, a real server process with `extra` settings, a proxy. */
async function proxied (t: T, extra: Record<string, string>, edit?: (conf: string) => string) {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const server = await startServer(t, testEnv(box, model, extra))
  const proxy = await startNginx(t, server.base, edit)
  return { box, model, server, proxy }
}

const post = async (base: string, path: string, body: unknown, signal?: AbortSignal) =>
  await fetch(`${base}${path}`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body), ...(signal !== undefined ? { signal } : {}) })

/** nginx time (`3700s`, `62m`, `1h 2m`, bare seconds) in seconds. */
function seconds (value: string): number {
  const unit: Record<string, number> = { ms: 0.001, s: 1, '': 1, m: 60, h: 3600, d: 86400 }
  let total = 0
  for (const [, n, u] of value.matchAll(/(\d+)(ms|s|m|h|d|)/g)) total += Number(n) * unit[u!]!
  return total
}

test('the repo config lets /api/ responses stream unbuffered and last MAX_TIMEOUT', { skip }, async t => {
  const api = /location \/api\/ \{([^}]*)\}/.exec(withoutComments(REPO_CONF))?.[1]
  t.ok(api, 'deploy/nginx.conf has a location /api/')
  const read = /proxy_read_timeout\s+([^;]+);/.exec(api ?? '')?.[1]
  t.ok(read, 'with a proxy_read_timeout')
  const maxTimeout = ConfigSchema.properties.MAX_TIMEOUT.default as number
  t.ok(seconds(read ?? '0') >= maxTimeout, `proxy_read_timeout ${read} covers MAX_TIMEOUT's default (${maxTimeout} s)`)
  t.match(api, /proxy_buffering\s+off;/, 'proxy buffering is off for /api/')
})

test('through nginx: /health, and SSE events pass one by one as the run goes', { skip }, async t => {
  const { model, proxy } = await proxied(t, { TRUST_PROXY: '127.0.0.1' })
  const health = await fetch(`${proxy.base}/health`)
  t.equal(health.status, 200)
  t.equal((await health.json() as { status: string }).status, 'healthy')
  t.match(proxy.accessLog(), /"GET \/health HTTP\/1\.1" 200/, 'nginx logged the request to its access log')
  // The web console comes through the same config: its redirect stays relative, its page keeps its CSP.
  const bare = await fetch(`${proxy.base}/console`, { redirect: 'manual' })
  t.equal(bare.headers.get('location'), 'console/', 'the console\'s redirect is relative (a path prefix survives it)')
  const page = await fetch(`${proxy.base}/console/`)
  t.equal(page.status, 200)
  t.match(page.headers.get('content-security-policy'), /script-src 'self'/)
  t.match(await page.text(), /<script type="module" src="\.\/app\.js"/)

  model.on('count through nginx', [{ text: ['one', 'two', 'three'], gapMs: 800 }])
  const res = await post(proxy.base, '/api/execute/stream', { prompt: 'count through nginx' })
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/event-stream/)
  t.equal(res.headers.get('x-accel-buffering'), 'no', 'X-Accel-Buffering reaches a proxy in front of this one')
  const { events } = await readSse(res)
  const texts = events.filter(e => e.event === 'text')
  t.same(texts.map(e => JSON.parse(e.data).text), ['one', 'two', 'three'])
  const result = events.at(-1)!
  t.equal(result.event, 'result')
  t.equal(JSON.parse(result.data).success, true)
  const spread = texts[2]!.at - texts[0]!.at
  t.ok(spread >= 1200, `text events arrive as they happen, not in one lump (${spread} ms apart)`)
  const ahead = result.at - texts[0]!.at
  t.ok(ahead >= 1200, `the first text arrives well before the result (${ahead} ms)`)
})

test('keep-alive comments carry an SSE stream across silences longer than proxy_read_timeout', { skip }, async t => {
  // Only in this copy: a 2 s read timeout, so a 3 s silence of the model is longer than nginx allows.
  const shortTimeout = (conf: string): string => rewrite(conf, /proxy_read_timeout\s+[^;]+;/, 'proxy_read_timeout 2s;')
  const stall = [{ text: ['before the stall', 'after the stall'], gapMs: 3000 }]

  const kept = await proxied(t, { SSE_KEEPALIVE_MS: '500' }, shortTimeout)
  kept.model.on('stall behind nginx', stall)
  const { events, comments } = await readSse(await post(kept.proxy.base, '/api/execute/stream', { prompt: 'stall behind nginx' }))
  const texts = events.filter(e => e.event === 'text')
  t.ok(texts[1]!.at - texts[0]!.at >= 2500, `the model was silent for ${texts[1]!.at - texts[0]!.at} ms`)
  t.ok(comments >= 3, `keep-alive comments came through nginx (${comments})`)
  t.equal(events.at(-1)?.event, 'result', 'the stream still ends with its result')
  t.equal(JSON.parse(events.at(-1)!.data).output, 'after the stall')

  // The control: with the default 15 s keep-alive, the same silence is cut by nginx.
  const cut = await proxied(t, {}, shortTimeout)
  cut.model.on('stall behind nginx', stall)
  const seen: SseEvent[] = []
  const outcome = await readSse(await post(cut.proxy.base, '/api/execute/stream', { prompt: 'stall behind nginx' }), e => seen.push(e)).then(() => 'ended', () => 'broken')
  t.equal(outcome, 'broken', 'nginx closed the response mid-stream')
  t.ok(seen.some(e => e.event === 'text'), 'after the first text')
  t.notOk(seen.some(e => e.event === 'result'), 'without a result')
  t.match(cut.proxy.stderr(), /upstream timed out/, 'nginx says why')
  t.ok(await eventually(() => pidsInDir(cut.box.work).length === 0, 10_000), 'the server ended the cut run\'s processes')
})

/** The client address the server logs for a GET sent through nginx from `localAddress` with a made-up X-Forwarded-For. */
async function loggedClient (t: T, trustProxy: string | undefined, localAddress: string): Promise<unknown> {
  const { server, proxy } = await proxied(t, trustProxy !== undefined ? { TRUST_PROXY: trustProxy } : {})
  const path = `/health?probe=${encodeURIComponent(trustProxy ?? 'unset')}`
  const status = await new Promise<number | undefined>((resolve, reject) => {
    request(`${proxy.base}${path}`, { localAddress, headers: { 'x-forwarded-for': '203.0.113.7' } }, res => {
      res.resume()
      res.on('end', () => resolve(res.statusCode))
    }).on('error', reject).end()
  })
  if (status !== 200) throw new Error(`GET ${path} through nginx: ${status}`)
  let client: unknown
  await eventually(() => {
    for (const line of server.output().split('\n')) {
      try {
        const log = JSON.parse(line)
        if (log.req?.url === path) client = log.req.remoteAddress
      } catch {
        // Not a JSON log line.
      }
    }
    return client !== undefined
  })
  return client
}

test('the client address behind nginx: X-Forwarded-For is believed exactly as far as TRUST_PROXY says', { skip }, async t => {
  t.equal(await loggedClient(t, '127.0.0.1', '127.0.0.1'), '203.0.113.7',
    'TRUST_PROXY=127.0.0.1: the server walks back over nginx and the (trusted) 127.0.0.1 client to the address before them')
  t.equal(await loggedClient(t, undefined, '127.0.0.1'), '127.0.0.1',
    'TRUST_PROXY unset: the server logs the socket peer, nginx')
  t.equal(await loggedClient(t, '127.0.0.1', '127.0.0.2'), '127.0.0.2',
    'a client nginx does not trust: the server logs the peer nginx saw, never the address the client made up')
  // Fastify ignores bare numbers; parseTrustProxy turns a count into "trust the nearest N hops".
  t.equal(await loggedClient(t, '1', '127.0.0.2'), '127.0.0.2',
    'TRUST_PROXY=1: the server believes nginx (one hop) and logs the address nginx saw, not the made-up one')
})

test('a client that disconnects through nginx cancels the run and ends its processes', { skip }, async t => {
  const { model, server, proxy } = await proxied(t, { TRUST_PROXY: '127.0.0.1' })
  model.on('sleep behind nginx', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3611"' } }, { text: 'done' }])
  const client = new AbortController()
  const res = await post(proxy.base, '/api/execute/stream', { prompt: 'sleep behind nginx', allowed_tools: ['Bash(sh *)'] }, client.signal)
  let runId: string | undefined
  const reading = readSse(res, e => { if (e.event === 'run') runId = JSON.parse(e.data).run_id }).catch(() => undefined)
  t.ok(await eventually(() => pidsMatching('sleep 3611').length > 0, 15_000), 'the run\'s Bash command is running')
  client.abort()
  await reading
  t.ok(await eventually(() => pidsMatching('sleep 3611').length === 0, 10_000), 'the sleep is gone within 10 s')
  t.ok(await eventually(async () => {
    const run = await (await fetch(`${server.base}/api/runs/${runId}`, { headers: auth })).json() as { status: string }
    return run.status === 'cancelled'
  }), 'the run is cancelled')
  // Logged with the status already sent (200), once nginx has ended the request and its upstream.
  t.ok(await eventually(() => /"POST \/api\/execute\/stream HTTP\/1\.1" 200 /.test(proxy.accessLog())), 'nginx ended the request when its client left')
})

test('no nginx process started by this file survives it', { skip }, async t => {
  const { proxy } = await proxied(t, {})
  t.equal((await fetch(`${proxy.base}/health`)).status, 200)
  await proxy.stop()
  t.ok(started.size >= 2, `nginx masters and workers were tracked (${started.size})`)
  t.same(alive(started), [], 'every nginx master and worker has exited')
  t.same(pidsMatching('sleep 3611'), [], 'no sleep of a run is left')
})

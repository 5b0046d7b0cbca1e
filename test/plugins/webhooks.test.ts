import { test } from 'tap'
import { createHmac } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { auth, build, eventually, sandbox } from '../helper.js'

const SECRET = 'whsec-test-0123456789'

interface Received { at: number, method: string, url: string, headers: IncomingHttpHeaders, body: string }

interface Receiver {
  url: string
  host: string
  received: Received[]
  /** Status codes to answer, in order; 200 once they run out. */
  script: number[]
}

/** A webhook receiver on 127.0.0.1 that records every request and answers by its script. */
async function receiver (t: { teardown: (fn: () => unknown) => void }): Promise<Receiver> {
  const r: Receiver = { url: '', host: '', received: [], script: [] }
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      r.received.push({ at: Date.now(), method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') })
      res.writeHead(r.script.shift() ?? 200, { 'content-type': 'text/plain' }).end('ok')
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  const { port } = server.address() as AddressInfo
  r.host = `127.0.0.1:${port}`
  r.url = `http://${r.host}`
  return r
}

/** A port nothing listens on. */
async function deadPort (): Promise<number> {
  const s = createServer()
  await new Promise<void>(resolve => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address() as AddressInfo
  await new Promise(resolve => s.close(resolve))
  return port
}

const hmac = (body: string) => 'sha256=' + createHmac('sha256', SECRET).update(body).digest('hex')

test('webhooks: signed, timestamped, retried with backoff, every attempt recorded', async t => {
  const hook = await receiver(t)
  const dead = await deadPort()
  const { app, model } = await build(t, {
    env: {
      WEBHOOK_ALLOWED_HOSTS: `${hook.host},127.0.0.1:${dead}`,
      WEBHOOK_SECRET: SECRET,
      WEBHOOK_BACKOFF_MS: '100',
      WEBHOOK_MAX_ATTEMPTS: '4'
    }
  })
  const runDeliveries = async (id: string) => (await app.inject({ url: `/api/runs/${id}`, headers: auth })).json().webhook

  await t.test('retried after 500s, then delivered once 200', async t => {
    model.on('report back', [{ text: 'Reported.' }])
    hook.script = [500, 500, 200]
    const url = `${hook.url}/hooks/claude?team=a`
    const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'report back', webhook_url: url } })
    t.equal(res.statusCode, 200)
    const result = res.json()
    t.equal(result.success, true, result.error)
    const sentAt = Date.now()

    t.ok(await eventually(() => hook.received.length >= 3, 10_000), 'three attempts arrived')
    await new Promise(resolve => setTimeout(resolve, 500))
    t.equal(hook.received.length, 3, 'and no more after the 200')
    const [first, second, third] = hook.received as [Received, Received, Received]
    for (const r of hook.received) {
      t.equal(r.method, 'POST')
      t.equal(r.url, '/hooks/claude?team=a', 'to the path and query given')
      t.match(r.headers['content-type'], /^application\/json/)
      t.equal(r.headers['x-signature-256'], hmac(r.body), 'X-Signature-256 is the HMAC-SHA256 of the exact body')
    }
    t.equal(second.body, first.body, 'a retry sends the same body')
    t.equal(third.body, first.body)
    t.equal(third.headers['x-signature-256'], first.headers['x-signature-256'])
    t.not(first.headers['x-signature-256'], createHmac('sha256', 'another secret').update(first.body).digest('hex'), 'a different secret does not verify')

    const body = JSON.parse(first.body)
    t.match(body.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, 'timestamp is ISO 8601 UTC')
    t.equal(new Date(body.timestamp).toISOString(), body.timestamp)
    t.ok(Math.abs(Date.parse(body.timestamp) - sentAt) < 60_000, 'and within a minute of now')
    t.equal(first.headers['x-webhook-timestamp'], String(Math.floor(Date.parse(body.timestamp) / 1000)), 'X-Webhook-Timestamp is the same instant in seconds')
    t.equal(body.event, 'run.finished')
    t.match(body.delivery_id, /^[0-9a-f-]{36}$/, 'a delivery id receivers can deduplicate by')
    t.equal(body.run.id, result.run_id)
    t.equal(body.run.status, 'succeeded')
    t.equal(body.run.success, true)
    t.equal(body.run.output, 'Reported.')
    t.equal(body.run.session_id, result.session_id)
    t.equal(body.run.key_name, 'default')
    t.equal(body.run.url, `/api/runs/${result.run_id}`)
    t.equal(body.run.total_cost_usd, result.total_cost_usd)

    const gap1 = second.at - first.at
    const gap2 = third.at - second.at
    t.ok(gap1 >= 95 && gap1 < 2000, `first retry after ~100 ms (${gap1} ms)`)
    t.ok(gap2 >= 195 && gap2 < 3000, `second retry after ~200 ms (${gap2} ms)`)

    let webhook: any
    t.ok(await eventually(async () => { webhook = await runDeliveries(result.run_id); return webhook.deliveries.length === 3 }), 'three deliveries recorded')
    t.equal(webhook.url, url)
    t.same(webhook.deliveries.map((d: any) => d.status_code), [500, 500, 200])
    t.same(webhook.deliveries.map((d: any) => d.attempt), [1, 2, 3])
    t.match(webhook.deliveries[0].error, /500/, 'a failed attempt says why')
    t.equal(webhook.deliveries[2].error, null)
    for (const d of webhook.deliveries) {
      t.ok(Number.isInteger(d.duration_ms) && d.duration_ms >= 0)
      t.ok(Math.abs(Date.parse(d.attempted_at) - sentAt) < 60_000, 'attempted_at is a real time')
    }
  })

  await t.test('a 400 is final: tried once', async t => {
    hook.received.length = 0
    hook.script = [400]
    const run = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'refused hook', webhook_url: `${hook.url}/bad` } })).json()
    t.ok(await eventually(() => hook.received.length >= 1), 'delivered')
    await new Promise(resolve => setTimeout(resolve, 800))
    t.equal(hook.received.length, 1, 'not retried')
    const webhook = await runDeliveries(run.run_id)
    t.same(webhook.deliveries.map((d: any) => d.status_code), [400])
  })

  await t.test('a failed run is reported too', async t => {
    hook.received.length = 0
    hook.script = []
    model.on('break down', [{ error: 500 }])
    const run = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'break down', webhook_url: hook.url + '/' } })).json()
    t.equal(run.status, 'failed')
    t.ok(await eventually(() => hook.received.length >= 1))
    const body = JSON.parse(hook.received[0]!.body)
    t.equal(body.run.status, 'failed')
    t.equal(body.run.success, false)
    t.equal(body.run.error_code, 'api_error')
  })

  await t.test('runs of POST /api/runs deliver as well', async t => {
    hook.received.length = 0
    hook.script = []
    const res = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'background job', webhook_url: hook.url + '/bg' } })
    t.equal(res.statusCode, 202)
    t.same(res.json().webhook, { url: hook.url + '/bg', deliveries: [] }, 'the run shows its webhook at once')
    t.ok(await eventually(() => hook.received.length >= 1, 15_000))
    t.equal(JSON.parse(hook.received[0]!.body).run.id, res.json().id)
  })

  await t.test('network errors are retried up to WEBHOOK_MAX_ATTEMPTS', async t => {
    const run = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'nobody listens', webhook_url: `http://127.0.0.1:${dead}/x` } })).json()
    let webhook: any
    t.ok(await eventually(async () => { webhook = await runDeliveries(run.run_id); return webhook.deliveries.length >= 4 }, 10_000), 'four attempts')
    await new Promise(resolve => setTimeout(resolve, 1000))
    webhook = await runDeliveries(run.run_id)
    t.equal(webhook.deliveries.length, 4, 'then it gives up')
    t.same(webhook.deliveries.map((d: any) => d.status_code), [null, null, null, null])
    for (const d of webhook.deliveries) t.ok(typeof d.error === 'string' && d.error.length > 0, `error recorded: ${d.error}`)
  })

  await t.test('a host not allowed: 403 and nothing runs', async t => {
    const before = model.calls.length
    const count = async () => (await app.inject({ url: '/api/runs?limit=100', headers: auth })).json().runs.length
    const runsBefore = await count()
    for (const url of ['http://example.com/hook', 'http://127.0.0.1:1/hook', `http://127.0.0.1.evil.example:${hook.host.split(':')[1]!}/`, `http://${hook.host}@example.com/`, 'http://localhost/hook']) {
      for (const path of ['/api/execute', '/api/runs', '/api/execute/stream']) {
        const res = await app.inject({ method: 'POST', url: path, headers: auth, payload: { prompt: 'sneaky', webhook_url: url } })
        t.equal(res.statusCode, 403, `${path} with ${url}`)
        t.equal(res.json().code, 'webhook_host_forbidden')
        t.match(res.headers['content-type'], /^application\/problem\+json/)
      }
    }
    const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'sneaky', webhook_url: 'http://example.com/hook' } })
    t.same(res.json().errors, [{ path: '/webhook_url', message: 'host not allowed' }])
    t.match(res.json().detail, /example\.com/)
    t.equal(model.calls.length, before, 'no call reached the model')
    t.equal(await count(), runsBefore, 'no run was recorded')
    const bad = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'x', webhook_url: 'ftp://example.com/' } })
    t.equal(bad.statusCode, 400, 'only http(s) URLs')
  })
})

test('a webhook_url that passes the uri format but is no URL is a 400, not a 500', async t => {
  const hook = await receiver(t)
  const { app, model } = await build(t, { env: { WEBHOOK_ALLOWED_HOSTS: hook.host, WEBHOOK_SECRET: SECRET } })
  for (const url of [`http://${hook.host}.evil.example/`, 'http://127.0.0.1:99999/']) {
    const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'odd url', webhook_url: url } })
    t.equal(res.statusCode, 400, url)
    t.equal(res.json().code, 'invalid_request')
    t.same(res.json().errors?.map((e: { path: string }) => e.path), ['/webhook_url'])
  }
  t.equal(model.calls.length, 0)
})

test('without WEBHOOK_ALLOWED_HOSTS every webhook_url is refused', async t => {
  const hook = await receiver(t)
  const { app, model } = await build(t, { env: { WEBHOOK_SECRET: SECRET } })
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hook me', webhook_url: hook.url } })
  t.equal(res.statusCode, 403)
  t.equal(res.json().code, 'webhook_host_forbidden')
  t.match(res.json().detail, /WEBHOOK_ALLOWED_HOSTS/, 'says how to enable webhooks')
  t.equal(model.calls.length, 0, 'nothing ran')
  t.equal((await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'no hook' } })).json().success, true, 'runs without a webhook go on')
  await new Promise(resolve => setTimeout(resolve, 200))
  t.equal(hook.received.length, 0)
})

test('WEBHOOK_ALLOWED_HOSTS without WEBHOOK_SECRET: the app refuses to start', async t => {
  const box = sandbox(t)
  await t.rejects(build(t, { box, env: { WEBHOOK_ALLOWED_HOSTS: 'hooks.example.com' } }), /WEBHOOK_SECRET/)
  await t.rejects(build(t, { box, env: { WEBHOOK_ALLOWED_HOSTS: 'hooks.example.com', WEBHOOK_SECRET: ' ' } }), /WEBHOOK_SECRET/, 'a blank secret counts as none')
})

test('an allowed hostname without a port does not admit its other ports', async t => {
  const hook = await receiver(t)
  const { app, model } = await build(t, { env: { WEBHOOK_ALLOWED_HOSTS: '127.0.0.1', WEBHOOK_SECRET: SECRET } })
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'any port', webhook_url: hook.url } })
  t.equal(res.statusCode, 403, `${hook.url} is refused: the entry allows 127.0.0.1's default port only`)
  t.equal(res.json().code, 'webhook_host_forbidden')
  t.notOk(model.calls.some(c => c.prompt === 'any port'))
  t.equal(hook.received.length, 0)
})

test('WEBHOOK_ALLOWED_HOSTS: a bare host allows only the default port; a URL with credentials is refused', async t => {
  const { app, model } = await build(t, { env: { WEBHOOK_ALLOWED_HOSTS: 'hooks.example.com,127.0.0.1:8443', WEBHOOK_SECRET: SECRET } })
  const start = async (url: string) => await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'port check', webhook_url: url } })
  t.equal((await start('http://hooks.example.com:6379/')).statusCode, 403, 'another port of a bare host is refused (no SSRF to its other services)')
  t.equal((await start('http://127.0.0.1:8444/')).statusCode, 403, 'a host:port entry allows only that port')
  const creds = await start('http://user:pass@hooks.example.com/hook')
  t.equal(creds.statusCode, 400, 'credentials in the URL: 400')
  t.equal(creds.json().errors[0].path, '/webhook_url')
  t.notOk(model.calls.some(c => c.prompt === 'port check'), 'none of them ran')
})

import { test } from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { auth, eventually, fakeModel, pidsInDir, pidsMatching, readSse, sandbox, startServer, testEnv } from './helper.js'

const json = { ...auth, 'content-type': 'application/json' }
const post = async (base: string, path: string, body: unknown) =>
  await fetch(`${base}${path}`, { method: 'POST', headers: json, body: JSON.stringify(body) })

test('the server process serves, and on SIGTERM ends every run\'s tree and exits 0', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('sleep in the server', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3604"' } }, { text: 'woke' }])
  const server = await startServer(t, testEnv(box, model))
  const health = await (await fetch(`${server.base}/health`)).json() as { status: string }
  t.equal(health.status, 'healthy')

  const pending = post(server.base, '/api/execute', { prompt: 'sleep in the server', allowed_tools: ['Bash(sh *)'] })
  t.ok(await eventually(() => pidsMatching('sleep 3604').length > 0, 15_000), 'the run\'s Bash command is running')
  server.child.kill('SIGTERM')
  const body = await (await pending).json() as { status: string, error: string }
  t.equal(body.status, 'cancelled', 'the client gets its result: cancelled by the shutdown')
  t.equal(await server.exited, 0, 'clean exit')
  t.same(pidsMatching('sleep 3604'), [], 'no sleep left')
  t.same(pidsInDir(box.work), [], 'no process of the run left')
  t.notMatch(server.output(), /"level":50/, 'no error logged')
})

test('kill -9 mid-run: on restart the run is interrupted, its Bash child is gone, the queued runs run', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('sleep then die', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3606"' } }, { text: 'woke' }])
  const env = testEnv(box, model, { MAX_CONCURRENT_RUNS: '1' })
  const one = await startServer(t, env)
  const a = await (await post(one.base, '/api/runs', { prompt: 'sleep then die', allowed_tools: ['Bash(sh *)'] })).json() as any
  const b = await (await post(one.base, '/api/runs', { prompt: 'queued one' })).json() as any
  const c = await (await post(one.base, '/api/runs', { prompt: 'queued two', env_vars: { GREETING: 'kept across the restart' } })).json() as any
  t.ok(await eventually(() => pidsMatching('sleep 3606').length > 0, 15_000), 'the first run is in its Bash sleep')
  const waiting = post(one.base, '/api/execute', { prompt: 'a client waits for me' }).catch(() => null)
  t.ok(await eventually(async () => {
    const q = await (await fetch(`${one.base}/api/runs?status=queued`, { headers: auth })).json() as any
    return q.runs.length === 3
  }), 'three runs wait in the queue')

  one.child.kill('SIGKILL')
  await one.exited
  await waiting
  t.ok(pidsMatching('sleep 3606').length > 0, 'kill -9 left the agent\'s sleep behind (until the restart)')

  const two = await startServer(t, env)
  t.ok(await eventually(() => pidsMatching('sleep 3606').length === 0, 10_000), 'the restart killed the leftover tree')
  // Recovery runs once the port is bound, so it may still be going when the server says it listens.
  let ra: any
  t.ok(await eventually(async () => {
    ra = await (await fetch(`${two.base}/api/runs/${a.id}`, { headers: auth })).json()
    return ra.status !== 'running'
  }, 10_000), 'recovery has dealt with the run')
  t.equal(ra.status, 'interrupted')
  t.equal(ra.result.error_code, 'interrupted')
  const events = (await readSse(await fetch(`${two.base}/api/runs/${a.id}/events`, { headers: auth }))).events
  t.equal(events[0]!.event, 'run', 'its log is kept')
  t.ok(events.some(e => e.event === 'message'), 'with what it printed before the crash')
  t.equal(events.at(-1)!.event, 'result', 'and now ends with a result')
  const ids = events.map(e => e.id)
  t.same(ids.slice(0, -1), ids.slice(0, -1).map((_, i) => i + 1), 'the stored events keep their ids, without gaps')
  t.ok(ids.at(-1)! > ids.at(-2)! + 1000, 'the result is numbered past every id the crash may have lost (a client may have seen those)')

  for (const run of [b, c]) {
    const rest = (await readSse(await fetch(`${two.base}/api/runs/${run.id}/events`, { headers: auth }))).events
    const result = JSON.parse(rest.at(-1)!.data)
    t.equal(result.status, 'succeeded', `${run.request.prompt}: ran after the restart`)
  }
  t.ok(model.calls.some(x => x.prompt === 'queued two'), 'the queued run reached the model')
  const listed = await (await fetch(`${two.base}/api/runs?status=cancelled`, { headers: auth })).json() as any
  t.ok(listed.runs.some((r: any) => r.request.prompt === 'a client waits for me'), 'a queued /api/execute run whose client is gone is cancelled, not run')
  two.child.kill('SIGTERM')
  t.equal(await two.exited, 0)
})

test('SIGTERM drains: 503 for new runs, running runs finish within the grace, the rest are cancelled, queued runs wait for the next start', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('short', [{ text: ['short', 'short done'], gapMs: 1000 }])
  model.on('too long', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3607"' } }, { text: 'woke' }])
  const env = testEnv(box, model, { MAX_CONCURRENT_RUNS: '2', SHUTDOWN_GRACE_S: '4' })
  const one = await startServer(t, env)
  const shortRun = await (await post(one.base, '/api/runs', { prompt: 'short' })).json() as any
  const longRun = await (await post(one.base, '/api/runs', { prompt: 'too long', allowed_tools: ['Bash(sh *)'] })).json() as any
  const queued = await (await post(one.base, '/api/runs', { prompt: 'after the restart' })).json() as any
  t.ok(await eventually(() => pidsMatching('sleep 3607').length > 0, 15_000), 'the long run is in its sleep')
  const follower = readSse(await fetch(`${one.base}/api/runs/${shortRun.id}/events`, { headers: auth }))

  one.child.kill('SIGTERM')
  await new Promise(resolve => setTimeout(resolve, 300))
  const refused = await post(one.base, '/api/runs', { prompt: 'too late' })
  t.equal(refused.status, 503)
  t.equal((await refused.json() as any).code, 'shutting_down')
  const health = await fetch(`${one.base}/health`)
  t.equal(health.status, 503)
  t.equal((await health.json() as any).status, 'shutting_down')

  const { events } = await follower
  t.equal(JSON.parse(events.at(-1)!.data).status, 'succeeded', 'the short run finished within the grace')
  t.equal(await one.exited, 0)
  t.same(pidsMatching('sleep 3607'), [], 'the long run was cancelled at the end of the grace, its tree gone')

  const two = await startServer(t, env)
  const long = await (await fetch(`${two.base}/api/runs/${longRun.id}`, { headers: auth })).json() as any
  t.equal(long.status, 'cancelled')
  t.match(long.result.error, /shutting down/)
  const rest = (await readSse(await fetch(`${two.base}/api/runs/${queued.id}/events`, { headers: auth }))).events
  t.equal(JSON.parse(rest.at(-1)!.data).status, 'succeeded', 'the queued run ran at the next start')
  two.child.kill('SIGTERM')
  await two.exited
})

test('a run interrupted by kill -9 still gets its run.finished webhook after the restart', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const received: string[] = []
  const hook = createServer((req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => { body += c.toString() })
    req.on('end', () => { received.push(body); res.end('ok') })
  })
  await new Promise<void>(resolve => hook.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hook.closeAllConnections(); hook.close() })
  const hookHost = `127.0.0.1:${(hook.address() as AddressInfo).port}`
  model.on('interrupt my webhook', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3608"' } }, { text: 'woke' }])
  const env = testEnv(box, model, { WEBHOOK_ALLOWED_HOSTS: hookHost, WEBHOOK_SECRET: 'whsec-test-0123456789', WEBHOOK_BACKOFF_MS: '100' })
  const one = await startServer(t, env)
  const run = await (await post(one.base, '/api/runs', { prompt: 'interrupt my webhook', allowed_tools: ['Bash(sh *)'], webhook_url: `http://${hookHost}/hook` })).json() as any
  t.ok(await eventually(() => pidsMatching('sleep 3608').length > 0, 15_000), 'the run is in its sleep')
  one.child.kill('SIGKILL')
  await one.exited
  await startServer(t, env)
  t.ok(await eventually(() => received.length > 0, 15_000), 'the webhook arrived after the restart')
  const body = JSON.parse(received[0]!)
  t.equal(body.event, 'run.finished')
  t.equal(body.run.id, run.id)
  t.equal(body.run.status, 'interrupted', 'saying the run was interrupted')
  t.ok(await eventually(() => pidsMatching('sleep 3608').length === 0, 10_000))
})

test('a webhook retry schedule survives kill -9: the next attempt comes from the restarted server, same body', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const received: Array<{ at: number, body: string }> = []
  const answers = [503]
  const hook = createServer((req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => { body += c.toString() })
    req.on('end', () => { received.push({ at: Date.now(), body }); res.writeHead(answers.shift() ?? 200).end('ok') })
  })
  await new Promise<void>(resolve => hook.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hook.closeAllConnections(); hook.close() })
  const hookHost = `127.0.0.1:${(hook.address() as AddressInfo).port}`
  model.on('retry my webhook', [{ text: 'Done.' }])
  // The first retry is due 4 s after the first attempt: long enough to kill the server first.
  const env = testEnv(box, model, { WEBHOOK_ALLOWED_HOSTS: hookHost, WEBHOOK_SECRET: 'whsec-test-0123456789', WEBHOOK_BACKOFF_MS: '4000' })
  const one = await startServer(t, env)
  const result = await (await post(one.base, '/api/execute', { prompt: 'retry my webhook', webhook_url: `http://${hookHost}/hook` })).json() as any
  t.equal(result.status, 'succeeded')
  t.ok(await eventually(() => received.length === 1, 10_000), 'the first attempt arrived (and got a 503)')
  await new Promise(resolve => setTimeout(resolve, 300))
  one.child.kill('SIGKILL')
  await one.exited
  t.equal(received.length, 1, 'no second attempt before the crash')
  const two = await startServer(t, env)
  t.ok(await eventually(() => received.length >= 2, 15_000), 'the retry came after the restart')
  t.equal(received[1]!.body, received[0]!.body, 'the same body (same delivery_id)')
  t.ok(received[1]!.at - received[0]!.at >= 3500, `at its scheduled time (${received[1]!.at - received[0]!.at} ms after the first)`)
  await new Promise(resolve => setTimeout(resolve, 500))
  t.equal(received.length, 2, 'delivered once 200, no more')
  let webhook: any
  t.ok(await eventually(async () => {
    webhook = (await (await fetch(`${two.base}/api/runs/${result.run_id}`, { headers: auth })).json() as any).webhook
    return webhook.deliveries.length === 2
  }), 'both attempts are recorded on the run')
  t.same(webhook.deliveries.map((d: any) => d.status_code), [503, 200])
  two.child.kill('SIGTERM')
  await two.exited
})

test('kill -9 mid-stream: every event a client received is in the log after the restart, and reconnecting with its last id gets the rest and the result', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const words = Array.from({ length: 400 }, (_, i) => `t${i} `)
  model.on('chatty then crash', [{ text: words, deltas: true, gapMs: 5 }])
  const env = testEnv(box, model)
  const one = await startServer(t, env)
  const run = await (await post(one.base, '/api/runs', { prompt: 'chatty then crash', include_partial_messages: true })).json() as any
  // Follow live; kill the server the moment the 60th event arrives.
  const seen: Array<{ id: number, event: string, data: string }> = []
  const stream = await fetch(`${one.base}/api/runs/${run.id}/events`, { headers: auth })
  await readSse(stream, e => {
    seen.push(e)
    if (seen.length === 60) one.child.kill('SIGKILL')
  }).catch(() => null)
  await one.exited
  t.ok(seen.length >= 60, `the client saw ${seen.length} events before the crash`)

  const two = await startServer(t, env)
  let ended = false
  t.ok(await eventually(async () => {
    const r = await (await fetch(`${two.base}/api/runs/${run.id}`, { headers: auth })).json() as any
    ended = r.status !== 'running'
    return ended
  }, 15_000), 'recovery ended the run')
  const log = (await readSse(await fetch(`${two.base}/api/runs/${run.id}/events`, { headers: auth }))).events
  const byId = new Map(log.map(e => [e.id, e]))
  const missing = seen.filter(e => byId.get(e.id)?.data !== e.data)
  t.same(missing.map(e => e.id), [], 'every event the client received is in the log, under the same id')
  t.equal(new Set(log.map(e => e.id)).size, log.length, 'no id twice')

  const last = seen.at(-1)!.id
  const rest = (await readSse(await fetch(`${two.base}/api/runs/${run.id}/events`, { headers: { ...auth, 'last-event-id': String(last) } }))).events
  t.ok(rest.length > 0 && rest.every(e => e.id > last), 'reconnecting with the last id seen: only later events')
  t.equal(rest.at(-1)?.event, 'result', 'ending with the result')
  t.equal(JSON.parse(rest.at(-1)!.data).status, 'interrupted')
  two.child.kill('SIGTERM')
  await two.exited
})

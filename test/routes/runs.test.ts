import Fastify from 'fastify'
import { test } from 'tap'
import buildApp, { serverOptions } from '../../src/app.js'
import { auth, build, eventually, inCluster, listen, pidsMatching, readSse, testEnv, type SseEvent } from '../helper.js'

const json = { ...auth, 'content-type': 'application/json' }

async function waitForEnd (base: string, id: string, ms = 30_000): Promise<any> {
  let run: any
  await eventually(async () => {
    run = await (await fetch(`${base}/api/runs/${id}`, { headers: auth })).json()
    return run.result !== null
  }, ms)
  return run
}

test('POST /api/runs answers 202 at once; the run goes on and its result is kept', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('slow answer', [{ text: ['working', 'finished'], gapMs: 800 }])
  const res = await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'slow answer' }) })
  t.equal(res.status, 202)
  const run = await res.json() as any
  t.equal(res.headers.get('location'), `/api/runs/${run.id}`)
  t.match(run.status, /^(queued|running)$/)
  t.equal(run.result, null)
  t.equal(run.events_url, `/api/runs/${run.id}/events`)
  t.equal(run.request.prompt, 'slow answer')

  const done = await waitForEnd(base, run.id)
  t.equal(done.status, 'succeeded')
  t.equal(done.result.output, 'finished')
  t.equal(done.result.run_id, run.id)
  t.ok(done.started_at !== null && done.ended_at !== null)
  t.equal(done.queue_position, null)
})

test('a queued run always has its place: one that has its slot and is starting is next (1)', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('placed', [{ text: 'ok' }])
  const res = await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'placed' }) })
  t.equal(res.status, 202)
  const run = await res.json() as any
  // On an idle server the run has its slot at once; its CLI may or may not be up yet.
  t.same({ status: run.status, queue_position: run.queue_position }, run.status === 'queued' ? { status: 'queued', queue_position: 1 } : { status: 'running', queue_position: null })
  t.equal((await waitForEnd(base, run.id)).status, 'succeeded')
})

test('replay of a finished run from every position: each event exactly once, in order', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('many pieces', [{ text: ['a', 'b', 'c', 'd'] }])
  const run = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'many pieces' }) })).json() as any
  await waitForEnd(base, run.id)
  const all = (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth }))).events
  const n = all.length
  t.ok(n >= 8, `a full log (${n} events)`)
  t.same(all.map(e => e.id), Array.from({ length: n }, (_, i) => i + 1))
  t.equal(all[0]!.event, 'run')
  t.equal(all.at(-1)!.event, 'result')
  for (let k = 0; k <= n; k++) {
    const viaQuery = (await readSse(await fetch(`${base}/api/runs/${run.id}/events?after=${k}`, { headers: auth }))).events
    const viaHeader = (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: { ...auth, 'last-event-id': String(k) } }))).events
    const want = all.slice(k).map(e => [e.id, e.event, e.data])
    t.same(viaQuery.map(e => [e.id, e.event, e.data]), want, `after=${k}`)
    t.same(viaHeader.map(e => [e.id, e.event, e.data]), want, `Last-Event-ID: ${k}`)
  }
})

test('reconnecting mid-run with Last-Event-ID gets the rest exactly once', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('drip', [{ text: ['one', 'two', 'three', 'four'], gapMs: 600 }])
  const run = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'drip' }) })).json() as any

  // First connection: read until the first text event, then drop it.
  const abort = new AbortController()
  const first: SseEvent[] = []
  const res = await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth, signal: abort.signal })
  await readSse(res, e => {
    first.push(e)
    if (e.event === 'text') abort.abort()
  }).catch(() => {})
  const last = first.at(-1)!
  t.equal(last.event, 'text', 'disconnected in the middle of the run')
  const mid = await (await fetch(`${base}/api/runs/${run.id}`, { headers: auth })).json() as any
  t.equal(mid.status, 'running', 'the run goes on without a listener')

  const rest = (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: { ...auth, 'last-event-id': String(last.id) } }))).events
  const seen = [...first, ...rest]
  t.same(seen.map(e => e.id), Array.from({ length: seen.length }, (_, i) => i + 1), 'no gap, no duplicate')
  t.equal(rest.at(-1)!.event, 'result')
  t.same(seen.filter(e => e.event === 'text').map(e => JSON.parse(e.data).text), ['one', 'two', 'three', 'four'])
  const replay = (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth }))).events
  t.same(seen.map(e => [e.id, e.event, e.data]), replay.map(e => [e.id, e.event, e.data]), 'what the two connections saw is the log')
})

test('many listeners on one live run all get every event', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('for everyone', [{ text: ['x', 'y', 'z'], gapMs: 300 }])
  const run = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'for everyone' }) })).json() as any
  const listeners = await Promise.all(Array.from({ length: 25 }, async () =>
    (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth }))).events.map(e => `${e.id}:${e.event}`)))
  const reference = listeners[0]!
  t.equal(reference.at(-1)?.endsWith(':result'), true)
  for (const l of listeners) t.same(l, reference)
})

test('50 runs through a queue of concurrency 2 all finish; none is lost', async t => {
  const { app, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '2', MAX_QUEUED_RUNS: '64' } })
  const base = await listen(app)
  model.on(/^job \d+$/, call => ({ text: `did ${call.prompt}` }))
  const ids: string[] = []
  for (let i = 0; i < 50; i++) {
    const res = await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: `job ${i}` }) })
    t.equal(res.status, 202)
    ids.push((await res.json() as any).id)
  }
  const health = await (await fetch(`${base}/health`)).json() as any
  t.ok(health.runs.active <= 2, `never more than 2 at once (${health.runs.active})`)
  const queued = await (await fetch(`${base}/api/runs/${ids[49]}`, { headers: auth })).json() as any
  t.equal(queued.status, 'queued')
  t.ok(queued.queue_position >= 1, `the last one has a queue position (${queued.queue_position})`)
  const results = await Promise.all(ids.map(async id => await waitForEnd(base, id, 120_000)))
  t.same(results.map(r => r.status), ids.map(() => 'succeeded'), 'all 50 succeeded')
  t.same(results.map(r => r.result.output), ids.map((_, i) => `did job ${i}`), 'each got its own answer')
  // FIFO with two slots: each job starts at its place, give or take its slot neighbour. The order
  // the server started them (started_at), not the order their CLIs reached the model: a CLI slow to
  // boot on a loaded machine may reach it after a neighbour's whole run and the next one's start.
  const order = results.map((r, job) => ({ job, at: Date.parse(r.started_at) })).sort((a, b) => a.at - b.at || a.job - b.job).map(s => s.job)
  t.ok(order.every((job, place) => Math.abs(job - place) <= 1), `started in FIFO order: ${order.join(',')}`)
  t.equal(model.calls.length, 50, 'each reached the model once')
  const listed = await (await fetch(`${base}/api/runs?status=succeeded&limit=100`, { headers: auth })).json() as any
  t.ok(listed.runs.length >= 50, 'all listed')
})

test('cancel a queued and a running run; cancel is idempotent', async t => {
  const { app, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '1' } })
  const base = await listen(app)
  model.on('sleep for cancel', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3605"' } }, { text: 'woke' }])
  const running = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'sleep for cancel', allowed_tools: ['Bash(sh *)'] }) })).json() as any
  const queued = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'never starts' }) })).json() as any
  t.ok(await eventually(() => pidsMatching('sleep 3605').length > 0, 15_000), 'the running run runs its sleep')
  const q = await (await fetch(`${base}/api/runs/${queued.id}`, { headers: auth })).json() as any
  t.equal(q.status, 'queued')
  t.equal(q.queue_position, 1)

  const cq = await fetch(`${base}/api/runs/${queued.id}/cancel`, { method: 'POST', headers: auth })
  t.equal(cq.status, 200)
  const cqBody = await cq.json() as any
  t.equal(cqBody.status, 'cancelled')
  t.equal(cqBody.result.error_code, 'cancelled')
  t.equal(cqBody.started_at, null, 'it never started')

  const cr = await (await fetch(`${base}/api/runs/${running.id}/cancel`, { method: 'POST', headers: auth })).json() as any
  t.equal(cr.status, 'cancelled')
  t.same(pidsMatching('sleep 3605'), [], 'the running run\'s sleep is gone when cancel answers')
  const again = await fetch(`${base}/api/runs/${running.id}/cancel`, { method: 'POST', headers: auth })
  t.equal(again.status, 200)
  t.equal((await again.json() as any).status, 'cancelled', 'cancelling again changes nothing')
  t.notOk(model.calls.some(c => c.prompt === 'never starts'), 'the cancelled queued run never reached the model')
  const events = (await readSse(await fetch(`${base}/api/runs/${queued.id}/events`, { headers: auth }))).events
  t.same(events.map(e => e.event), ['run', 'result'], 'its log ends with the result')
})

test('runs of /api/execute are recorded; list filters and pages; unknown runs are 404', async t => {
  const { app } = await build(t)
  const base = await listen(app)
  const ids: string[] = []
  let session = ''
  for (let i = 0; i < 5; i++) {
    const r = await (await fetch(`${base}/api/execute`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: `listed ${i}`, ...(session !== '' ? { session_id: session } : {}) }) })).json() as any
    ids.push(r.run_id)
    if (i === 1) session = r.session_id
  }
  const one = await (await fetch(`${base}/api/runs/${ids[0]}`, { headers: auth })).json() as any
  t.equal(one.status, 'succeeded')
  t.equal(one.result.run_id, ids[0])

  const pages: string[] = []
  let cursor: string | null = null
  do {
    const page: any = await (await fetch(`${base}/api/runs?limit=2${cursor !== null ? `&cursor=${cursor}` : ''}`, { headers: auth })).json()
    t.ok(page.runs.length <= 2)
    pages.push(...page.runs.map((r: any) => r.id))
    cursor = page.next_cursor
  } while (cursor !== null)
  t.same(pages, [...ids].reverse(), 'newest first, every run once across pages')

  const bySession = await (await fetch(`${base}/api/runs?session_id=${session}`, { headers: auth })).json() as any
  t.same(bySession.runs.map((r: any) => r.id), [ids[4], ids[3], ids[2], ids[1]], 'filtered by session')
  const failed = await (await fetch(`${base}/api/runs?status=failed`, { headers: auth })).json() as any
  t.same(failed.runs, [])

  const missing = await fetch(`${base}/api/runs/00000000-0000-4000-8000-000000000000`, { headers: auth })
  t.equal(missing.status, 404)
  t.equal((await missing.json() as any).code, 'run_not_found')
  t.equal((await fetch(`${base}/api/runs/nope`, { headers: auth })).status, 400)
  t.equal((await fetch(`${base}/api/runs?status=bogus`, { headers: auth })).status, 400)
  t.equal((await fetch(`${base}/api/runs`)).status, 401)
})

test('leaving a run\'s event stream does not cancel it', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('keep going', [{ text: ['a', 'b'], gapMs: 700 }])
  const run = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'keep going' }) })).json() as any
  const abort = new AbortController()
  await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth, signal: abort.signal }), e => { if (e.event === 'text') abort.abort() }).catch(() => {})
  const done = await waitForEnd(base, run.id)
  t.equal(done.status, 'succeeded')
  t.equal(done.result.output, 'b')
})

test('lists abridge large fields; the run view keeps them whole', async t => {
  const { app } = await build(t)
  const prompt = 'abridge me ' + 'p'.repeat(10_000)
  const schema = { type: 'object', description: 'd'.repeat(60_000), properties: { a: { type: 'string' } } }
  const created = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt, output_schema: schema, model: 'claude-small' } })
  t.equal(created.statusCode, 202)
  const id = created.json().id
  const list = await app.inject({ url: '/api/runs', headers: auth })
  const item = list.json().runs.find((r: any) => r.id === id)
  t.ok(list.body.length < 16 * 1024, `the page is small (${list.body.length} bytes)`)
  t.same(item.abridged.sort(), ['request.output_schema', 'request.prompt'])
  t.equal(item.request.prompt, prompt.slice(0, 2048), 'a long prompt is cut short')
  t.notOk('output_schema' in item.request, 'a large object is left out')
  t.equal(item.request.model, 'claude-small', 'small fields stay')
  const one = (await app.inject({ url: `/api/runs/${id}`, headers: auth })).json()
  t.equal(one.request.prompt, prompt, 'the run view has the prompt whole')
  t.same(one.request.output_schema, schema, 'and the schema')
  t.notOk('abridged' in one)
  await app.inject({ method: 'POST', url: `/api/runs/${id}/cancel`, headers: auth })
})

// In cluster mode (the suite on PostgreSQL) queued runs are the cluster's and are claimed at once: nothing waits for recovery.
test('after a restart, requests about runs wait until the runs a previous process left queued are live again', { skip: inCluster ? 'cluster mode: queued runs are claimable at once' : false }, async t => {
  const first = await build(t, { env: { MAX_CONCURRENT_RUNS: '1' } })
  first.model.on('hold the slot', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3611"' } }, { text: 'woke' }])
  const base = await listen(first.app)
  const holder = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'hold the slot', allowed_tools: ['Bash(sh *)'] }) })).json() as any
  const queued = await (await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'left in the queue' }) })).json() as any
  t.ok(await eventually(() => pidsMatching('sleep 3611').length > 0, 15_000), 'the first run holds the only slot')
  await first.app.close()
  t.same(pidsMatching('sleep 3611'), [], 'the running one was cancelled at shutdown')

  // The next process is listening before it has taken its predecessor's queue back (its recovery
  // runs in an onListen hook, after this one).
  let recover = (): void => {}
  const gate = new Promise<void>(resolve => { recover = resolve })
  const app = Fastify(serverOptions('silent'))
  app.addHook('onListen', async () => { await gate })
  await app.register(buildApp, { env: testEnv(first.box, first.model) })
  t.teardown(async () => { recover(); await app.close() })
  const listening = app.listen({ host: '127.0.0.1', port: 0 })
  await eventually(() => app.server.listening)
  const again = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const follow = fetch(`${again}/api/runs/${queued.id}/events`, { headers: auth })
  const early = await Promise.race([follow.then(() => 'answered'), new Promise(resolve => setTimeout(() => resolve('waiting'), 500))])
  t.equal(early, 'waiting', 'a follower of the queued run waits while recovery is pending')
  recover()
  await listening
  const { events } = await readSse(await follow)
  const result = JSON.parse(events.at(-1)!.data)
  t.equal(result.status, 'succeeded', 'and then follows it to its result')
  t.equal((await (await fetch(`${again}/api/runs/${holder.id}`, { headers: auth })).json() as any).status, 'cancelled')
})

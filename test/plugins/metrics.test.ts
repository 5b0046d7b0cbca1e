import { test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { sha256Hex } from '../../src/auth/keys.js'
import { auth, build, sandbox } from '../helper.js'

const METRICS_TOKEN = 'scrape-token-0123456789abcdef'
const WORKER_KEY = 'cca_worker-0123456789abcdefghijklmnopqrstu'

interface Sample { name: string, labels: Record<string, string>, value: number }

/** The Prometheus text format, as far as a test needs it: `name{a="b",…} value`; `#` lines skipped. */
function parseMetrics (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line)
    if (m === null) throw new Error(`not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\')
    }
    samples.push({ name: m[1]!, labels, value: Number(m[3]) })
  }
  return samples
}

/** The sum of the samples of `name` whose labels include `labels` (0 when there are none yet). */
function sum (samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0)
}

test('/metrics: METRICS_TOKEN or an admin key; anyone else gets 401', async t => {
  const box = sandbox(t)
  const keys = join(box.home, 'keys.json')
  writeFileSync(keys, JSON.stringify({ keys: [{ name: 'worker', key_sha256: sha256Hex(WORKER_KEY), scopes: ['runs:write', 'runs:read'] }] }))
  const { app } = await build(t, { box, env: { METRICS_TOKEN, API_KEYS_FILE: keys } })
  const get = (headers: Record<string, string> = {}) => app.inject({ url: '/metrics', headers })

  const none = await get()
  t.equal(none.statusCode, 401, 'no credentials')
  t.match(none.headers['www-authenticate'], /^Bearer /)
  t.match(none.headers['content-type'], /^application\/problem\+json/)
  t.equal(none.json().code, 'unauthorized')
  t.equal((await get({ authorization: `Bearer ${METRICS_TOKEN}x` })).statusCode, 401, 'a wrong token')
  t.equal((await get({ authorization: `Bearer ${METRICS_TOKEN.slice(0, -1)}` })).statusCode, 401, 'a prefix of the token')
  t.equal((await get({ 'x-api-key': WORKER_KEY })).statusCode, 401, 'a named key without admin')
  t.equal((await get({ authorization: `Bearer ${WORKER_KEY}` })).statusCode, 401, 'the same as a bearer token')

  const byToken = await get({ authorization: `Bearer ${METRICS_TOKEN}` })
  t.equal(byToken.statusCode, 200, 'the metrics token')
  t.match(byToken.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  t.match(byToken.body, /^# HELP ccapi_runs_started_total /m)
  t.match(byToken.body, /^# TYPE ccapi_run_duration_seconds histogram$/m)
  t.ok(parseMetrics(byToken.body).length > 0, 'the text parses')
  t.equal((await get({ 'x-api-key': METRICS_TOKEN })).statusCode, 200, 'the token as X-API-Key too')
  t.equal((await get(auth)).statusCode, 200, 'the admin key (CLAUDE_API_KEY, "default")')
  t.equal((await get({ authorization: `Bearer ${auth['x-api-key']}` })).statusCode, 200, 'the admin key as a bearer token')
  t.equal((await app.inject({ url: '/api/runs', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).statusCode, 401, 'the metrics token is no API key')
})

test('/metrics without METRICS_TOKEN: only admin keys', async t => {
  const { app } = await build(t)
  t.equal((await app.inject({ url: '/metrics' })).statusCode, 401)
  t.equal((await app.inject({ url: '/metrics', headers: { authorization: 'Bearer ' } })).statusCode, 401, 'an empty bearer token')
  t.equal((await app.inject({ url: '/metrics', headers: auth })).statusCode, 200)
})

test('/metrics with ENABLE_AUTH=false is open like the rest', async t => {
  const { app } = await build(t, { env: { ENABLE_AUTH: 'false' } })
  t.equal((await app.inject({ url: '/metrics' })).statusCode, 200)
})

test('counters, histogram and gauges follow the runs', async t => {
  const box = sandbox(t)
  const keys = join(box.home, 'keys.json')
  writeFileSync(keys, JSON.stringify({ keys: [{ name: 'worker', key_sha256: sha256Hex(WORKER_KEY), scopes: ['runs:write', 'runs:read'] }] }))
  const { app, model } = await build(t, { box, env: { METRICS_TOKEN, API_KEYS_FILE: keys } })
  const scrape = async (): Promise<Sample[]> => {
    const res = await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })
    t.equal(res.statusCode, 200)
    return parseMetrics(res.body)
  }
  const exec = async (prompt: string, headers: Record<string, string> = auth) =>
    (await app.inject({ method: 'POST', url: '/api/execute', headers, payload: { prompt } })).json()

  const before = await scrape()
  model.on('fail please', [{ error: 500 }])
  const results = [await exec('first'), await exec('second'), await exec('fail please')]
  t.same(results.map(r => r.status), ['succeeded', 'succeeded', 'failed'])
  t.equal((await exec('as the worker', { 'x-api-key': WORKER_KEY })).status, 'succeeded')
  await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: {} })
  await app.inject({ method: 'POST', url: '/api/execute', payload: { prompt: 'no key' } })
  const after = await scrape()
  const delta = (name: string, labels: Record<string, string> = {}) => sum(after, name, labels) - sum(before, name, labels)

  t.equal(delta('ccapi_runs_started_total', { key: 'default' }), 3, 'three runs started for the key default')
  t.equal(delta('ccapi_runs_started_total', { key: 'worker' }), 1, 'and one for worker')
  t.equal(delta('ccapi_runs_finished_total', { status: 'succeeded', key: 'default' }), 2, 'two succeeded')
  t.equal(delta('ccapi_runs_finished_total', { status: 'failed', key: 'default' }), 1, 'one failed')
  t.equal(delta('ccapi_runs_finished_total', { status: 'succeeded', key: 'worker' }), 1)
  t.equal(delta('ccapi_run_duration_seconds_count'), 4, 'every run\'s duration observed')
  t.equal(delta('ccapi_run_duration_seconds_count', { status: 'failed' }), 1)
  t.ok(delta('ccapi_run_duration_seconds_sum') > 0, 'durations add up to something')
  t.equal(delta('ccapi_run_duration_seconds_bucket', { le: '+Inf' }), 4, 'the +Inf bucket counts them all')

  t.equal(delta('ccapi_http_requests_total', { method: 'POST', route: '/api/execute', status: '200' }), 4, 'the 200s of /api/execute')
  t.equal(delta('ccapi_http_requests_total', { method: 'POST', route: '/api/execute', status: '400' }), 1, 'its 400')
  t.equal(delta('ccapi_http_requests_total', { method: 'POST', route: '/api/execute', status: '401' }), 1, 'its 401')
  t.equal(delta('ccapi_http_requests_total', { method: 'GET', route: '/metrics', status: '200' }), 0, 'scrapes are not counted (nor health checks): they would drown the API\'s traffic')

  t.ok(delta('ccapi_tokens_total', { key: 'default', type: 'input' }) > 0, 'input tokens counted for default')
  t.ok(delta('ccapi_tokens_total', { key: 'default', type: 'output' }) > 0, 'output tokens counted for default')
  t.ok(delta('ccapi_tokens_total', { key: 'worker' }) > 0, 'and for worker')
  const reported = results.reduce((n, r) => n + (r.total_cost_usd ?? 0), 0)
  t.ok(reported > 0, `the CLI reported a cost (${reported})`)
  t.ok(Math.abs(delta('ccapi_cost_usd_total', { key: 'default' }) - reported) < 1e-9, 'ccapi_cost_usd_total is the sum of the runs\' total_cost_usd')
  t.equal(sum(after, 'ccapi_runs_active'), 0, 'no run active')
  t.equal(sum(after, 'ccapi_runs_queued'), 0, 'none queued')
  t.equal(sum(after, 'ccapi_claude_code_available'), 1, 'the CLI is available')
  t.ok(after.some(s => s.name.startsWith('ccapi_process_')), 'process metrics are there too')
})

test('the active and queued gauges show a run while it goes', async t => {
  const { app, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '1', METRICS_TOKEN } })
  model.on('hold', [{ stall: true }])
  const scrape = async () => parseMetrics((await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).body)
  const start = async (prompt: string) => (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt, timeout: 10 } })).json()
  const held = await start('hold on')
  const waiting = await start('waiting')
  await model.nextCall('hold')
  const during = await scrape()
  t.equal(sum(during, 'ccapi_runs_active'), 1, 'one run active')
  t.equal(sum(during, 'ccapi_runs_queued'), 1, 'one queued')
  t.equal(sum(during, 'ccapi_runs_started_total'), 1, 'only the active one has started')
  await app.inject({ method: 'POST', url: `/api/runs/${waiting.id}/cancel`, headers: auth })
  await app.inject({ method: 'POST', url: `/api/runs/${held.id}/cancel`, headers: auth })
  const end = await scrape()
  t.equal(sum(end, 'ccapi_runs_active'), 0)
  t.equal(sum(end, 'ccapi_runs_queued'), 0)
  t.equal(sum(end, 'ccapi_runs_finished_total', { status: 'cancelled' }), 2, 'both counted as cancelled')
})

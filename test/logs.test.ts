import { test } from 'tap'
import Fastify from 'fastify'
import app, { serverOptions } from '../src/app.js'
import { API_KEY, auth, fakeModel, sandbox, testEnv } from './helper.js'

interface LogLine { level: number, msg?: string, reqId?: string, run_id?: string, key_name?: string, request_id?: string, [k: string]: unknown }

/** The app with its log captured as JSON lines, at `level`. */
async function buildLogged (t: { teardown: (fn: () => unknown) => void }, level: string) {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const raw: string[] = []
  const opts = serverOptions(level)
  const stream = { write: (s: string) => { raw.push(s) } }
  const fastify = Fastify({ ...opts, logger: { ...(opts.logger as object), stream } })
  await fastify.register(app, { env: testEnv(box, model, { LOG_LEVEL: level }) })
  await fastify.ready()
  t.teardown(() => fastify.close())
  const lines = (): LogLine[] => raw.join('').split('\n').filter(l => l !== '').map(l => JSON.parse(l) as LogLine)
  return { app: fastify, model, raw, lines }
}

test('every line about a run names the run, the key and the request; one "run finished" line per run', async t => {
  const { app, raw, lines } = await buildLogged(t, 'debug')
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: { authorization: `Bearer ${API_KEY}` }, payload: { prompt: 'log me' } })
  const result = res.json()
  t.equal(result.success, true, result.error)
  const second = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'log me too' } })).json()
  t.equal(second.success, true)
  // A refused run leaves no run lines.
  await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'x', permission_mode: 'bypassPermissions' } })

  const all = lines()
  const incoming = all.filter(l => l.msg === 'incoming request' && (l.req as { url?: string } | undefined)?.url === '/api/execute')
  t.equal(incoming.length, 3)
  const reqId = incoming[0]!.reqId
  t.ok(typeof reqId === 'string' && reqId.length > 0, 'the request has an id')

  const about = all.filter(l => l.run_id !== undefined)
  t.ok(about.length >= 2, `lines about runs (${about.length})`)
  for (const l of about) {
    t.equal(l.key_name, 'default', `"${l.msg}" names the key`)
    t.ok(typeof l.request_id === 'string' && l.request_id.length > 0, `"${l.msg}" names the request`)
  }
  const ofFirst = about.filter(l => l.run_id === result.run_id)
  t.ok(ofFirst.length >= 2, `several lines about the first run (${ofFirst.map(l => l.msg).join(', ')})`)
  for (const l of ofFirst) t.equal(l.request_id, reqId, `"${l.msg}": the request that started the run`)
  t.same(new Set(about.map(l => l.run_id)), new Set([result.run_id, second.run_id]), 'only the two runs that ran')

  for (const run of [result, second]) {
    const finished = all.filter(l => l.msg === 'run finished' && l.run_id === run.run_id)
    t.equal(finished.length, 1, 'exactly one "run finished" line for the run')
    const f = finished[0]!
    t.equal(f.level, 30, 'at info')
    t.equal(f.status, 'succeeded')
    t.equal(f.duration_s, run.execution_time, 'duration_s is the run\'s execution_time')
    t.equal(f.cost_usd, run.total_cost_usd, 'cost_usd is what the CLI reported')
    t.ok((f.cost_usd as number) > 0)
    t.equal(f.session_id, run.session_id)
  }

  const completed = all.filter(l => l.msg === 'request completed' && l.reqId === reqId)
  t.equal(completed.length, 1)
  t.equal(completed[0]!.key_name, 'default', 'Fastify\'s own "request completed" line names the key too')

  const text = raw.join('')
  t.notOk(text.includes(API_KEY), 'the API key never reaches the log')
  t.notOk(text.includes('sk-ant-test'), 'nor the Anthropic key')
})

test('at the default level (info) a run logs its one "run finished" line, with the same context', async t => {
  const { app, raw, lines } = await buildLogged(t, 'info')
  const result = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'quiet' } })).json()
  const finished = lines().filter(l => l.msg === 'run finished')
  t.equal(finished.length, 1)
  t.match(finished[0], { run_id: result.run_id, key_name: 'default', status: 'succeeded', duration_s: Number, cost_usd: Number })
  t.ok(typeof finished[0]!.request_id === 'string')
  t.notOk(raw.join('').includes(API_KEY))
  t.notOk(raw.join('').includes('sk-ant-test'))
})

import { test, type Test } from 'tap'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import app, { serverOptions } from '../../src/app.js'
import { auth, eventually, fakeModel, sandbox, testEnv } from '../helper.js'

const FAKE = fileURLToPath(new URL('../fixtures/fake-claude.mjs', import.meta.url))

interface LogLine { level: number, msg?: string, failed_attempts?: number, [k: string]: unknown }

/**
 * Make every write of the server's event log fail as a full disk does (a trigger refusing inserts
 * into `events`), in its SQLite file or, on the PostgreSQL store, its database; and undo it.
 */
async function eventWrites (t: Test, env: Record<string, string>): Promise<{ fail: () => Promise<void>, mend: () => Promise<void> }> {
  const url = env.DATABASE_URL
  if (url === undefined) {
    const db = new Database(join(env.DATA_DIR!, 'runs.db'))
    db.pragma('busy_timeout = 5000')
    t.teardown(() => db.close())
    return {
      fail: async () => { db.exec('CREATE TRIGGER disk_full BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, \'database or disk is full\'); END') },
      mend: async () => { db.exec('DROP TRIGGER disk_full') }
    }
  }
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  t.teardown(() => c.end())
  await c.query('CREATE OR REPLACE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION \'database or disk is full\'; END $$')
  return {
    fail: async () => { await c.query('CREATE TRIGGER disk_full BEFORE INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION disk_full()') },
    mend: async () => { await c.query('DROP TRIGGER disk_full ON events') }
  }
}

test('the event log cannot be written: one error line, a handful of attempts, /health answers throughout, one line when it works again', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const raw: string[] = []
  const opts = serverOptions('info')
  const server = Fastify({ ...opts, logger: { ...(opts.logger as object), stream: { write: (s: string) => { raw.push(s) } } } })
  const env = testEnv(box, model, { LOG_LEVEL: 'info', CLAUDE_CODE_PATH: FAKE })
  await server.register(app, { env })
  await server.ready()
  t.teardown(() => server.close())
  const lines = (): LogLine[] => raw.join('').split('\n').filter(l => l !== '').map(l => JSON.parse(l) as LogLine)
  const about = (re: RegExp): LogLine[] => lines().filter(l => re.test(l.msg ?? ''))
  const writes = await eventWrites(t, env)

  // A chatty run: a line every 10 ms for about 1.3 s, the failure below in the middle of it.
  const run = (await server.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'ticks 120 10' } })).json()
  t.ok(await eventually(async () => (await server.inject({ url: `/api/runs/${run.id}`, headers: auth })).json().status === 'running', 10_000), 'the run is going')
  await new Promise(resolve => setTimeout(resolve, 100))

  await writes.fail()
  let slowest = 0
  const end = Date.now() + 1000
  let answered = 0
  while (Date.now() < end) {
    const at = Date.now()
    const health = await server.inject({ url: '/health' })
    slowest = Math.max(slowest, Date.now() - at)
    if (health.statusCode === 200) answered++
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  t.ok(answered >= 10, `/health answered all along (${answered} times)`)
  t.ok(slowest < 2000, `within its usual time, never stalled (slowest: ${slowest} ms)`)
  const failed = about(/event log/)
  t.equal(failed.length, 1, `one line says writing fails (${failed.length}), not one per attempt`)
  t.equal(failed[0]?.level, 50, 'an error')
  t.match(JSON.stringify(failed[0]?.err), /disk is full/, 'with the error')

  await writes.mend()
  t.ok(await eventually(() => about(/works again after/).length > 0, 5000), 'a line says when writing works again')
  const back = about(/works again after/)
  t.equal(back.length, 1, 'one')
  t.equal(back[0]?.level, 30, 'at info')
  const attempts = back[0]?.failed_attempts ?? 0
  t.ok(attempts >= 2 && attempts <= 12, `after a handful of failed attempts (${attempts}) in about a second`)
  t.match(back[0]?.msg, new RegExp(`after ${attempts} failed attempts`))
  t.equal(about(/event log/).length, 2, 'and nothing more about it')

  const done = await server.inject({ url: `/api/runs/${run.id}/events`, headers: auth })
  t.match(done.body, /event: result/, 'the run ended with its result')
  t.ok(await eventually(async () => (await server.inject({ url: `/api/runs/${run.id}`, headers: auth })).json().status === 'succeeded', 10_000), 'and succeeded')
  const ids = [...done.body.matchAll(/^id: (\d+)$/gm)].map(m => Number(m[1]))
  t.same(ids, Array.from({ length: ids.length }, (_, i) => i + 1), 'its log is whole: every event, in order')
})

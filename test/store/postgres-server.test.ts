import tap, { test } from 'tap'
import Fastify from 'fastify'
import app, { serverOptions } from '../../src/app.js'
import { auth, build, fakeModel, sandbox, testEnv } from '../helper.js'
import { noPostgres, startPostgres } from '../fixtures/postgres.js'

/** The server with `DATABASE_URL`: its runs, events and sessions in a real PostgreSQL. */
if (noPostgres !== false) {
  test('the server on PostgreSQL', { skip: noPostgres }, () => {})
} else {
  const server = startPostgres(tap)

  test('DATABASE_URL: runs, their events and sessions live in PostgreSQL, across restarts; any number of instances per database', async t => {
    const url = await (await server).database()
    const box = sandbox(t)
    const model = await fakeModel(t)
    const one = await build(t, { box, model, env: { DATABASE_URL: url } })
    const res = await one.app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'remember PEAR' } })
    const first = res.json()
    t.equal(first.success, true, first.error)

    // A second instance on the same database (its own DATA_DIR and HOME) shares it: cluster mode.
    const other = await build(t, { model, env: { DATABASE_URL: url } })
    const seen = (await other.app.inject({ url: `/api/runs/${first.run_id as string}`, headers: auth })).json()
    t.equal(seen.status, 'succeeded', 'a second instance sees the first one\'s runs')
    const health = (await other.app.inject({ url: '/health' })).json()
    t.equal(health.cluster.instances, 2, 'and counts two instances')
    await other.app.close()
    await one.app.close()

    // A new process (another DATA_DIR even) finds everything in the database.
    const two = await build(t, { model, env: { DATABASE_URL: url } })
    const run = (await two.app.inject({ url: `/api/runs/${first.run_id as string}`, headers: auth })).json()
    t.match(run, { id: first.run_id, status: 'succeeded', session_id: first.session_id })
    const events = await two.app.inject({ url: `/api/runs/${first.run_id as string}/events`, headers: auth })
    t.match(events.body, /event: result/, 'the event log replays from PostgreSQL')
    const sessions = (await two.app.inject({ url: '/api/sessions', headers: auth })).json()
    t.equal(sessions.sessions[0]?.session_id, first.session_id, 'the session is listed')
  })

  test('DATABASE_URL that cannot be reached: the server does not start, and says so without the password', async t => {
    const fastify = Fastify(serverOptions('silent'))
    const model = await fakeModel(t)
    const err = await (async () => {
      try {
        await fastify.register(app, { env: { ...testEnv(sandbox(t), model), DATABASE_URL: 'postgres://ccapi:s3cret-pw@127.0.0.1:1/runs' } })
        await fastify.ready()
      } catch (e) {
        return e as Error
      }
    })()
    await fastify.close().catch(() => {})
    t.match(err?.message, /DATABASE_URL .*127\.0\.0\.1:1.*cannot open the run store/)
    t.notMatch(err?.message, /s3cret-pw/)
  })
}

import { test } from 'tap'
import { API_KEY, build } from '../helper.js'

test('auth: X-API-Key or Bearer, 401 with WWW-Authenticate otherwise; health and docs are public', async t => {
  const { app } = await build(t)
  const exec = (headers: Record<string, string>) => app.inject({ method: 'POST', url: '/api/execute', headers, payload: { prompt: '' } })

  const missing = await exec({})
  t.equal(missing.statusCode, 401)
  t.match(missing.headers['www-authenticate'], /^Bearer /)
  t.equal(missing.json().code, 'unauthorized')
  t.match(missing.json().detail, /Missing API key/)
  t.match(missing.headers['content-type'], /^application\/problem\+json/)

  const wrong = await exec({ 'x-api-key': API_KEY + 'x' })
  t.equal(wrong.statusCode, 401)
  t.match(wrong.json().detail, /Invalid API key/)
  t.equal((await exec({ 'x-api-key': API_KEY.slice(0, -1) })).statusCode, 401, 'a prefix of the key is wrong too')
  t.equal((await exec({ authorization: `Basic ${API_KEY}` })).statusCode, 401, 'only Bearer counts')

  // Past auth, an empty prompt is a 400: the key was accepted.
  t.equal((await exec({ 'x-api-key': API_KEY })).statusCode, 400, 'X-API-Key accepted')
  t.equal((await exec({ authorization: `Bearer ${API_KEY}` })).statusCode, 400, 'Bearer accepted')
  t.equal((await exec({ authorization: `bearer ${API_KEY}` })).statusCode, 400, 'the scheme is case-insensitive')

  for (const url of ['/health', '/openapi.json', '/docs/', '/redoc']) {
    const res = await app.inject({ url })
    t.equal(res.statusCode, 200, `${url} is public`)
  }
  t.equal((await app.inject({ url: '/api/nothing-here' })).statusCode, 401, 'unknown /api paths do not reveal themselves')
})

test('with auth on and no key set, a key is generated, printed once, and works', async t => {
  const printed: string[] = []
  const { app } = await build(t, { env: { CLAUDE_API_KEY: '' }, announce: s => printed.push(s) })
  t.equal(printed.length, 1, 'announced once')
  const key = /^ {2}(\S+)$/m.exec(printed[0]!)?.[1]
  t.ok(key !== undefined && key.length >= 32, 'a long random key')
  t.match(printed[0], /CLAUDE_API_KEY/, 'says how to set a stable key')
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: { 'x-api-key': key! }, payload: {} })
  t.equal(res.statusCode, 400, 'the generated key is accepted')
  t.equal((await app.inject({ method: 'POST', url: '/api/execute', headers: { 'x-api-key': API_KEY }, payload: {} })).statusCode, 401)
})

test('ENABLE_AUTH=false opens /api', async t => {
  const { app } = await build(t, { env: { ENABLE_AUTH: 'false' } })
  t.equal((await app.inject({ method: 'POST', url: '/api/execute', payload: {} })).statusCode, 400)
})

test('keys never reach the log', async t => {
  const lines: string[] = []
  const { default: Fastify } = await import('fastify')
  const { serverOptions } = await import('../../src/app.js')
  const opts = serverOptions('trace')
  const stream = { write: (s: string) => { lines.push(s) } }
  const f = Fastify({ ...opts, logger: { ...(opts.logger as object), stream } })
  f.get('/api/echo', async (request) => { request.log.info({ headers: request.headers }, 'headers'); return {} })
  await f.inject({ url: '/api/echo', headers: { 'x-api-key': 'super-secret-key', authorization: 'Bearer super-secret-bearer' } })
  await f.close()
  const all = lines.join('')
  t.match(all, '[redacted]', 'headers logged redacted')
  t.notMatch(all, 'super-secret', 'no key in any log line')
})

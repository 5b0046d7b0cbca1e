import { test } from 'tap'
import { CredentialBroker, operatorCredential } from '../../src/isolation/broker.js'
import { fakeModel } from '../helper.js'

const body = JSON.stringify({ model: 'claude-x', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hello broker' }] })

test('a run token reaches the model as the operator\'s key, streamed; it ends with the run', async t => {
  const model = await fakeModel(t)
  model.on('hello broker', [{ text: ['one', 'two', 'three'], gapMs: 200 }])
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-operator' }, model.url)
  await broker.start()
  t.teardown(() => broker.close())
  const run = broker.issue('run-1')
  const token = run.env.ANTHROPIC_API_KEY!
  t.not(token, 'sk-ant-operator', 'the run gets a token of its own')
  t.equal(run.env.ANTHROPIC_BASE_URL, broker.address)

  const started = Date.now()
  const res = await fetch(`${broker.address}/v1/messages?beta=true`, { method: 'POST', headers: { 'x-api-key': token, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' }, body })
  t.equal(res.status, 200)
  const arrivals: number[] = []
  let text = ''
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    arrivals.push(Date.now() - started)
    text += Buffer.from(chunk).toString()
  }
  t.match(text, /"text":"one"[\s\S]*"text":"three"[\s\S]*message_stop/, 'the whole stream came back')
  t.ok(arrivals.length >= 3 && arrivals.at(-1)! - arrivals[0]! >= 300, `events arrived as they were sent, not buffered (${arrivals.join(', ')} ms)`)
  const seen = model.calls.at(-1)!
  t.equal(seen.headers['x-api-key'], 'sk-ant-operator', 'the model received the operator\'s key')
  t.equal(seen.headers['anthropic-version'], '2023-06-01', 'other headers pass through')

  run.revoke()
  const after = await fetch(`${broker.address}/v1/messages`, { method: 'POST', headers: { 'x-api-key': token, 'content-type': 'application/json' }, body })
  t.equal(after.status, 401, 'refused once the run has ended')
  t.equal(model.calls.length, 1, 'and nothing reached the model')
})

test('only run tokens, and only the Messages API', async t => {
  const model = await fakeModel(t)
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-operator' }, model.url)
  await broker.start()
  t.teardown(() => broker.close())
  const token = broker.issue('run-1').env.ANTHROPIC_API_KEY!
  const post = async (path: string, headers: Record<string, string>, method = 'POST') =>
    await fetch(`${broker.address}${path}`, { method, headers: { 'content-type': 'application/json', ...headers }, ...(method === 'POST' ? { body } : {}) })
  t.equal((await post('/v1/messages', {})).status, 401, 'no token')
  t.equal((await post('/v1/messages', { 'x-api-key': 'sk-ant-operator' })).status, 401, 'not even the operator\'s own key')
  t.equal((await post('/v1/messages', { 'x-api-key': token + 'x' })).status, 401, 'a forged token')
  t.equal((await post('/v1/models', { 'x-api-key': token }, 'GET')).status, 403, 'other API paths are refused')
  t.equal((await post('/v1/files', { 'x-api-key': token })).status, 403)
  t.equal((await post('/v1/messages/batches', { 'x-api-key': token })).status, 403)
  t.equal((await post('/v1/messages', { authorization: `Bearer ${token}` })).status, 200, 'a bearer token works too')
  t.equal((await post('/v1/messages/count_tokens', { 'x-api-key': token })).status, 200, 'token counting is allowed')
  t.equal(model.calls.length, 1, 'only the allowed message call reached the model (count_tokens is not a model call)')
})

test('the operator\'s credential: API key, auth token, OAuth token; none for cloud providers', async t => {
  t.same(operatorCredential({ ANTHROPIC_API_KEY: 'k' }), { kind: 'api_key', value: 'k' })
  t.same(operatorCredential({ ANTHROPIC_AUTH_TOKEN: 'b' }), { kind: 'bearer', value: 'b' })
  t.same(operatorCredential({ CLAUDE_CODE_OAUTH_TOKEN: 'o' }), { kind: 'oauth', value: 'o' })
  t.same(operatorCredential({ ANTHROPIC_API_KEY: '', CLAUDE_CODE_OAUTH_TOKEN: 'o' }), { kind: 'oauth', value: 'o' }, 'an empty key is unset')
  t.equal(operatorCredential({ CLAUDE_CODE_USE_BEDROCK: '1', ANTHROPIC_API_KEY: 'k' }), null)
  t.equal(operatorCredential({}), null)
  const broker = new CredentialBroker({ kind: 'oauth', value: 'o' }, undefined)
  t.teardown(() => broker.close())
  await broker.start()
  const env = broker.issue('r').env
  t.ok(env.CLAUDE_CODE_OAUTH_TOKEN?.startsWith('sk-ant-run-'), 'an OAuth operator: the run gets an OAuth-style token')
  t.equal(env.ANTHROPIC_API_KEY, undefined)
})

test('a spare\'s token is inert until a run claims it, and inert again when the claim is refused', async t => {
  const model = await fakeModel(t)
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-operator' }, model.url)
  await broker.start()
  t.teardown(() => broker.close())
  const spare = broker.issue('spare-1', { inert: true })
  const send = async (): Promise<number> => (await fetch(`${broker.address}/v1/messages`, { method: 'POST', headers: { 'x-api-key': spare.env.ANTHROPIC_API_KEY!, 'content-type': 'application/json' }, body })).status
  t.equal(await send(), 401, 'parked: refused')
  spare.activate()
  t.equal(await send(), 200, 'claimed by a run: it works')
  spare.deactivate()
  t.equal(await send(), 401, 'handed back: refused again')
  t.equal(model.calls.length, 1, 'only the claimed run\'s call reached the model')
})

test('a token bound to a run works only from that run\'s processes: its uid and its marker', { skip: process.platform !== 'linux' ? 'needs /proc' : false }, async t => {
  const model = await fakeModel(t)
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-operator' }, model.url)
  await broker.start()
  t.teardown(() => broker.close())
  const uid = process.getuid!()
  const run = broker.issue('run-1', { uid, marker: 'marker-of-run-1' })
  const token = run.env.ANTHROPIC_API_KEY!
  // A separate process (curl has no connection pool shared with this one), with or without the marker.
  const fromProcess = async (env: Record<string, string>, asUid?: number): Promise<string> => {
    const { execa } = await import('execa')
    const r = await execa('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-H', `x-api-key: ${token}`, '-H', 'content-type: application/json', '--data', body, `${broker.address}/v1/messages`], { env: { PATH: '/usr/bin:/bin', ...env }, extendEnv: false, reject: false, ...(asUid !== undefined ? { uid: asUid, gid: asUid } : {}) })
    return String(r.stdout)
  }
  t.equal(await fromProcess({ CLAUDE_API_RUN_MARKER: 'marker-of-run-1' }), '200', 'the run\'s own process: forwarded')
  t.equal(await fromProcess({}), '401', 'a process of the same uid without the run\'s marker (env -i): refused')
  t.equal(await fromProcess({ CLAUDE_API_RUN_MARKER: 'marker-of-run-2' }), '401', 'another run\'s process: refused')
  if (uid === 0) t.equal(await fromProcess({ CLAUDE_API_RUN_MARKER: 'marker-of-run-1' }, 65534), '401', 'another uid, even with the marker: refused')
  t.equal(model.calls.length, 1, 'only the run\'s own call reached the model')
})

test('a token served on a run\'s own socket works only through it: not over TCP, not through another run\'s socket', async t => {
  const { mkdtempSync, rmSync, statSync, existsSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const { request } = await import('node:http')
  const model = await fakeModel(t)
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-operator' }, model.url)
  await broker.start()
  t.teardown(() => broker.close())
  const dir = mkdtempSync(join(tmpdir(), 'ccapi-broker-sock-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const a = broker.issue('run-a')
  const b = broker.issue('run-b')
  a.listen(join(dir, 'a.sock'))
  b.listen(join(dir, 'b.sock'))
  t.equal(statSync(join(dir, 'a.sock')).mode & 0o777, 0o600, 'the socket is its owner\'s only')
  const via = async (socketPath: string, token: string): Promise<number> => await new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/v1/messages', method: 'POST', headers: { 'x-api-key': token, 'content-type': 'application/json' } }, res => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end(body)
  })
  t.equal(await via(join(dir, 'a.sock'), a.env.ANTHROPIC_API_KEY!), 200, 'through its own socket')
  t.equal(await via(join(dir, 'b.sock'), a.env.ANTHROPIC_API_KEY!), 401, 'not through another run\'s')
  const tcp = await fetch(`${broker.address}/v1/messages`, { method: 'POST', headers: { 'x-api-key': a.env.ANTHROPIC_API_KEY!, 'content-type': 'application/json' }, body })
  t.equal(tcp.status, 401, 'not over TCP')
  t.equal(model.calls.length, 1, 'only the call through its socket reached the model')
  a.revoke()
  t.notOk(existsSync(join(dir, 'a.sock')), 'the socket goes with the token')
})

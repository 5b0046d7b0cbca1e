import { test, type Test } from 'tap'
import { mkdirSync, readFileSync, realpathSync, writeFileSync, existsSync, readdirSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { auth, fakeModel, readSse, sandbox, serverThatFails, startServer, testEnv } from './helper.js'

const json = { ...auth, 'content-type': 'application/json' }

/** Every way a start can fail says so in one plain line on stderr: no stack, no JSON log. */
function onePlainLine (t: Test, r: { code: number | null, stdout: string, stderr: string }, pattern: RegExp, what: string): void {
  t.equal(r.code, 1, `${what}: exit code 1`)
  const lines = r.stderr.trimEnd().split('\n')
  t.equal(lines.length, 1, `${what}: one line (${r.stderr})`)
  t.match(lines[0], /^Cannot start: /, `${what}: says it cannot start`)
  t.match(lines[0], pattern, `${what}: names the variable, the value and the fix`)
  t.notMatch(r.stderr + r.stdout, /\n\s+at |"level":[56]0/, `${what}: no stack trace, no error logged as JSON`)
}

test('configuration mistakes stop the start with one plain line naming the variable, the value and the fix', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const env = (extra: Record<string, string>) => testEnv(box, model, extra)
  writeFileSync(join(box.home, 'broken-keys.json'), '{ "keys": [ { "name": "x" } ] }')
  const busy = createServer()
  await new Promise<void>(resolve => busy.listen(0, '127.0.0.1', resolve))
  t.teardown(() => busy.close())
  const busyPort = (busy.address() as AddressInfo).port

  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['a port that is not a number', { PORT: 'eighty' }, /PORT=eighty is not valid: set PORT to a whole number/],
    ['an unknown log level', { LOG_LEVEL: 'loud' }, /LOG_LEVEL=loud is not valid: set LOG_LEVEL to one of fatal, error, warn, info/],
    ['a keys file that does not exist', { API_KEYS_FILE: join(box.home, 'nope.json') }, /API_KEYS_FILE=.*nope\.json .* does not exist: create it with "npm run keys -- add NAME/],
    ['a broken keys file', { API_KEYS_FILE: join(box.home, 'broken-keys.json') }, /API_KEYS_FILE .*broken-keys\.json: .*key_sha256/],
    ['a DATA_DIR that cannot be made', { DATA_DIR: '/proc/x/data' }, /DATA_DIR=\/proc\/x\/data cannot be used \(ENOENT\): set DATA_DIR to a directory/],
    ['a working directory that does not exist', { DEFAULT_WORKING_DIR: join(box.home, 'gone') }, /DEFAULT_WORKING_DIR=.*gone: .* does not exist; create it/],
    ['a port in use', { PORT: String(busyPort) }, new RegExp(`HOST=127\\.0\\.0\\.1 PORT=${busyPort}: the port is already in use by another process; stop it or set PORT to a free port`)],
    ['a default timeout above the maximum', { DEFAULT_TIMEOUT: '600', MAX_TIMEOUT: '120' }, /DEFAULT_TIMEOUT \(600\) exceeds MAX_TIMEOUT \(120\): lower DEFAULT_TIMEOUT/]
  ]
  const results = await Promise.all(cases.map(async ([, extra]) => await serverThatFails(env(extra))))
  cases.forEach(([what, , pattern], i) => onePlainLine(t, results[i]!, pattern, what))
  // A hang would be killed by serverThatFails after 30 s (exit code null): it must exit on its own.
  t.equal(results[4]!.code, 1, `DATA_DIR=/proc/x exits on its own, it does not hang (${results[4]!.ms} ms)`)
})

test('MAX_TIMEOUT=120 alone starts, and a run without timeout gets 120 s', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const server = await startServer(t, testEnv(box, model, { MAX_TIMEOUT: '120' }))
  const health = await (await fetch(`${server.base}/health`)).json() as { status: string }
  t.equal(health.status, 'healthy')
  const res = await fetch(`${server.base}/api/execute`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'hi', timeout: 121 }) })
  t.equal(res.status, 400, 'the maximum holds')
})

test('a second server on the same DATA_DIR exits at once naming it and the first server\'s pid; the first server\'s run goes on', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('take your time', [{ text: ['one, ', 'two, ', 'three.'], gapMs: 1500 }])
  const env = testEnv(box, model)
  const first = await startServer(t, env)
  const run = await (await fetch(`${first.base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'take your time' }) })).json() as any
  await model.nextCall('take your time')

  const second = await serverThatFails(env)
  t.equal(second.code, 1, 'the second server exits non-zero')
  t.match(second.stderr, new RegExp(`^Cannot start: DATA_DIR=${env.DATA_DIR} is in use by another server \\(pid ${first.child.pid}\\): stop that server, or give this one its own DATA_DIR`))
  t.notMatch(second.stdout + second.stderr, /interrupted|listening/, 'it recovered nothing and never listened')

  const samePort = await serverThatFails({ ...env, PORT: new URL(first.base).port })
  t.match(samePort.stderr, /DATA_DIR=.* is in use by another server/, 'the DATA_DIR lock comes before the port')

  const events = (await readSse(await fetch(`${first.base}/api/runs/${run.id}/events`, { headers: auth }))).events
  const result = JSON.parse(events.at(-1)!.data)
  t.equal(result.status, 'succeeded', 'the first server\'s run finished as if nothing happened')
  t.equal(result.output, 'three.', 'with its answer')
  t.equal(readFileSync(join(env.DATA_DIR!, 'server.pid'), 'utf8').trim(), String(first.child.pid), 'server.pid names the holder')
})

test('a fresh checkout: runs without a directory execute in ./workspace, where neither .env nor DATA_DIR can be read', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const checkout = join(box.outside, 'checkout')
  mkdirSync(checkout)
  // What the README's quick start has: a .env beside the server, the store in ./data.
  writeFileSync(join(checkout, '.env'), [
    '# the admin key keeps its #',
    'CLAUDE_API_KEY=s3cr#t-key',
    `ANTHROPIC_BASE_URL=${model.url}`,
    'ANTHROPIC_API_KEY=sk-ant-dotenv-secret',
    'CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1',
    'CLAUDE_CODE_MAX_RETRIES=0'
  ].join('\n') + '\n')
  model.on('show me the secrets', [{ tool: 'Bash', input: { command: 'cat .env data/runs.db' } }, { text: 'nothing there' }])
  const server = await startServer(t, { PATH: process.env.PATH!, HOME: box.home, CLAUDE_CONFIG_DIR: join(box.home, '.claude') }, checkout)

  t.ok(existsSync(join(checkout, 'workspace')), 'the work area was made at first start')
  const headers = { 'x-api-key': 's3cr#t-key', 'content-type': 'application/json' }
  const res = await fetch(`${server.base}/api/execute/stream`, { method: 'POST', headers, body: JSON.stringify({ prompt: 'show me the secrets', allowed_tools: ['Bash(cat *)'] }) })
  t.equal(res.status, 200, 'the key with a # in .env works as written')
  const { events } = await readSse(res)
  // As root (CI), even in a checkout below a private directory, the run is its key's identity's, in its own area.
  const asRoot = process.getuid?.() === 0
  const area = asRoot ? join(checkout, 'workspace', 'default') : join(checkout, 'workspace')
  t.equal(JSON.parse(events[0]!.data).working_directory, realpathSync(area), 'the run executes in ./workspace (as root: the key\'s own ./workspace/default)')
  const result = JSON.parse(events.at(-1)!.data)
  t.equal(result.status, 'succeeded')
  const toolResult = JSON.stringify(model.calls.at(-1)!.body.messages.at(-1))
  t.match(toolResult, /No such file or directory/, 'the agent found no .env and no data/ where it runs')
  const everything = JSON.stringify(model.calls.map(c => c.body)) + events.map(e => e.data).join('\n')
  t.notOk(everything.includes('sk-ant-dotenv-secret'), 'the Anthropic key never reached the model or the client')
  t.notOk(everything.includes('s3cr#t-key'), 'nor the admin key')
  t.same(readdirSync(area), [], 'and the work area is still empty')
  if (asRoot) t.match(await (await fetch(`${server.base}/health`)).json(), { isolation: { level: 'sandbox' } }, 'as root: the sandbox, not none, though the checkout lies below a private directory')
  t.ok(existsSync(join(checkout, 'data', 'runs.db')), 'the store is in ./data, outside the work area')
})

import { test } from 'tap'
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fakeModel, keysFile as writeKeys, readSse, sandbox, serverThatFails, startServer, testEnv, toolResults, openToAgents } from '../helper.js'

/**
 * Runs as agent identities, attacked the way a prompt injection would: real server process (its
 * environment holds the secrets), real CLI running the model's Bash commands, as root as CI runs.
 */
const root = process.getuid?.() === 0
const skip = root ? false : 'agent identities need root (CI runs as root)'

const KEYS = { alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv', bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy' }
const SECRETS = { CLAUDE_API_KEY: 'admin-key-never-seen-by-runs', ANTHROPIC_API_KEY: 'sk-ant-operator-secret', WEBHOOK_SECRET: 'webhook-secret-never-seen' }

async function isolatedServer (t: Parameters<typeof sandbox>[0]) {
  const box = sandbox(t)
  const model = await fakeModel(t)
  // Agents must be able to reach their work areas (below box.work) and their homes.
  const base = openToAgents(box)
  const keys = writeKeys(box, {
    alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] },
    bob: { key: KEYS.bob, scopes: ['runs:write', 'runs:read'] }
  })
  const env = testEnv(box, model, {
    ...SECRETS,
    ISOLATION: 'uid',
    AGENTS_DIR: join(base, 'agents'),
    AGENT_UID_BASE: String(21_000 + (process.pid % 1000) * 10),
    API_KEYS_FILE: keys,
    CLAUDE_CODE_MAX_RETRIES: '0'
  })
  const server = await startServer(t, env)
  return { box, model, server, env, keysFile: keys, base }
}

const run = async (base: string, key: string, body: object): Promise<any> => {
  const res = await fetch(`${base}/api/execute`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: JSON.stringify(body) })
  return await res.json()
}

test('a run cannot read the server\'s secrets, store or keys, nor signal it; its credential is its own and dies with it', { skip }, async t => {
  const { model, server, env, keysFile, box } = await isolatedServer(t)
  const pid = server.child.pid!
  const health = await (await fetch(`${server.base}/health`)).json() as any
  t.same(health.isolation, { level: 'uid', credential_broker: true, network: 'host' }, '/health says what is in force')

  // The attack is a script the agent writes and runs: the CLI's own command checks never see it,
  // so only the operating system stands in the way.
  const script = [
    `echo "ENVIRON:"; tr '\\0' '\\n' < /proc/${pid}/environ 2>&1 | head -c 400`,
    `echo "STORE:"; head -c 100 ${join(env.DATA_DIR!, 'runs.db')} 2>&1`,
    `echo "KEYS:"; head -c 100 ${keysFile} 2>&1`,
    `echo "KILL:"; kill -0 ${pid} 2>&1`,
    'echo "TOKEN:$ANTHROPIC_API_KEY"',
    'echo "BASE:$ANTHROPIC_BASE_URL"'
  ].join('\n') + '\n'
  const own = join(box.work, 'alice')
  model.on('attack the server', [
    { tool: 'Write', input: { file_path: join(own, 'attack.sh'), content: script } },
    { tool: 'Bash', input: { command: 'sh attack.sh' } },
    { text: 'done attacking' }
  ])
  const result = await run(server.base, KEYS.alice, { prompt: 'attack the server', allowed_tools: ['Bash(sh *)'] })
  t.equal(result.status, 'succeeded', result.error)
  const out = toolResults(model.calls).at(-1) ?? ''
  const section = (name: string): string => new RegExp(`${name}:([\\s\\S]*?)(?:\\n[A-Z]+:|$)`).exec(out)?.[1] ?? ''
  t.match(section('ENVIRON'), /Permission denied/, 'the server\'s environment is unreadable')
  t.match(section('STORE'), /Permission denied/, 'the run store is unreadable')
  t.match(section('KEYS'), /Permission denied/, 'the keys file is unreadable')
  t.match(section('KILL'), /Operation not permitted/, 'kill -0 of the server fails')
  const everything = JSON.stringify(model.calls.map(c => c.body)) + JSON.stringify(result)
  for (const [name, value] of Object.entries(SECRETS)) t.notOk(everything.includes(value), `${name} is nowhere in what the run saw or printed`)

  const token = /TOKEN:(\S*)/.exec(out)?.[1] ?? ''
  const brokerUrl = /BASE:(\S*)/.exec(out)?.[1] ?? ''
  t.match(token, /^sk-ant-run-/, 'the run\'s ANTHROPIC_API_KEY is a run token')
  t.not(token, SECRETS.ANTHROPIC_API_KEY)
  t.ok(model.calls.every(c => c.headers['x-api-key'] === SECRETS.ANTHROPIC_API_KEY), 'the model received the operator\'s key, through the broker')
  const after = await fetch(`${brokerUrl}/v1/messages`, { method: 'POST', headers: { 'x-api-key': token, 'content-type': 'application/json' }, body: '{}' })
  t.equal(after.status, 401, 'the token captured inside the run is refused once the run has ended')
  t.equal(statSync(env.DATA_DIR!).mode & 0o777, 0o700, 'DATA_DIR is closed to others')
  t.equal(statSync(keysFile).mode & 0o777, 0o600, 'so is the keys file')
})

test('each key runs as its own identity: its own work area and transcripts, which another key cannot read', { skip }, async t => {
  const { model, server, base } = await isolatedServer(t)
  // The run's own directory comes in its first event.
  const first = await fetch(`${server.base}/api/execute/stream`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'alice says hello' }) })
  const { events } = await readSse(first)
  const aliceRun = JSON.parse(events.at(-1)!.data)
  t.equal(aliceRun.status, 'succeeded', 'streaming works as an agent identity')
  const aliceDir = JSON.parse(events[0]!.data).working_directory as string
  const st = statSync(aliceDir)
  t.ok(st.uid >= 21_000 && (st.mode & 0o777) === 0o700, 'alice runs in a work area of her own identity')

  model.on('alice writes a file', [{ tool: 'Write', input: { file_path: join(aliceDir, 'notes.txt'), content: 'alice was here\n' } }, { text: 'written' }])
  const wrote = await run(server.base, KEYS.alice, { prompt: 'alice writes a file', session_id: aliceRun.session_id })
  t.equal(wrote.status, 'succeeded', wrote.error)
  t.equal(wrote.session_id, aliceRun.session_id, 'resume works')
  t.equal(readFileSync(join(aliceDir, 'notes.txt'), 'utf8'), 'alice was here\n')
  t.equal(statSync(join(aliceDir, 'notes.txt')).uid, st.uid, 'the file belongs to alice\'s identity')
  const fork = await run(server.base, KEYS.alice, { prompt: 'alice forks', session_id: aliceRun.session_id, fork_session: true })
  t.equal(fork.status, 'succeeded', fork.error)
  t.not(fork.session_id, aliceRun.session_id, 'fork works')

  const aliceHome = join(base, 'agents', 'alice')
  t.ok(existsSync(join(aliceHome, '.claude', 'projects')), 'alice\'s transcripts are in her own config directory')
  model.on('bob snoops', [
    { tool: 'Bash', input: { command: `sh -c "ls -R ${aliceHome}"` } },
    { tool: 'Bash', input: { command: `sh -c "cat ${join(aliceDir, 'notes.txt')}"` } },
    { text: 'found nothing' }
  ])
  const bob = await run(server.base, KEYS.bob, { prompt: 'bob snoops', allowed_tools: ['Bash(sh *)'] })
  t.equal(bob.status, 'succeeded', bob.error)
  const snooped = toolResults(model.calls.filter(c => c.prompt === 'bob snoops'))
  t.equal(snooped.length, 2, `both commands ran: ${snooped.join(' | ')}`)
  const [ls = '', cat = ''] = snooped
  t.match(ls, /Permission denied/, 'bob cannot list alice\'s home')
  t.match(cat, /Permission denied/, 'nor read her files')
  t.notMatch(ls + cat, /jsonl|alice was here/)

  const stolen = await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEYS.bob, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'bob resumes alice', session_id: aliceRun.session_id }) })
  t.equal(stolen.status, 403, 'nor resume her session')
})

test('a working directory the key\'s identity cannot write is a clear 403', { skip }, async t => {
  const { server, box } = await isolatedServer(t)
  const shared = join(box.work, 'shared')
  mkdirSync(shared, { mode: 0o755 })
  // Another user's: one of the server's own would be handed to the key (shared-host.test.ts).
  chownSync(shared, 65534, 65534)
  const res = await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'hi', working_directory: 'shared' }) })
  t.equal(res.status, 403)
  const body = await res.json() as any
  t.equal(body.code, 'working_directory_not_writable')
  t.match(body.detail, /not writable by this key's agent identity \(uid \d+\), and the server does not hand it over \(.*belongs to uid 65534\)/)
})

test('a server without privileges reports isolation none and warns; ISOLATION=uid then refuses to start', { skip }, async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const base = join(box.home, '..')
  chmodSync(base, 0o755)
  for (const d of [box.home, box.work]) chownSync(d, 65534, 65534)
  const env = testEnv(box, model, { ISOLATION: 'auto', RUN_AS_UID: '65534' })
  const server = await startServer(t, env)
  const health = await (await fetch(`${server.base}/health`)).json() as any
  t.same(health.isolation, { level: 'none', credential_broker: true, network: 'host' })
  t.match(server.output(), /ISOLATION=none: runs execute as the server's own user and nothing keeps them from it/, 'a loud warning at start, saying plainly what none protects')
  const refused = await serverThatFails({ ...env, ISOLATION: 'uid', DATA_DIR: join(box.home, 'data2') })
  t.equal(refused.code, 1)
  t.match(refused.stderr, /^Cannot start: ISOLATION=uid needs the server to run as root/)
})

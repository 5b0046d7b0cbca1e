import { test } from 'tap'
import { spawn } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fakeModel, keysFile as writeKeys, openToAgents, sandbox, startServer, testEnv, toolResults } from '../helper.js'

/**
 * Agent identities on a host they share with other users and other servers: real server process
 * and real CLI, as root as CI runs. The uid a key gets belongs to nothing else, its temp space is
 * its own, and the README's quick start (a project directory made as root) works as written.
 */
const root = process.getuid?.() === 0
const skip = root ? false : 'agent identities need root (CI runs as root)'

const KEYS = { alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv', bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy' }

test('agent identities on a shared host', { skip }, async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keys = writeKeys(box, {
    alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] },
    bob: { key: KEYS.bob, scopes: ['runs:write', 'runs:read'] }
  })
  const uidBase = 27_000 + (process.pid % 1000) * 10
  // Something else on the host already runs as the first uid of the range.
  const squatter = spawn('sleep', ['300'], { uid: uidBase, gid: uidBase, stdio: 'ignore' })
  t.teardown(() => { squatter.kill('SIGKILL') })
  const agentsDir = join(base, 'agents')
  const env = testEnv(box, model, { ISOLATION: 'uid', AGENTS_DIR: agentsDir, AGENT_UID_BASE: String(uidBase), API_KEYS_FILE: keys })
  const registry = env.AGENT_UID_REGISTRY_DIR!
  const server = await startServer(t, env)
  const post = async (key: string, body: object): Promise<{ status: number, body: any }> => {
    const res = await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() }
  }
  /** A key's uid, made without a run: a request that fails after its identity is settled. */
  const uidOf = async (key: string, name: string): Promise<number> => {
    t.equal((await post(key, { prompt: 'x', working_directory: 'no-such-dir' })).status, 400)
    return (JSON.parse(readFileSync(join(env.DATA_DIR!, 'agent-ids.json'), 'utf8')) as Record<string, number>)[name]!
  }

  const aliceUid = await uidOf(KEYS.alice, 'alice')
  t.not(aliceUid, uidBase, 'a uid that owns running processes of something else is not handed out')
  t.ok(aliceUid > uidBase, 'alice has a uid of the range')
  t.equal(readFileSync(join(registry, String(aliceUid)), 'utf8').trim(), realpathSync(agentsDir), 'it is reserved host-wide, for this server\'s AGENTS_DIR')
  t.equal(statSync(registry).mode & 0o777, 0o700, 'the registry is closed to others')

  await t.test('a key\'s temp space is its own: squatting /tmp/claude-<uid> and /tmp/cc-socks-<uid> breaks nothing', async t => {
    const squatted = [`/tmp/claude-${aliceUid}`, `/tmp/cc-socks-${aliceUid}`]
    for (const dir of squatted) {
      rmSync(dir, { recursive: true, force: true })
      mkdirSync(dir, { mode: 0o700 })
      chownSync(dir, 65534, 65534)
    }
    t.teardown(() => { for (const dir of squatted) rmSync(dir, { recursive: true, force: true }) })
    model.on('alice works in the shell', [{ tool: 'Bash', input: { command: 'printenv TMPDIR' } }, { text: 'done' }])
    const res = await post(KEYS.alice, { prompt: 'alice works in the shell', allowed_tools: ['Bash(printenv *)'] })
    t.equal(res.body.status, 'succeeded', res.body.error)
    const tmp = toolResults(model.calls.filter(c => c.prompt === 'alice works in the shell')).at(-1)?.trim() ?? ''
    t.equal(tmp, join(agentsDir, 'alice', '.tmp'), 'the shell ran, with a TMPDIR of the identity\'s own')
    const st = statSync(tmp)
    t.ok(st.uid === aliceUid && (st.mode & 0o777) === 0o700, 'private to the identity, made by the server')
  })

  await t.test('the quick start works as written as root: a project made as root is handed to the key that uses it', async t => {
    const project = join(box.work, 'my-project')
    mkdirSync(join(project, 'src'), { recursive: true })
    model.on('create hello.py', [{ tool: 'Write', input: { file_path: join(project, 'hello.py'), content: 'print("Hello World")\n' } }, { text: 'Created hello.py' }])
    const res = await post(KEYS.bob, { prompt: 'create hello.py', working_directory: 'my-project' })
    t.equal(res.status, 200, res.body.detail)
    t.equal(res.body.status, 'succeeded', res.body.error)
    const bobUid = (JSON.parse(readFileSync(join(env.DATA_DIR!, 'agent-ids.json'), 'utf8')) as Record<string, number>).bob!
    t.ok(existsSync(join(project, 'hello.py')), 'the agent wrote its file')
    t.equal(statSync(join(project, 'hello.py')).uid, bobUid, 'owned by the key\'s identity')
    t.equal(statSync(project).uid, bobUid, 'the project is the key\'s now')
    t.equal(statSync(join(project, 'src')).uid, bobUid, 'with what was in it')
    t.equal(statSync(project).mode & 0o077, 0, 'and closed to the other identities')

    const other = await post(KEYS.alice, { prompt: 'x', working_directory: 'my-project' })
    t.equal(other.status, 403, 'another key\'s project stays refused')
    t.equal(other.body.code, 'working_directory_not_writable')
  })
})

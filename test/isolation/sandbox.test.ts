import { test } from 'tap'
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { findBwrap } from '../../src/isolation/sandbox.js'
import { eventually, fakeModel, keysFile as writeKeys, noWarmSpares, pidsMatching, sandbox, startServer, testEnv, toolResults, type Sandbox, openToAgents } from '../helper.js'

/** Outside /tmp: inside the sandbox /tmp is a private tmpfs, which would hide the very paths under test. */
const varTmpBox = (t: Parameters<typeof sandbox>[0]): Sandbox => sandbox(t, '/var/tmp')

/**
 * The sandbox level: each run in its own PID and mount namespace (bubblewrap) as its key's agent
 * identity. As root with bubblewrap installed, as CI runs (.ci/run installs it).
 */
const skip = process.getuid?.() !== 0 ? 'the sandbox needs root' : findBwrap() === null && process.env.REQUIRE_SANDBOX !== '1' ? 'bubblewrap is not installed (apt-get install bubblewrap)' : false

const KEY = 'cca_alice-0123456789abcdefghijklmnopqrstuv'

test('a sandboxed run sees only itself, none of the server\'s paths, and leaves nothing behind, even detached and env-cleared', { skip }, async t => {
  const box = varTmpBox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keysFile = writeKeys(box, { alice: { key: KEY, scopes: ['runs:write', 'runs:read'] } })
  const env = testEnv(box, model, { ISOLATION: 'sandbox', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(23_000 + (process.pid % 1000) * 10), API_KEYS_FILE: keysFile })
  const server = await startServer(t, env)
  const health = await (await fetch(`${server.base}/health`)).json() as any
  t.same(health.isolation, { level: 'sandbox', credential_broker: true, network: 'egress' })

  const own = join(box.work, 'alice')
  const script = [
    'echo "PS:"; ls /proc | grep -E "^[0-9]+$" | wc -l',
    `echo "ENVIRON:"; head -c 100 /proc/${server.child.pid}/environ 2>&1`,
    `echo "STORE:"; ls -A ${env.DATA_DIR} 2>&1 | wc -l`,
    `echo "KEYS:"; wc -c < ${keysFile} 2>&1`,
    `echo "CONFIG:"; ls -A ${join(box.home, '.claude')} 2>&1 | wc -l`,
    `echo "OUTSIDE:"; touch ${join(box.work, 'escaped')} 2>&1`,
    // Processes that drop the run marker and detach, the ways that beat a marker sweep.
    'env -i setsid nohup sleep 3613 > /dev/null 2>&1 &',
    '(bash -c "exec -c sleep 3614" > /dev/null 2>&1 &)',
    'echo "END:"'
  ].join('\n') + '\n'
  model.on('try to escape', [
    { tool: 'Write', input: { file_path: join(own, 'escape.sh'), content: script } },
    { tool: 'Bash', input: { command: 'sh escape.sh' } },
    { text: 'stayed inside' }
  ])
  const res = await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'try to escape', allowed_tools: ['Bash(sh *)'] }) })
  const result = await res.json() as any
  t.equal(result.status, 'succeeded', result.error)
  const out = toolResults(model.calls).at(-1) ?? ''
  const section = (name: string): string => (new RegExp(`${name}:\\n?([\\s\\S]*?)\\n[A-Z]+:`).exec(out)?.[1] ?? '').trim()
  t.ok(Number(section('PS')) <= 10, `the run sees only its own few processes (${section('PS')})`)
  t.match(section('ENVIRON'), /No such file|Permission denied/, 'the server\'s process is not even there')
  t.equal(section('STORE'), '0', 'DATA_DIR is an empty directory inside')
  t.match(section('KEYS'), /^0$|Permission denied/, 'the keys file is empty or unreadable inside')
  t.equal(section('CONFIG'), '0', 'the server\'s Claude config is hidden')
  t.match(section('OUTSIDE'), /Read-only file system|Permission denied/, 'nothing outside its own directory is writable')
  t.match(out, /END:/, 'the script ran to its end')
  t.ok(await eventually(() => pidsMatching('sleep 3613').length === 0 && pidsMatching('sleep 3614').length === 0, 5000), 'the detached, env-cleared sleeps died with the run')
  // Its uid: the first of the range that nothing else on the host uses.
  const aliceUid = (JSON.parse(readFileSync(join(env.DATA_DIR!, 'agent-ids.json'), 'utf8')) as Record<string, number>).alice
  t.equal(statSync(join(own, 'escape.sh')).uid, aliceUid, 'the run wrote in its own directory, as its identity')

  model.on('write and resume', [{ tool: 'Write', input: { file_path: join(own, 'notes.txt'), content: 'inside\n' } }, { text: 'written' }])
  const first = await (await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'write and resume' }) })).json() as any
  t.equal(first.status, 'succeeded', first.error)
  t.equal(readFileSync(join(own, 'notes.txt'), 'utf8'), 'inside\n', 'Write works in the sandbox')
  const again = await (await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'and again', session_id: first.session_id }) })).json() as any
  t.equal(again.status, 'succeeded', again.error)
  t.ok(model.calls.at(-1)!.userTexts.includes('write and resume'), 'resume carries the history')
})

test('a warm spare in the sandbox serves its key\'s own work area, sandboxed like a cold run', { skip: skip !== false ? skip : noWarmSpares }, async t => {
  const box = varTmpBox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keysFile = writeKeys(box, { alice: { key: KEY, scopes: ['runs:write', 'runs:read'] } })
  const env = testEnv(box, model, { ISOLATION: 'sandbox', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(25_000 + (process.pid % 1000) * 10), API_KEYS_FILE: keysFile, WARM_SPARES: '1', ALLOWED_PERMISSION_MODES: 'acceptEdits,bypassPermissions' })
  const server = await startServer(t, env)
  const run = async (body: object): Promise<any> => await (await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()
  const warm = async (): Promise<any> => (await (await fetch(`${server.base}/health`)).json() as any).warm
  const first = await run({ prompt: 'hello' })
  t.equal(first.success, true, first.error)
  t.ok(await eventually(async () => (await warm()).parked === 1, 60_000), 'a sandboxed spare is parked for alice')

  model.on('look around', [{ tool: 'Bash', input: { command: `ls -A ${env.DATA_DIR!}` } }, { tool: 'Bash', input: { command: 'ls /proc' } }, { text: 'looked' }])
  // bypassPermissions: the CLI's own checks step aside, so only the sandbox stands in the way.
  const looked = await run({ prompt: 'look around', permission_mode: 'bypassPermissions' })
  t.equal(looked.success, true, looked.error)
  const metrics = await (await fetch(`${server.base}/metrics`, { headers: { 'x-api-key': env.CLAUDE_API_KEY! } })).text()
  t.match(metrics, /ccapi_warm_claims_total\{outcome="hit"\} 1/, 'the run took the spare')
  const [store, procs] = toolResults(model.calls).slice(-2)
  t.ok(store !== undefined, 'setup: the listing ran')
  t.notMatch(store ?? '', /runs\.db|instance-id/, 'the server\'s store is hidden from the warm run, as from a cold one')
  t.ok((procs ?? '').split('\n').filter(l => /^\d+$/.test(l)).length <= 10, 'and it sees only its own few processes')
  // A directory below the key's work area: the spare's sandbox binds the whole area.
  t.ok(await eventually(async () => (await warm()).parked === 1, 60_000), 'another spare is parked')
  const area = join(box.work, 'alice')
  const project = join(area, 'project')
  mkdirSync(project)
  chmodSync(project, 0o777)
  model.on('in the project', [{ tool: 'Bash', input: { command: 'pwd && touch made-here' } }, { text: 'made' }])
  const inProject = await run({ prompt: 'in the project', working_directory: project, permission_mode: 'bypassPermissions' })
  t.equal(inProject.success, true, inProject.error)
  t.match(await (await fetch(`${server.base}/metrics`, { headers: { 'x-api-key': env.CLAUDE_API_KEY! } })).text(), /ccapi_warm_claims_total\{outcome="hit"\} 2/, 'a run in a directory below the work area takes a spare too')
  t.equal(toolResults(model.calls).at(-1)?.trim(), project, 'and works in that directory')
  t.ok(existsSync(join(project, 'made-here')), 'where it can write')
  const shared = join(box.work, 'shared')
  mkdirSync(shared)
  chmodSync(shared, 0o777)
  const elsewhere = await run({ prompt: 'elsewhere', working_directory: shared })
  t.equal(elsewhere.success, true, 'a run in another directory starts cold, and succeeds')
  t.match(await (await fetch(`${server.base}/metrics`, { headers: { 'x-api-key': env.CLAUDE_API_KEY! } })).text(), /ccapi_warm_claims_total\{outcome="miss"\} 2/)
  server.child.kill('SIGTERM')
  await server.exited
})

test('session keep-alive in the sandbox: the next run continues on the kept CLI, as the key\'s identity, sandboxed; shutdown ends it', { skip: skip !== false ? skip : noWarmSpares }, async t => {
  const box = varTmpBox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keysFile = writeKeys(box, { alice: { key: KEY, scopes: ['runs:write', 'runs:read'] } })
  const env = testEnv(box, model, { ISOLATION: 'sandbox', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(27_000 + (process.pid % 1000) * 10), API_KEYS_FILE: keysFile, SESSION_KEEPALIVE_S: '30', ALLOWED_PERMISSION_MODES: 'acceptEdits,bypassPermissions' })
  const server = await startServer(t, env)
  const run = async (body: object): Promise<any> => await (await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()
  model.on('who first', [{ tool: 'Bash', input: { command: 'echo $$ $(id -u)' } }, { text: 'one' }])
  const first = await run({ prompt: 'who first', permission_mode: 'bypassPermissions' })
  t.equal(first.success, true, first.error)
  const [, uid] = (toolResults(model.calls).at(-1) ?? '').trim().split(' ')
  // The identity's processes (its uid is this test's own).
  const ofUid = (): number[] => readdirSync('/proc').filter(n => /^\d+$/.test(n)).filter(n => {
    try {
      const st = readFileSync(`/proc/${n}/status`, 'utf8')
      return /^State:\s+[^Z]/m.test(st) && new RegExp(`^Uid:\\s+${uid ?? 'x'}\\s`, 'm').test(st)
    } catch { return false }
  }).map(Number)
  const kept = ofUid()
  t.ok(kept.length > 0, 'the CLI is kept after the run, as the identity')
  model.on('who second', [{ tool: 'Bash', input: { command: 'id -u; ls /proc | grep -cE "^[0-9]+$"' } }, { text: 'two' }])
  const second = await run({ prompt: 'who second', session_id: first.session_id, permission_mode: 'bypassPermissions' })
  t.equal(second.success, true, second.error)
  const [uid2, procs] = (toolResults(model.calls).at(-1) ?? '').trim().split('\n')
  t.equal(uid2, uid, 'the next run executes as the same identity')
  t.not(uid2, '0', 'not as root')
  t.ok(Number(procs) <= 10, 'in the kept CLI\'s own PID namespace')
  const metrics = await (await fetch(`${server.base}/metrics`, { headers: { 'x-api-key': env.CLAUDE_API_KEY! } })).text()
  t.match(metrics, /ccapi_warm_claims_total\{outcome="kept"\} 1/, 'on the kept CLI')
  server.child.kill('SIGTERM')
  await server.exited
  t.ok(await eventually(() => ofUid().length === 0), 'shutdown ends the kept CLI: nothing of the identity is left')
})

import { test } from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { eventually, fakeModel, keysFile as writeKeys, sandbox, startServer, testEnv, toolResults, openToAgents } from '../helper.js'

/**
 * Warm spares with agent identities: a spare runs as the identity of the key it is for, and a run
 * of another key never starts on it. Real server process, real CLI, as root as CI runs.
 */
const root = process.getuid?.() === 0
const skip = root ? false : 'agent identities need root (CI runs as root)'

const KEYS = { alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv', bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy' }

/** Live warm spare processes of the instance whose marker starts with `prefix`: pid, uid, marker. */
function sparesOf (prefix: string): Array<{ pid: number, uid: number, marker: string }> {
  const found: Array<{ pid: number, uid: number, marker: string }> = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const status = readFileSync(`/proc/${name}/status`, 'utf8')
      if (/^State:\s+Z/m.test(status)) continue
      const marker = readFileSync(`/proc/${name}/environ`, 'utf8').split('\0').find(e => e.startsWith(`CLAUDE_API_RUN_MARKER=${prefix}`))
      if (marker === undefined) continue
      found.push({ pid: Number(name), uid: Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]), marker })
    } catch {
      // Gone meanwhile.
    }
  }
  return found
}

test('warm spares run as the identity of their key, and only that key\'s runs start on them', { skip }, async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keys = writeKeys(box, {
    alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] },
    bob: { key: KEYS.bob, scopes: ['runs:write', 'runs:read'] }
  })
  const uidBase = 23_000 + (process.pid % 1000) * 10
  const env = testEnv(box, model, { ISOLATION: 'uid', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(uidBase), API_KEYS_FILE: keys, WARM_SPARES: '1' })
  const server = await startServer(t, env)
  const instance = readFileSync(join(env.DATA_DIR!, 'instance-id'), 'utf8').trim()
  const spares = (): Array<{ pid: number, uid: number, marker: string }> => sparesOf(`warm-${instance}-`)
  const call = async (key: string, method: string, path: string, body?: object): Promise<any> => {
    const res = await fetch(`${server.base}${path}`, { method, headers: { 'x-api-key': key, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) })
    return await res.json()
  }
  const warm = async (): Promise<{ parked: number, target: number }> => (await (await fetch(`${server.base}/health`)).json()).warm
  t.strictSame(await warm(), { parked: 0, target: 1 }, 'with identities, nothing is parked before a key has run')

  model.on('who am i', [{ tool: 'Bash', input: { command: 'id -u' } }, { text: 'that is me' }])
  const first = await call(KEYS.alice, 'POST', '/api/execute', { prompt: 'who am i', allowed_tools: ['Bash(id *)'] })
  t.equal(first.success, true, first.error)
  const aliceUid = Number(toolResults(model.calls).at(-1)?.trim())
  t.ok(aliceUid >= uidBase, 'alice\'s runs have an identity of their own')
  t.ok(await eventually(async () => (await warm()).parked === 1, 60_000), 'a spare is parked for the key that ran')
  const aliceSpares = spares()
  t.ok(aliceSpares.length >= 1 && aliceSpares.every(s => s.uid === aliceUid), 'it runs as alice\'s identity')

  // Bob never gets alice's spare: his run starts cold, as himself.
  const bobs = await call(KEYS.bob, 'POST', '/api/execute', { prompt: 'who am i', allowed_tools: ['Bash(id *)'] })
  t.equal(bobs.success, true, bobs.error)
  const bobUid = Number(toolResults(model.calls).at(-1)?.trim())
  t.not(bobUid, aliceUid, 'bob ran as his own identity')
  t.ok(aliceSpares.every(s => spares().some(p => p.pid === s.pid)) || spares().every(p => p.uid === bobUid), 'alice\'s spare served nobody else')
  // One spare in all: it now follows the key that ran last.
  t.ok(await eventually(async () => spares().length >= 1 && spares().every(s => s.uid === bobUid) && (await warm()).parked === 1, 60_000), 'the spare follows demand: bob\'s now')
  const metrics = await (await fetch(`${server.base}/metrics`, { headers: { 'x-api-key': env.CLAUDE_API_KEY! } })).text()
  t.match(metrics, /ccapi_warm_claims_total\{outcome="miss"\} 2/, 'both first runs started cold')

  // Bob's next new session starts on his spare, as himself, with his own token.
  model.on('warm who', [{ tool: 'Bash', input: { command: 'id -u' } }, { text: 'warm me' }])
  const hit = await call(KEYS.bob, 'POST', '/api/execute', { prompt: 'warm who', permission_mode: 'default' })
  t.equal(hit.success, true, hit.error)
  const out = toolResults(model.calls).at(-1) ?? ''
  t.equal(Number(out.trim()), bobUid, 'the warm run executes as bob\'s identity')
  const after = await (await fetch(`${server.base}/metrics`, { headers: { 'x-api-key': env.CLAUDE_API_KEY! } })).text()
  t.match(after, /ccapi_warm_claims_total\{outcome="hit"\} 1/)
  const transcript = await call(KEYS.bob, 'GET', `/api/sessions/${hit.session_id as string}/messages`)
  t.ok(JSON.stringify(transcript.messages).includes('warm who'), 'the warm session is in bob\'s identity\'s config, where the API finds it')
  t.equal((await call(KEYS.alice, 'GET', `/api/sessions/${hit.session_id as string}`)).code, 'session_not_found', 'and is not alice\'s')

  server.child.kill('SIGTERM')
  await server.exited
  t.strictSame(spares(), [], 'no spare outlives the server')
})

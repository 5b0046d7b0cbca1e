import { test } from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { chownSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Value } from '@sinclair/typebox/value'
import { AgentIdentities, handOverDirectory, processIds, type AgentIdentitiesOptions } from '../../src/isolation/identities.js'
import { ConfigSchema, toSettings, type RawConfig } from '../../src/config.js'
import { AgentIdentityUnavailable, DomainError } from '../../src/domain/errors.js'
import problem from '../../plugins/problem.js'
import { eventually } from '../helper.js'

/**
 * How agent identities get their uids on a shared host: never an account's or a group's, never
 * one that running processes use, never another server's. AgentIdentities on its own (no server),
 * each test with its own temp AGENTS_DIR and uid registry.
 */
const skip = process.getuid?.() !== 0 ? 'agent identities need root (CI runs as root)' : false
/** A range of this test process's own, away from the other isolation tests' ranges. */
const BASE = 40_000 + (process.pid % 1000) * 20

function temp (t: { teardown: (fn: () => void) => void }): string {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-agent-uids-')))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Identities of a server whose AGENTS_DIR and DATA_DIR are `dir/<name>`, reserving uids in `registry`. */
function server (dir: string, name: string, registry: string, over: Partial<AgentIdentitiesOptions> = {}): AgentIdentities {
  mkdirSync(join(dir, name), { recursive: true })
  return new AgentIdentities({ agentsDir: join(dir, name, 'agents'), registryFile: join(dir, name, 'agent-ids.json'), base: BASE, uidRegistryDir: registry, ...over })
}

const known = (db: 'passwd' | 'group', id: number): boolean => spawnSync('getent', [db, String(id)]).status !== 2

test('AGENT_UID_BASE at an account (nobody, 65534) gives a uid that no account or group has', { skip }, async t => {
  const dir = temp(t)
  t.ok(known('passwd', 65_534), 'nobody is an account here')
  const ids = server(dir, 'a', join(dir, 'uids'), { base: 65_534 })
  const alice = ids.identityFor('alice')
  t.not(alice.uid, 65_534, 'not nobody\'s uid')
  t.notOk(known('passwd', alice.uid), 'no account has it')
  t.notOk(known('group', alice.gid), 'no group has its gid')
  t.equal(readFileSync(join(dir, 'uids', String(alice.uid)), 'utf8').trim(), join(dir, 'a', 'agents'), 'reserved for this AGENTS_DIR')
})

test('a uid or gid that a running process uses is skipped', { skip }, async t => {
  const dir = temp(t)
  // One process of something else runs as BASE, another with BASE + 1 as its group.
  const squatters = [spawn('sleep', ['60'], { uid: BASE, gid: BASE, stdio: 'ignore' }), spawn('sleep', ['60'], { uid: 65_534, gid: BASE + 1, stdio: 'ignore' })]
  t.teardown(() => { for (const p of squatters) p.kill('SIGKILL') })
  t.ok(await eventually(() => { const ids = processIds(); return ids.has(BASE) && ids.has(BASE + 1) }), 'they run')
  const alice = server(dir, 'a', join(dir, 'uids')).identityFor('alice')
  t.not(alice.uid, BASE, 'not the uid of a running process')
  t.not(alice.uid, BASE + 1, 'nor a running process\'s gid')
  t.ok(alice.uid > BASE + 1)
})

test('servers of one host never share a uid; the same AGENTS_DIR keeps its own', { skip }, async t => {
  const dir = temp(t)
  const registry = join(dir, 'uids')
  const a = server(dir, 'a', registry).identityFor('alice')
  const b = server(dir, 'b', registry).identityFor('alice')
  t.not(a.uid, b.uid, 'two servers (two AGENTS_DIRs) give their alices different uids')
  t.equal(statSync(registry).mode & 0o777, 0o700, 'the host registry is the server\'s only')
  t.equal(readFileSync(join(registry, String(b.uid)), 'utf8').trim(), join(dir, 'b', 'agents'))
  t.same(readdirSync(registry).sort(), [String(a.uid), String(b.uid)].sort(), 'one file per uid, nothing else left')

  t.equal(server(dir, 'a', registry).identityFor('alice').uid, a.uid, 'a restart keeps the key\'s uid')
  const cluster = [server(dir, 'shared', registry, { shared: true }), server(dir, 'shared', registry, { shared: true })]
  const carol = cluster.map(ids => ids.identityFor('carol').uid)
  t.equal(carol[0], carol[1], 'instances sharing AGENTS_DIR give a key the same uid')
  t.notOk([a.uid, b.uid].includes(carol[0]!), 'and not another server\'s')

  // A server whose record names a uid another server has reserved does not run as it.
  writeFileSync(join(dir, 'c-agent-ids.json'), JSON.stringify({ alice: a.uid }))
  const c = server(dir, 'c', registry, { registryFile: join(dir, 'c-agent-ids.json') })
  t.throws(() => c.identityFor('alice'), { code: 'agent_identity_unavailable', message: new RegExp(`uid ${a.uid}, which another server \\(AGENTS_DIR=${join(dir, 'a', 'agents')}\\) reserved`) })
  t.notOk(c.knownUids().includes(a.uid), 'nor ends its processes as strays')
})

test('a recorded uid that has become an account is refused, not used', { skip }, async t => {
  const dir = temp(t)
  mkdirSync(join(dir, 'a'))
  // Recorded before the host got an account with that uid.
  writeFileSync(join(dir, 'a', 'agent-ids.json'), JSON.stringify({ alice: 65_534 }))
  const ids = server(dir, 'a', join(dir, 'uids'))
  const err = t.throws(() => ids.identityFor('alice'), AgentIdentityUnavailable) as Error
  t.match(err.message, /key alice has uid 65534, which is now the account nobody \(NSS\), so its runs are refused/)
  t.notMatch(err.message, /\n/, 'one line')
  t.same(ids.knownUids(), [], 'nothing is done to that account\'s processes')
  t.ok(ids.identityFor('bob').uid >= BASE, 'other keys are not held up')
})

test('when no uid can be had, the server says so in one line naming AGENT_UID_BASE, as a 503', { skip }, async t => {
  const dir = temp(t)
  const registry = join(dir, 'uids')
  const ids = server(dir, 'a', registry, { maxCandidates: 3 })
  // Every candidate is another server's.
  for (let uid = BASE; uid < BASE + 3; uid++) writeFileSync(join(registry, String(uid)), '/srv/other/agents\n')
  const err = t.throws(() => ids.identityFor('alice'), AgentIdentityUnavailable) as DomainError
  t.match(err.message, `no uid can be had for the agent identity of key alice: the 3 uids from AGENT_UID_BASE=${BASE} are all`)
  t.notMatch(err.message, /\n/, 'one line')

  const lines: string[] = []
  const app = Fastify({ logger: { level: 'info', stream: { write: (l: string) => { lines.push(l) } } } })
  await app.register(problem)
  app.post('/api/execute', async () => { throw err })
  t.teardown(() => app.close())
  const res = await app.inject({ method: 'POST', url: '/api/execute' })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { code: 'agent_identity_unavailable', detail: err.message })
  t.ok(lines.some(l => l.includes('"level":50') && l.includes('AGENT_UID_BASE')), 'and logs it')
})

test('the host registry is /var/lib/claude-code-api/agent-uids unless AGENT_UID_REGISTRY_DIR says otherwise', async t => {
  const dir = temp(t)
  mkdirSync(join(dir, 'work'))
  const raw = (over: Partial<RawConfig> = {}): RawConfig => Value.Default(ConfigSchema, { DEFAULT_WORKING_DIR: join(dir, 'work'), ...over }) as RawConfig
  t.equal(toSettings(raw(), {}, dir).agentUidRegistryDir, '/var/lib/claude-code-api/agent-uids')
  t.equal(toSettings(raw({ AGENT_UID_REGISTRY_DIR: 'uids' }), {}, dir).agentUidRegistryDir, join(dir, 'uids'))
})

test('a directory is handed to an identity only when nobody else has a hand in it', { skip }, async t => {
  const dir = temp(t)
  const work = join(dir, 'work')
  const uid = BASE + 7
  const project = (name: string): string => {
    const p = join(work, name)
    mkdirSync(join(p, 'src'), { recursive: true, mode: 0o755 })
    writeFileSync(join(p, 'src', 'main.py'), 'print(1)\n')
    return p
  }
  const ok = project('ok')
  t.equal(handOverDirectory(ok, work, uid, uid), null)
  t.same([ok, join(ok, 'src'), join(ok, 'src', 'main.py')].map(p => statSync(p).uid), [uid, uid, uid], 'it and what it holds are the identity\'s')

  const theirs = project('theirs')
  chownSync(join(theirs, 'src', 'main.py'), 65_534, 65_534)
  t.match(handOverDirectory(theirs, work, uid, uid), /main\.py belongs to uid 65534/, 'not with another user\'s file in it')
  const linked = project('linked')
  linkSync(join(linked, 'src', 'main.py'), join(dir, 'elsewhere'))
  t.match(handOverDirectory(linked, work, uid, uid), /is a hard link/, 'nor with a hard link')
  const open = project('open')
  spawnSync('chmod', ['o+w', join(open, 'src')])
  t.match(handOverDirectory(open, work, uid, uid), /writable by other users/, 'nor with a directory others can write')
  t.match(handOverDirectory(work, work, uid, uid), /not inside DEFAULT_WORKING_DIR/, 'never the work root itself')
  for (const p of [theirs, linked, open]) t.equal(statSync(p).uid, 0, `${p} is left as it was`)
  t.equal(handOverDirectory(join(ok, 'src'), work, BASE + 8, BASE + 8)?.startsWith(`${ok} belongs to uid ${uid}`), true, 'nor what lies inside another identity\'s')
})

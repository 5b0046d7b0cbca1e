import { test } from 'tap'
import { chmodSync, chownSync, mkdirSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fakeModel, inCluster, sandbox, serverThatFails, startServer, testEnv } from '../helper.js'

/**
 * A server started by an ordinary user keeps its store to itself: other local users (and the runs
 * of any other server on the host) must not read the prompts and outputs in it. CI runs as root,
 * so the server is started as `nobody` in directories it owns.
 */
const NOBODY = 65534
const skip = process.getuid?.() === 0 ? false : 'starting a server as another user needs root (CI runs as root)'

const modeOf = (path: string): string => (statSync(path).mode & 0o7777).toString(8)

/** A sandbox whose home and work area `nobody` owns, below a base it can enter. */
async function nobodysBox (t: Parameters<typeof sandbox>[0]) {
  const box = sandbox(t)
  const model = await fakeModel(t)
  chmodSync(join(box.home, '..'), 0o755)
  for (const d of [box.home, box.work]) chownSync(d, NOBODY, NOBODY)
  return { box, env: testEnv(box, model, { RUN_AS_UID: String(NOBODY), AGENTS_DIR: join(box.home, 'agents') }) }
}

/** Every entry of `dir` with its mode, for a message that shows what is open. */
const modes = (dir: string): Record<string, string> => Object.fromEntries(readdirSync(dir).map(f => [f, modeOf(join(dir, f))]))

test('a server run by an ordinary user makes DATA_DIR 0700 and its files 0600, and tightens an existing store open to others', { skip }, async t => {
  const { env } = await nobodysBox(t)
  const dataDir = env.DATA_DIR!
  // An AGENTS_DIR left listable by an older version: agents pass through it, nobody lists it.
  mkdirSync(env.AGENTS_DIR!, { mode: 0o755 })
  chmodSync(env.AGENTS_DIR!, 0o755)
  chownSync(env.AGENTS_DIR!, NOBODY, NOBODY)

  const first = await startServer(t, env)
  t.equal(statSync(dataDir).uid, NOBODY, 'the store is the server user\'s')
  t.equal(modeOf(dataDir), '700', 'a new DATA_DIR is 0700')
  // On PostgreSQL (cluster mode) DATA_DIR holds only the instance's id and its lock.
  for (const f of [...(inCluster ? [] : ['runs.db', 'runs.db-wal', 'runs.db-shm']), 'instance-id', 'server.lock', 'server.pid']) {
    t.equal(modeOf(join(dataDir, f)), '600', `${f} is 0600`)
  }
  t.same(Object.values(modes(dataDir)).filter(m => m !== '600'), [], 'no file of DATA_DIR is open to others: ' + JSON.stringify(modes(dataDir)))
  t.equal(modeOf(env.AGENTS_DIR!), '711', 'an existing AGENTS_DIR keeps only the traverse bit for others')
  first.child.kill('SIGTERM')
  await first.exited

  // What an older server (or a careless umask) left: everything readable by everyone.
  chmodSync(dataDir, 0o755)
  for (const f of readdirSync(dataDir)) chmodSync(join(dataDir, f), 0o644)
  const second = await startServer(t, env)
  t.equal(modeOf(dataDir), '700', 'an existing DATA_DIR open to others is tightened to 0700')
  t.same(Object.values(modes(dataDir)).filter(m => m !== '600'), [], 'and its files to 0600: ' + JSON.stringify(modes(dataDir)))
  t.match(second.output(), /DATA_DIR was open to other users: closed it to them/, 'saying so in the log')
  const health = await fetch(`${second.base}/health`)
  t.equal(health.status, 200, 'and the server works on it')
})

test('a DATA_DIR open to others that the server cannot close stops the start, saying so', { skip }, async t => {
  const { box, env } = await nobodysBox(t)
  // Writable by the server, but root's: it may not chmod it.
  const shared = join(box.home, 'shared-data')
  mkdirSync(shared)
  chmodSync(shared, 0o777)
  const failed = await serverThatFails({ ...env, DATA_DIR: shared }, undefined, 20_000)
  t.equal(failed.code, 1)
  t.match(failed.stderr, /^Cannot start: DATA_DIR=\S+shared-data is open to other users \(mode 777\)/)
  t.match(failed.stderr, /chmod 700/, 'naming the fix')
})

import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { defaultCliPath, Runner } from '../src/runner/runner.js'
import { SqliteRunStore } from '../src/store/sqlite-store.js'
import { PostgresRunStore } from '../src/store/postgres-store.js'
import { ClusterNode } from '../src/cluster/cluster.js'
import type { RunStore } from '../src/store/store.js'
import { LocalEventBus } from '../src/store/event-bus.js'
import { DataDirLock } from '../src/store/data-dir-lock.js'
import { ConfigError } from '../src/config.js'
import { CredentialBroker, isCloudProvider, operatorCredential } from '../src/isolation/broker.js'
import { AgentIdentities, blockedOnTheWayTo, canSwitchUsers, resolveIsolation, type IsolationLevel } from '../src/isolation/identities.js'
import { findBwrap, sandboxWorks } from '../src/isolation/sandbox.js'
import { chmodSync, statSync } from 'node:fs'

declare module 'fastify' {
  interface FastifyInstance {
    runner: Runner
    /** What keeps runs from the server and from each other, as `/health` reports it. */
    isolation: { level: IsolationLevel, credential_broker: boolean }
  }
}

/**
 * Close a file or directory of the server's to everyone but its owner (for agent identities),
 * whoever owns it; say so loudly when it cannot be done (a read-only mount, say).
 */
function closeToOthers (path: string | undefined, log: { info: (o: object, m: string) => void, warn: (o: object, m: string) => void }): void {
  if (path === undefined) return
  let mode: number
  try {
    mode = statSync(path).mode & 0o7777
  } catch {
    return
  }
  if ((mode & 0o077) === 0) return
  try {
    chmodSync(path, mode & ~0o077)
    log.info({ path, mode: (mode & ~0o077).toString(8) }, 'closed a server path to the agent identities')
  } catch (err) {
    log.warn({ path, err: (err as Error).message }, 'a server path stays readable by agent identities: make it readable by the server only (chmod go-rwx)')
  }
}

/** The PostgreSQL run store; a database that cannot be reached stops the start with one line. */
async function openPostgres (url: string, instanceId: string, onError: (err: Error) => void): Promise<PostgresRunStore> {
  try {
    return await PostgresRunStore.open({ url, origin: instanceId, onError })
  } catch (err) {
    const where = redactUrl(url)
    throw new ConfigError(`DATABASE_URL ${where}: cannot open the run store (${(err as Error).message})`)
  }
}

/** A database URL fit for a log line: no password. */
function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return '(not a URL)'
  }
}

/** This server's instance id, kept in `DATA_DIR` so a restart recovers the runs it owned. */
function instanceIdOf (dataDir: string): string {
  const file = join(dataDir, 'instance-id')
  if (existsSync(file)) {
    const id = readFileSync(file, 'utf8').trim()
    if (id !== '') return id
  }
  const id = randomUUID()
  writeFileSync(file, id + '\n')
  return id
}

/**
 * The run engine as a decorator, with its store in `DATA_DIR`, which it locks first (one server
 * per directory). At start it probes the CLI; once the server listens it recovers what a previous
 * process left; on close it drains (`SHUTDOWN_GRACE_S`) and ends every running run's process tree
 * before the server lets go.
 */
export default fp(async (fastify) => {
  const { dataDir, serverEnv } = fastify.config
  const setting = fastify.config.isolation
  const switchUsers = canSwitchUsers()
  const bwrap = findBwrap()
  // Tried only where it could be used: as an agent identity would run it.
  const sandbox = (setting === 'sandbox' || setting === 'auto') && switchUsers
    ? bwrap === null ? { ok: false as const, why: 'bwrap is not installed' } : await sandboxWorks(bwrap, fastify.config.agentUidBase)
    : { ok: false as const, why: 'not tried' }
  if (setting === 'auto' && switchUsers && !sandbox.ok) fastify.log.info({ why: sandbox.why }, 'no sandbox (bubblewrap) here: agent identities only')
  const resolved = resolveIsolation(setting, switchUsers, sandbox)
  if ('refused' in resolved) throw new ConfigError(resolved.refused)
  let isolation = resolved
  if (isolation.level !== 'none') {
    // Agents must reach their work areas, their homes and the CLI itself.
    const cli = fastify.config.claudePath ?? defaultCliPath()
    for (const [what, path] of [['DEFAULT_WORKING_DIR', join(fastify.config.defaultWorkingDir, 'x')], ['AGENTS_DIR', join(fastify.config.agentsDir, 'x')], ['the Claude Code CLI', cli]] as const) {
      const blocked = path.startsWith('/') ? blockedOnTheWayTo(path) : null
      if (blocked === null) continue
      const why = `${what} (${path.replace(/\/x$/, '')}) lies below ${blocked}, which other users cannot enter, so agent identities could not reach it`
      if (setting !== 'auto') throw new ConfigError(`ISOLATION=${setting}: ${why}; move it, or chmod o+x ${blocked}`)
      fastify.log.warn(`agent identities are off: ${why} (chmod o+x ${blocked}, or move it)`)
      isolation = { level: 'none' }
      break
    }
  }
  const lock = DataDirLock.acquire(dataDir)
  let runner: Runner
  let store: RunStore | undefined
  let broker: CredentialBroker | undefined
  let cluster: ClusterNode | undefined
  try {
    // The broker fronts the operator's credential for every run; a cloud provider keeps its own.
    const credential = operatorCredential(serverEnv)
    if (credential !== null) {
      broker = new CredentialBroker(credential, serverEnv.ANTHROPIC_BASE_URL, err => fastify.log.warn({ err }, 'credential broker: the upstream API failed'))
      await broker.start()
    } else {
      fastify.log.warn(isCloudProvider(serverEnv)
        ? 'credential broker off: a cloud provider (Bedrock/Vertex/Foundry) is configured, whose credentials runs receive as before'
        : 'credential broker off: no ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN or CLAUDE_CODE_OAUTH_TOKEN to front')
    }
    let identities: AgentIdentities | undefined
    if (isolation.level !== 'none') {
      // In a cluster every instance must give a key the same uid: the registry is in the shared AGENTS_DIR.
      identities = new AgentIdentities(fastify.config.agentsDir, join(dataDir, 'agent-ids.json'), fastify.config.agentUidBase, fastify.config.databaseUrl !== undefined)
      // What agent identities must never read: the run store, the keys file, the server's .env.
      closeToOthers(dataDir, fastify.log)
      closeToOthers(fastify.config.apiKeysFile, fastify.log)
      closeToOthers(join(process.cwd(), '.env'), fastify.log)
    } else {
      fastify.log.warn('ISOLATION level none: runs execute as the server\'s own user and can read what it can (start the server as root, as the Docker image does, for per-key agent identities)')
    }
    const onError = (err: Error): void => fastify.log.error({ err }, 'writing the event log failed; will retry')
    const instanceId = instanceIdOf(dataDir)
    if (fastify.config.databaseUrl !== undefined) {
      // Cluster mode: any number of instances share the database, each with a DATA_DIR of its own.
      const pgStore = await openPostgres(fastify.config.databaseUrl, instanceId, onError)
      store = pgStore
      cluster = new ClusterNode({ url: fastify.config.databaseUrl, store: pgStore, instanceId, maxConcurrent: fastify.config.maxConcurrentRuns, deadAfterMs: fastify.config.runLeaseMs, log: fastify.log.child({ component: 'cluster' }) })
    } else {
      store = new SqliteRunStore({ dataDir, onError })
    }
    runner = new Runner({
      settings: fastify.config,
      log: fastify.log.child({ component: 'runner' }),
      store,
      bus: cluster?.bus ?? new LocalEventBus(),
      ...(cluster !== undefined ? { cluster } : {}),
      leaseMs: fastify.config.runLeaseMs,
      instanceId,
      ...(broker !== undefined ? { broker } : {}),
      isolation: {
        level: isolation.level,
        ...(identities !== undefined ? { identities } : {}),
        ...(isolation.level === 'sandbox' && bwrap !== null
          ? {
              sandbox: {
                bwrap,
                agentsDir: fastify.config.agentsDir,
                // The server's own: its store, its Claude config, its keys and .env.
                hiddenDirs: [dataDir, serverEnv.CLAUDE_CONFIG_DIR ?? join(serverEnv.HOME ?? '/root', '.claude')],
                hiddenFiles: [...(fastify.config.apiKeysFile !== undefined ? [fastify.config.apiKeysFile] : []), join(process.cwd(), '.env')],
                // The CLI itself, wherever it is installed (a private /tmp would hide one below it).
                readOnly: [dirname(fastify.config.claudePath ?? defaultCliPath())].filter(d => d.startsWith('/'))
              }
            }
          : {})
      }
    })
    await runner.start()
  } catch (err) {
    await cluster?.stop()
    await store?.close().catch(() => {})
    await broker?.close()
    lock.release()
    throw err
  }
  fastify.decorate('runner', runner)
  fastify.decorate('isolation', { level: isolation.level, credential_broker: broker !== undefined })
  // Only a server that got its port may kill and requeue what a previous one left.
  fastify.addHook('onListen', async () => {
    await runner.recover()
  })
  // A request about runs that arrives while that is under way waits for it: a run the previous
  // process left queued is live again once recovered, not "finished" in between.
  fastify.addHook('onRequest', async (request) => {
    if (fastify.server.listening && request.url.startsWith('/api/')) await runner.recovered()
  })
  // preClose, not onClose: open streams wait for their runs, so the runs must end first.
  fastify.addHook('preClose', async () => {
    await runner.close()
  })
  fastify.addHook('onClose', async () => {
    await broker?.close()
    lock.release()
  })
}, { name: 'runner', dependencies: ['config'] })

import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { defaultCliPath, Runner } from '../src/engine/runner.js'
import { SqliteRunStore } from '../src/store/sqlite-store.js'
import { PostgresRunStore } from '../src/store/postgres-store.js'
import type { WriteReports } from '../src/store/write-retry.js'
import { ClusterNode } from '../src/cluster/cluster.js'
import type { RunStore } from '../src/store/store.js'
import { LocalEventBus } from '../src/store/event-bus.js'
import { DataDirLock } from '../src/store/data-dir-lock.js'
import { ConfigError } from '../src/config.js'
import { CredentialBroker, isCloudProvider, operatorCredential } from '../src/isolation/broker.js'
import { AgentIdentities, blockedFor, canSwitchUsers, resolveIsolation, type IsolationLevel } from '../src/isolation/identities.js'
import { sandboxTools, sandboxWorks } from '../src/isolation/sandbox.js'
import { chmodSync, realpathSync, statSync } from 'node:fs'

declare module 'fastify' {
  interface FastifyInstance {
    runner: Runner
    /** What keeps runs from the server and from each other, as `/health` reports it. */
    isolation: { level: IsolationLevel, credential_broker: boolean }
  }
}

/**
 * Close a file or directory of the server's to other users (local users, agent identities, other
 * servers' runs), whoever runs the server: take away the `bits` (default: all of group's and
 * others'). Say so loudly when it cannot be done (a read-only mount, another user's file, say).
 */
function closeToOthers (path: string | undefined, log: { info: (o: object, m: string) => void, warn: (o: object, m: string) => void }, bits = 0o077): void {
  if (path === undefined) return
  let mode: number
  try {
    mode = statSync(path).mode & 0o7777
  } catch {
    return
  }
  if ((mode & bits) === 0) return
  try {
    chmodSync(path, mode & ~bits)
    log.info({ path, mode: (mode & ~bits).toString(8) }, 'closed a server path to other users')
  } catch (err) {
    log.warn({ path, err: (err as Error).message }, `a server path stays open to other users: make it the server's only (chmod go-${bits === 0o077 ? 'rwx' : 'rw'})`)
  }
}

/** The unprivileged uid the sandbox is tried as at start. */
const NOBODY = 65534

/** The directories of the CLI a sandbox must show: its own, and its real one when it is a link. */
function cliDirs (cli: string): string[] {
  if (!cli.startsWith('/')) return []
  let real = cli
  try {
    real = realpathSync(cli)
  } catch {}
  // A JavaScript CLI runs on this very Node.js, which the sandbox must show too (nvm puts it in a HOME).
  const node = /\.[cm]?js$/.test(real) ? [dirname(realpathSync(process.execPath))] : []
  return [...new Set([dirname(cli), dirname(real), ...node])]
}

/** The PostgreSQL run store; a database that cannot be reached stops the start with one line. */
async function openPostgres (url: string, instanceId: string, reports: Required<WriteReports>): Promise<PostgresRunStore> {
  try {
    return await PostgresRunStore.open({ url, origin: instanceId, ...reports })
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
  writeFileSync(file, id + '\n', { mode: 0o600 })
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
  const tools = switchUsers && (setting === 'sandbox' || setting === 'auto') ? sandboxTools() : null
  // Tried only where it could be used: as an agent identity would run it.
  const sandbox = tools === null
    ? { ok: false as const, why: switchUsers ? 'bwrap is not installed' : 'not tried' }
    // As `nobody`: never an agent identity's uid, whose processes that no run accounts for are ended.
    : await sandboxWorks(tools.bwrap, NOBODY)
  if (setting === 'auto' && switchUsers && !sandbox.ok) fastify.log.info({ why: sandbox.why }, 'no sandbox (bubblewrap) here: agent identities only')
  const resolved = resolveIsolation(setting, switchUsers, sandbox)
  if ('refused' in resolved) throw new ConfigError(resolved.refused)
  const isolation = resolved
  const cli = fastify.config.claudePath ?? defaultCliPath()
  if (isolation.level !== 'none') {
    // Agents must reach their work areas, their homes and the CLI itself. The sandbox shows them
    // what lies below a directory closed to others (a checkout in root's HOME); `uid` cannot.
    const canShow = isolation.level === 'sandbox' && tools?.unshare !== null && tools?.setpriv !== null
    for (const [what, path] of [['DEFAULT_WORKING_DIR', join(fastify.config.defaultWorkingDir, 'x')], ['AGENTS_DIR', join(fastify.config.agentsDir, 'x')], ['the Claude Code CLI', cli]] as const) {
      const blocked = path.startsWith('/') ? blockedFor(path) : null
      if (blocked === null || canShow) continue
      const why = `${what} (${path.replace(/\/x$/, '')}) lies below ${blocked}, which other users cannot enter, so agent identities could not reach it`
      if (setting !== 'auto') throw new ConfigError(`ISOLATION=${setting}: ${why}; move it, or chmod o+x ${blocked}${setting === 'uid' ? ', or use ISOLATION=sandbox (bubblewrap shows such paths to runs)' : ''}`)
      // As root, never fall back to running every agent as root: say what would do, and stop.
      throw new ConfigError(`ISOLATION=auto: ${why}, and there is no sandbox to show it to them (${sandbox.ok ? 'util-linux unshare/setpriv missing' : sandbox.why}). Install bubblewrap (apt-get install bubblewrap), or chmod o+x ${blocked}, or move it; or set ISOLATION=none to run agents as the server's own user (root), knowingly`)
    }
  }
  const lock = DataDirLock.acquire(dataDir)
  if (lock.closed.length > 0) fastify.log.warn({ paths: lock.closed }, 'DATA_DIR was open to other users: closed it to them (0700, files 0600)')
  if (lock.open.length > 0) fastify.log.warn({ paths: lock.open }, 'files in DATA_DIR are open to other users and not this user\'s to close (the 0700 DATA_DIR keeps them out): chmod go-rwx them')
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
      identities = new AgentIdentities({
        agentsDir: fastify.config.agentsDir,
        registryFile: join(dataDir, 'agent-ids.json'),
        base: fastify.config.agentUidBase,
        uidRegistryDir: fastify.config.agentUidRegistryDir,
        shared: fastify.config.databaseUrl !== undefined
      })
    } else {
      fastify.log.warn('ISOLATION=none: runs execute as the server\'s own user and nothing keeps them from it: they can read ' +
        'what it can (its .env, DATA_DIR with every run\'s prompts and output, its HOME) and signal or debug the server ' +
        'itself; only the operator\'s Claude credential stays out of reach (the broker). For per-key agent identities ' +
        'start the server as root (ISOLATION=auto: sandbox with bubblewrap installed, else uid), as the Docker image does')
    }
    // What no other user may read, whoever runs the server: the keys file, the server's .env (the
    // run store is closed by its lock). AGENTS_DIR keeps the traverse bit: agents pass through it
    // to their own 0700 homes, but nobody lists or writes it.
    closeToOthers(fastify.config.apiKeysFile, fastify.log)
    closeToOthers(join(process.cwd(), '.env'), fastify.log)
    closeToOthers(fastify.config.agentsDir, fastify.log, 0o066)
    // Once when writing starts failing (a full disk), once when it works again: the retries between
    // back off and say nothing, however long it lasts.
    const writes: Required<WriteReports> = {
      onError: (err: Error): void => fastify.log.error({ err }, 'writing the event log failed; will retry, backing off, and say when it works again'),
      onRecovered: (failedAttempts: number): void => fastify.log.info({ failed_attempts: failedAttempts }, `writing the event log works again after ${failedAttempts} failed attempts`)
    }
    const instanceId = instanceIdOf(dataDir)
    if (fastify.config.databaseUrl !== undefined) {
      // Cluster mode: any number of instances share the database, each with a DATA_DIR of its own.
      const pgStore = await openPostgres(fastify.config.databaseUrl, instanceId, writes)
      store = pgStore
      cluster = new ClusterNode({ url: fastify.config.databaseUrl, store: pgStore, instanceId, maxConcurrent: fastify.config.maxConcurrentRuns, deadAfterMs: fastify.config.runLeaseMs, log: fastify.log.child({ component: 'cluster' }) })
    } else {
      store = new SqliteRunStore({ dataDir, ...writes })
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
        ...(isolation.level === 'sandbox' && tools !== null
          ? {
              sandbox: {
                tools,
                agentsDir: fastify.config.agentsDir,
                // The server's own: its store, its Claude config, its keys and .env.
                hiddenDirs: [dataDir, serverEnv.CLAUDE_CONFIG_DIR ?? join(serverEnv.HOME ?? '/root', '.claude')],
                hiddenFiles: [...(fastify.config.apiKeysFile !== undefined ? [fastify.config.apiKeysFile] : []), join(process.cwd(), '.env')],
                // The CLI itself, wherever it is installed (a private /tmp would hide one below it).
                readOnly: cliDirs(cli)
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

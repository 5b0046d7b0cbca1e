import fp from 'fastify-plugin'
import { chmodSync, realpathSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { defaultCliPath } from '../src/engine/launch.js'
import { ConfigError } from '../src/config.js'
import { CredentialBroker, isCloudProvider, operatorCredential } from '../src/isolation/broker.js'
import { AgentIdentities, blockedFor, canSwitchUsers, resolveIsolation, type IsolationLevel } from '../src/isolation/identities.js'
import { sandboxTools, sandboxWorks, type SandboxTools } from '../src/isolation/sandbox.js'
import { setUpLimits, type LimitsSetup } from '../src/isolation/limits.js'
import { EgressProxy } from '../src/isolation/egress-proxy.js'
import { findSocat, RunNetworks } from '../src/isolation/run-network.js'
import type { LimitEnforcement } from '../src/domain/limits.js'

/** What keeps runs from the server and from each other, as the engine takes it. */
export interface Containment {
  /** Hands each run a token of its own instead of the operator's credential (absent: not fronted). */
  broker?: CredentialBroker
  /** The level, each key's agent identity (`uid`, `sandbox`), and what the sandbox shows and hides. */
  isolation: {
    level: IsolationLevel
    identities?: AgentIdentities
    sandbox?: { tools: SandboxTools, agentsDir: string, hiddenDirs: string[], hiddenFiles: string[], readOnly?: string[] }
  }
  /** How runs are held to their limits on this host. */
  limits: LimitsSetup
  /** Sandboxed runs' own networks (absent: runs share the host's). */
  networks?: RunNetworks
}

/** `/health`'s `limits`: what the host enforces, and the server's limits. */
export interface LimitsView {
  enforced: LimitEnforcement
  memory_max: number | null
  pids_max: number | null
  cpu_max: number | null
  disk_max: number | null
  disk_enforced: 'file_and_tmp' | 'file' | 'none'
}

declare module 'fastify' {
  interface FastifyInstance {
    /** What keeps runs from the server and from each other, as `/health` reports it. */
    isolation: { level: IsolationLevel, credential_broker: boolean, network: 'egress' | 'none' | 'host', network_error?: string }
    /** How runs are held to their limits, as `/health` reports it. */
    limits: LimitsView
    /** The same for the engine: the credential broker, agent identities and sandbox settings. */
    containment: Containment
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

/**
 * Isolation: the level `ISOLATION` resolves to here (the sandbox, bubblewrap, is tried at start),
 * refused when agent identities could not reach what runs need; the credential broker that fronts
 * the operator's credential; each key's agent identity; and the server's own files closed to
 * others. Decorates `isolation` (for `/health`) and `containment` (for the engine); the broker
 * stops on close.
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
  let broker: CredentialBroker | undefined
  let identities: AgentIdentities | undefined
  let limits: LimitsSetup | undefined
  let egress: EgressProxy | undefined
  let networks: RunNetworks | undefined
  let networkError: string | undefined
  try {
    limits = await setUpLimits()
    const l = fastify.config.runLimits
    if (limits.enforced === 'none') {
      fastify.log.error({ why: limits.why }, 'RESOURCE LIMITS ARE NOT ENFORCED: this host gives the server no control groups and no prlimit, so one run can take all of the machine\'s memory, processes and CPU, and the server with it. Run the server as root (or with a delegated cgroup v2), as the Docker image does')
    } else if (limits.enforced === 'rlimit') {
      fastify.log.warn({ why: limits.why }, 'no control groups for runs here: limits fall back to rlimits (writable memory per process, processes per agent identity, no CPU limit, no containment by group)')
    } else {
      fastify.log.info({ enforced: limits.enforced, memory_max: l.memoryMax ?? null, pids_max: l.pidsMax ?? null, cpu_max: l.cpuMax ?? null, disk_max: l.diskMax ?? null }, 'runs are held to their limits by control groups')
    }
    if (!limits.oomProtected) fastify.log.info('the server\'s OOM score could not be lowered (not root): runs\' processes are still the kernel\'s first choice, theirs raised')
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
    if (isolation.level === 'sandbox' && fastify.config.runNetwork !== 'host') {
      const socat = findSocat()
      if (socat === null) {
        networkError = 'socat is not installed (apt-get install socat), so runs cannot have a network of their own'
        fastify.log.error(`RUN_NETWORK=${fastify.config.runNetwork}: ${networkError}; sandboxed runs share the host's network, and can reach its loopback services (this server, a database)`)
      } else {
        if (fastify.config.runNetwork === 'egress') {
          egress = new EgressProxy({
            allow: fastify.config.egressAllow,
            onRefused: o => fastify.log.info({ run_id: o.run, host: o.host, port: o.port, why: o.why }, 'egress proxy: refused a run\'s connection')
          })
        }
        networks = new RunNetworks({ mode: fastify.config.runNetwork, socat, brokerPort: broker?.port, egress })
      }
    } else if (isolation.level === 'sandbox') {
      fastify.log.warn('RUN_NETWORK=host: sandboxed runs share the host\'s network, and can reach its loopback services (this server, the credential broker\'s port, a database)')
    }
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
  } catch (err) {
    await broker?.close()
    await egress?.close()
    await limits?.boxes?.close()
    throw err
  }
  const l = fastify.config.runLimits
  fastify.decorate('isolation', { level: isolation.level, credential_broker: broker !== undefined, network: networks?.mode ?? 'host', ...(networkError !== undefined ? { network_error: networkError } : {}) })
  fastify.decorate('limits', {
    enforced: limits.enforced,
    memory_max: l.memoryMax ?? null,
    pids_max: l.pidsMax ?? null,
    cpu_max: l.cpuMax ?? null,
    disk_max: l.diskMax ?? null,
    disk_enforced: l.diskMax === undefined || limits.prlimit === null ? 'none' : isolation.level === 'sandbox' ? 'file_and_tmp' : 'file'
  })
  fastify.decorate('containment', {
    ...(broker !== undefined ? { broker } : {}),
    limits,
    ...(networks !== undefined ? { networks } : {}),
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
  const boxes = limits.boxes
  fastify.addHook('onClose', async () => {
    await broker?.close()
    await egress?.close()
    // Runs have ended by now (the engine's preClose): what is left in their groups goes with them.
    await boxes?.close()
  })
}, { name: 'isolation', dependencies: ['config'] })

import fp from 'fastify-plugin'
import { chmodSync, realpathSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { defaultCliPath } from '../src/engine/launch.js'
import { ConfigError } from '../src/config.js'
import { CredentialBroker, isCloudProvider, operatorCredential } from '../src/isolation/broker.js'
import { AgentIdentities, blockedFor, canSwitchUsers, resolveIsolation, type IsolationLevel } from '../src/isolation/identities.js'
import { sandboxTools, sandboxWorks, type SandboxTools } from '../src/isolation/sandbox.js'

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
}

declare module 'fastify' {
  interface FastifyInstance {
    /** What keeps runs from the server and from each other, as `/health` reports it. */
    isolation: { level: IsolationLevel, credential_broker: boolean }
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
    throw err
  }
  fastify.decorate('isolation', { level: isolation.level, credential_broker: broker !== undefined })
  fastify.decorate('containment', {
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
  fastify.addHook('onClose', async () => {
    await broker?.close()
  })
}, { name: 'isolation', dependencies: ['config'] })

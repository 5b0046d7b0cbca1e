import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { execa } from 'execa'
import type { Settings } from '../config.js'
import { BROKERED_VARS, type CredentialBroker, type RunCredential } from '../isolation/broker.js'
import type { AgentIdentity } from '../isolation/identities.js'
import { trackLaunch, untrackLaunch } from '../isolation/process-tree.js'
import { sandboxLaunch, type SandboxTools } from '../isolation/sandbox.js'
import { buildChildEnv, identityEnv } from './child-env.js'
import { launchOf, type ExecutorSettings } from './launch-command.js'
import { launchFailureReason } from './launch-health.js'
import type { RunLimits } from '../domain/limits.js'
import type { LimitsSetup } from '../isolation/limits.js'
import type { RunNetwork, RunNetworks } from '../isolation/run-network.js'

// How a CLI is launched for a run, a spare or the self-check: its environment, its credential,
// its identity and its sandbox. Functions of the settings; nothing here holds state.

/** The sandbox runs execute in (`ISOLATION=sandbox`): what it shows them and what it hides. */
export interface SandboxSettings {
  tools: SandboxTools
  agentsDir: string
  hiddenDirs: string[]
  hiddenFiles: string[]
  readOnly?: string[]
}

/** What every launch is made from. */
export interface Launcher {
  settings: Settings
  cliPath: string
  /** The server's environment as runs may see it: without the operator's credential when brokered. */
  runEnv: Settings['serverEnv']
  broker: CredentialBroker | undefined
  sandbox: SandboxSettings | undefined
  /** How runs are held to their limits (absent: they are not). */
  limits: LimitsSetup | undefined
  /** Sandboxed runs' own networks (absent: the host's). */
  networks: RunNetworks | undefined
}

/**
 * The CLI the Agent SDK ships for this platform (its optional dependency
 * `@anthropic-ai/claude-agent-sdk-<platform>-<arch>`), else `claude` on PATH.
 */
export function defaultCliPath (): string {
  const require = createRequire(import.meta.url)
  for (const pkg of [`@anthropic-ai/claude-agent-sdk-${process.platform}-${process.arch}`, `@anthropic-ai/claude-agent-sdk-${process.platform}-${process.arch}-musl`]) {
    try {
      const bin = join(dirname(require.resolve(`${pkg}/package.json`)), process.platform === 'win32' ? 'claude.exe' : 'claude')
      if (existsSync(bin)) return bin
    } catch {
      // Not installed for this platform: try the next, then PATH.
    }
  }
  return 'claude'
}

/** A launcher from the settings: the CLI to run and the environment runs start from. */
export function launcherOf (settings: Settings, broker: CredentialBroker | undefined, sandbox: SandboxSettings | undefined, limits?: LimitsSetup, networks?: RunNetworks): Launcher {
  const runEnv = broker === undefined
    ? settings.serverEnv
    : Object.fromEntries(Object.entries(settings.serverEnv).filter(([k]) => !BROKERED_VARS.includes(k)))
  return { settings, cliPath: settings.claudePath ?? defaultCliPath(), runEnv, broker, sandbox, limits, networks: sandbox !== undefined ? networks : undefined }
}

/** What a launch is held to besides its identity and directory: its limits, its own network. */
export interface Boundaries {
  limits?: RunLimits | undefined
  network?: RunNetwork | undefined
  /** Where the CLI starts (a spare parks in its home, away from the directory it serves). */
  chdir?: string | undefined
}

/**
 * How the executor runs a CLI as `identity` (and in the sandbox, with `cwd` bound, its own
 * network), or as the server; in a control group with its limits where the host allows.
 */
export function executorSettings (l: Launcher, identity: AgentIdentity | undefined, cwd: string, b: Boundaries = {}): ExecutorSettings {
  const sb = l.sandbox
  const limits = b.limits ?? l.settings.runLimits
  const wrap = identity !== undefined && sb !== undefined
    ? sandboxLaunch({
      uid: identity.uid,
      gid: identity.gid,
      cwd,
      ...(b.chdir !== undefined ? { chdir: b.chdir } : {}),
      home: identity.home,
      agentsDir: sb.agentsDir,
      hiddenDirs: sb.hiddenDirs,
      hiddenFiles: sb.hiddenFiles,
      readOnly: sb.readOnly ?? [],
      ...(limits.diskMax !== undefined ? { tmpSize: limits.diskMax } : {}),
      ...(b.network !== undefined ? { network: { args: b.network.sandboxArgs, inner: b.network.inner } } : {})
    }, sb.tools)
    : undefined
  return {
    cliPath: l.cliPath,
    settingSources: l.settings.settingSources,
    maxLineBytes: l.settings.maxLineBytes,
    maxOutputBytes: l.settings.maxOutputBytes,
    killGraceMs: l.settings.killGraceMs,
    mcpServers: l.settings.mcpServers,
    ...(identity !== undefined ? { identity: { uid: identity.uid, gid: identity.gid } } : {}),
    ...(wrap !== undefined ? { wrap } : {}),
    ...(l.limits !== undefined && l.limits.enforced !== 'none' ? { limits: { setup: l.limits, limits } } : {})
  }
}

/**
 * A run's environment and credential: the server's environment as runs may see it, the request's
 * variables, the marker, the identity's home, and a broker token good for this run only (instead
 * of the operator's credential), unless it has one already (a spare's).
 */
export function runEnvironment (l: Launcher, o: { runId: string, env: Record<string, string>, marker: string, identity: AgentIdentity | undefined, credential?: RunCredential | undefined, network?: RunNetwork | undefined, inert?: boolean }): { env: Record<string, string>, credential: RunCredential | undefined, network: RunNetwork | undefined } {
  const env = buildChildEnv(l.runEnv, o.env, o.marker, l.settings.passEnv)
  if (o.identity !== undefined) Object.assign(env, identityEnv(o.identity))
  const fresh = o.credential === undefined && o.network === undefined
  const credential = o.credential ?? l.broker?.issue(o.runId, {
    ...(o.inert === true ? { inert: true } : {}),
    ...(o.identity !== undefined ? { uid: o.identity.uid, marker: o.marker } : {})
  })
  if (credential !== undefined) Object.assign(env, credential.env)
  // A sandboxed run's own network: its token is served on its own socket, and works nowhere else.
  let network = o.network
  if (network === undefined && fresh && l.networks !== undefined && o.identity !== undefined) {
    try {
      network = l.networks.open(o.marker, { uid: o.identity.uid, gid: o.identity.gid }, credential, o.runId)
    } catch (err) {
      credential?.revoke()
      throw err
    }
  }
  if (network !== undefined) Object.assign(env, network.env)
  return { env, credential, network }
}

/**
 * Launch the CLI exactly as a run would (its identity, sandbox and broker token, in the
 * identity's home) but with `--version`, which calls no model. Resolves with why it cannot start,
 * or null when it can.
 */
export async function checkLaunch (l: Launcher, identity: AgentIdentity, marker: string): Promise<string | null> {
  try {
    const { env, credential, network } = runEnvironment(l, { runId: 'self-check', env: {}, marker, identity, inert: true })
    // As a run is launched, its network's relays included; outside any control group (it is brief).
    const { limits: _, ...settings } = executorSettings(l, identity, identity.home, { network })
    const launch = launchOf(l.cliPath, ['--version'], identity.home, env, settings)
    const child = execa(launch.command, launch.args, { ...launch.options, reject: false, timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe', ...launch.fds] })
    trackLaunch(child.pid)
    const r = await child.finally(() => untrackLaunch(child.pid))
    credential?.revoke()
    await network?.close()
    if (r.exitCode !== 0 || !/\d+\.\d+/.test(String(r.stdout))) {
      return launchFailureReason(String(r.stderr), r.exitCode === undefined ? r.shortMessage : undefined) ??
        (String(r.stderr).trim().split('\n').at(-1)?.slice(0, 500) || `exit code ${String(r.exitCode)}`)
    }
    return null
  } catch (err) {
    return (err as Error).message
  }
}

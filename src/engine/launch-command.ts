import type { McpServerDef } from '../domain/mcp.js'
import { accessSync, constants } from 'node:fs'
import { join } from 'node:path'
import type { RunLimits } from '../domain/limits.js'
import { gateScript, rlimitOptions, type LimitsSetup } from '../isolation/limits.js'

// The command line, user, directory and descriptors one CLI is started with: as the server, as an
// agent identity, in the sandbox, and behind the gate of its resource limits.

/** How the executor runs CLIs: the same for every run. */
export interface ExecutorSettings {
  cliPath: string
  settingSources: string
  maxLineBytes: number
  maxOutputBytes: number
  killGraceMs: number
  /** The unprivileged identity the CLI runs as (agent isolation); the server's own when absent. */
  identity?: { uid: number, gid: number }
  /**
   * A program the CLI runs inside (the sandbox): `command args… -- cli cliArgs…`; `privileged`:
   * it starts as the server and drops to `identity` itself.
   */
  wrap?: { command: string, args: string[], privileged: boolean, envFd?: number, inner?: string[] }
  /**
   * Resource limits: the control group the launch is put in before it runs anything (`setup.boxes`),
   * the rlimits it sets itself, and the limits themselves.
   */
  limits?: { setup: LimitsSetup, limits: RunLimits }
  /** The operator's MCP servers (`MCP_CONFIG_FILE`): those a run names are resolved here, where it executes. */
  mcpServers?: Readonly<Record<string, McpServerDef>>
}

/** Changes into the run's directory as the identity, then becomes the CLI. */
const ENTER = 'cd -- "$1" || exit 126; shift; exec "$@"'
/** What the root part of a privileged launch runs with: nothing of the run's. */
const ROOT_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }

/** How one CLI is launched: what runs, and execa's options for where, as whom and with what. */
export interface Launch {
  command: string
  args: string[]
  /** Where it starts, its environment, the user it runs as. */
  options: { cwd: string, env: Record<string, string>, extendEnv: false, uid?: number, gid?: number }
  /** Descriptors from 3 on: the run's environment for a privileged sandbox launch. */
  fds: Uint8Array[]
  /** The launch waits at its gate (the next descriptor) until the server has placed it in its control group. */
  gated: boolean
}

/**
 * How one CLI is spawned: as the server; as an identity, starting in / and entering its directory
 * itself (the server never enters the run's directory for it, where a link the agent swapped in
 * could lead it elsewhere); or in the sandbox, whose privileged launch gets the run's environment
 * through a descriptor (bubblewrap's `--args`), never as the root part's own.
 */
export function launchOf (cli: string, cliArgs: string[], cwd: string, env: Record<string, string>, s: Pick<ExecutorSettings, 'identity' | 'wrap' | 'limits'>): Launch {
  const launch = unlimitedLaunch(cli, cliArgs, cwd, env, s)
  const l = s.limits
  // A CLI that is not there starts nothing to hold: its spawn fails as itself (cli_not_found), not as the gate's.
  if (l === undefined || (s.wrap === undefined && s.identity === undefined && !executable(cli, env.PATH))) return launch
  // Limited: the gate shell goes first, as the same user, and becomes the launch once placed.
  const gateFd = 3 + launch.fds.length
  const rlimits = rlimitOptions(l.limits, l.setup, s.identity !== undefined)
  return { ...launch, command: '/bin/sh', args: ['-c', gateScript(gateFd), 'ccapi-limits', l.setup.prlimit ?? '-', ...rlimits, '--', launch.command, ...launch.args], gated: true }
}

/** Whether `cmd` (a path, or a name looked up in `path`) is an executable file. */
function executable (cmd: string, path: string | undefined): boolean {
  const candidates = cmd.includes('/') ? [cmd] : (path ?? '').split(':').filter(Boolean).map(d => join(d, cmd))
  return candidates.some(c => {
    try {
      accessSync(c, constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

function unlimitedLaunch (cli: string, cliArgs: string[], cwd: string, env: Record<string, string>, s: Pick<ExecutorSettings, 'identity' | 'wrap'>): Launch {
  const id = s.identity
  const as = id !== undefined && s.wrap?.privileged !== true ? { uid: id.uid, gid: id.gid } : {}
  const options = (env: Record<string, string>): Launch['options'] => ({ cwd: id !== undefined ? '/' : cwd, env, extendEnv: false, ...as })
  if (s.wrap === undefined) {
    if (id === undefined) return { command: cli, args: cliArgs, options: options(env), fds: [], gated: false }
    return { command: '/bin/sh', args: ['-c', ENTER, 'ccapi-enter', cwd, cli, ...cliArgs], options: options(env), fds: [], gated: false }
  }
  const args = [...s.wrap.args, '--', ...(s.wrap.inner ?? []), cli, ...cliArgs]
  if (s.wrap.envFd === undefined) return { command: s.wrap.command, args, options: options(env), fds: [], gated: false }
  const settings = ['--clearenv', ...Object.entries(env).flatMap(([k, v]) => ['--setenv', k, v])]
  return { command: s.wrap.command, args, options: options(ROOT_ENV), fds: [Buffer.from(settings.join('\0') + '\0')], gated: false }
}

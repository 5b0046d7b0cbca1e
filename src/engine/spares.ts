import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { prewarm } from '@anthropic-ai/claude-agent-sdk'
import { ownedDirectory, type AgentIdentity } from '../isolation/identities.js'
import { cliSpawner, type CliProcess } from './cli-process.js'
import { executorSettings, runEnvironment, type Launcher } from './launch.js'
import { settingSourcesOf } from './cli-options.js'
import type { RunnerLogger } from '../domain/logger.js'
import type { RunLimits } from '../domain/limits.js'
import { signatureOf, type OptionSet, type WarmSpare } from './warm-pool.js'
import { launchFailureReason } from './launch-health.js'

/** How long a spare may take to park before it counts as failed. */
const SPARE_PARK_TIMEOUT_MS = 30_000

/** What starting a spare takes from the engine. */
export interface SpareContext {
  instanceId: string
  /** This process among the lives of the instance: its spares' markers carry it. */
  bootId: string
  launcher: Launcher
  log: RunnerLogger & { child: (b: object) => RunnerLogger }
  /** The identity a profile ('' for none) runs as. */
  identityOf: (profile: string) => AgentIdentity | undefined
  /** In the sandbox, the one work area a spare of this identity may serve (undefined: any). */
  workAreaOf: (identity: AgentIdentity) => string | undefined
  /** The limits of the key a profile's spare waits for (the server's when unknown). */
  limitsOf?: (profile: string) => RunLimits | undefined
}

/**
 * The warm pool's `start`: start a CLI and park it (the SDK's `prewarm()`), with everything a run would have but its
 * session: the server's options, the identity's user, home and sandbox, a marker of its own
 * (`warm-<instance>-<boot>-<id>`, so a restart finds what a killed server left), and its own
 * broker token.
 */
export function spareStarter (c: SpareContext): (profile: string, set: OptionSet) => Promise<WarmSpare> {
  return async (profile: string, set: OptionSet): Promise<WarmSpare> => {
    const identity = c.identityOf(profile)
    const id = randomUUID()
    const marker = `warm-${c.instanceId}-${c.bootId}-${id}`
    // Its token is inert until a run claims the spare: a process that reads it from the parked CLI gets nothing.
    const { env, credential, network } = runEnvironment(c.launcher, { runId: `spare-${id}`, env: {}, marker, identity, inert: true })
    const settings = c.launcher.settings
    // An identity's spare parks in its home (made its own), never in a directory it will serve.
    let parking: string | undefined
    let onlyCwd: string | undefined
    if (identity !== undefined) {
      parking = join(identity.home, '.spares')
      try {
        ownedDirectory(parking, identity.uid)
        onlyCwd = c.workAreaOf(identity)
      } catch (err) {
        credential?.revoke()
        await network?.close()
        throw err
      }
    }
    let proc: CliProcess | undefined
    const log = c.log.child({ spare: id, ...(identity !== undefined ? { identity: identity.key } : {}) })
    const sessionId = randomUUID()
    const limits = c.limitsOf?.(profile) ?? settings.runLimits
    try {
      const spare = await prewarm({
        options: {
          env,
          pathToClaudeCodeExecutable: c.launcher.cliPath,
          settingSources: settingSourcesOf(settings.settingSources),
          strictMcpConfig: true,
          includePartialMessages: false,
          sessionId,
          // The option set it serves: fixed for its life, as a cold run's flags are.
          ...set,
          ...(settings.allowedPermissionModes.includes('bypassPermissions') ? { allowDangerouslySkipPermissions: true } : {}),
          ...(parking !== undefined ? { cwd: parking } : {}),
          spawnClaudeCodeProcess: cliSpawner(marker, executorSettings(c.launcher, identity, onlyCwd ?? parking ?? settings.defaultWorkingDir, { chdir: onlyCwd !== undefined ? parking : undefined, network, limits }), parking ?? settings.defaultWorkingDir, log, p => { proc = p })
        },
        initializeTimeoutMs: SPARE_PARK_TIMEOUT_MS
      })
      if (proc === undefined) throw new Error('the SDK parked a spare without spawning it')
      log.debug({ session_id: sessionId }, 'warm spare parked')
      return { id, profile, options: signatureOf(set), sessionId, spare, process: proc, limits, ...(credential !== undefined ? { credential } : {}), ...(network !== undefined ? { network } : {}), ...(onlyCwd !== undefined ? { onlyCwd } : {}) }
    } catch (err) {
      credential?.revoke()
      await network?.close()
      await proc?.end(0)
      // What the launch (the sandbox, the identity switch) said is the reason a person can act on.
      const launch = proc === undefined ? undefined : launchFailureReason(proc.stderrTail, (await proc.spawnError())?.message) ?? undefined
      throw Object.assign(new Error(launch ?? (err as Error).message), launch !== undefined ? { launch } : {})
    }
  }
}

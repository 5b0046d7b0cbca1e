import type { RunRequest, RunSpec } from '../domain/run.js'
import { isInside } from '../config.js'
import type { RunLimits } from '../domain/limits.js'
import type { LaunchHealth } from './launch-health.js'
import { spareStarter, type SpareContext } from './spares.js'
import { WarmPool, type ClaimOutcome, type OptionSet, type WarmSpare } from './warm-pool.js'

/** What warm start is built from: what starting a spare takes, and how the pool reports. */
export interface WarmStartDeps extends SpareContext {
  perIdentity: boolean
  /** Memory for spares of the option sets runs send (`WARM_MEMORY_MAX`, bytes). */
  memoryMax?: number
  /** CLIs counted against that memory outside the pool (sessions kept alive). */
  reserved?: () => number
  /** Whether CLIs can be launched: a spare that parks is a launch that works, one that cannot is one that failed. */
  launches: LaunchHealth
  /** A run of a new session started on a spare (`hit`) or cold (`miss`, `refused`). */
  claimed: (outcome: ClaimOutcome) => void
}

/**
 * Warm start (`WARM_SPARES`): CLIs started ahead and parked, each taken by a run of a new session
 * whose options it can take. Refilled in the background by the pool.
 */
export class WarmStart {
  readonly pool: WarmPool
  /** With agent identities, the limits of the key each identity's spares wait for (its last run's). */
  private readonly limits = new Map<string, RunLimits>()

  constructor (target: number, private readonly d: WarmStartDeps) {
    const start = spareStarter({ ...d, limitsOf: profile => this.limits.get(profile) })
    const counted = async (profile: string, set: OptionSet): Promise<WarmSpare> => await start(profile, set).then(spare => {
      d.launches.worked()
      return spare
    }, (err: Error & { launch?: string }) => {
      if (err.launch !== undefined) d.launches.failed(err.launch)
      throw err
    })
    this.pool = new WarmPool({ target, perIdentity: d.perIdentity, memoryMax: d.memoryMax, ...(d.reserved !== undefined ? { reserved: d.reserved } : {}), start: counted, log: d.log })
  }

  /**
   * A spare for a run of a new session, if one is parked for its identity and can take its
   * options (the claim sets directory, model, permission mode and appended system prompt; the
   * rest was fixed when the spare started). Taken synchronously, before admission.
   */
  /**
   * Whether a spare's fixed limits are the run's: its rlimits (a file's size; and where there are
   * no control groups, memory and processes) and its /tmp's size were set when it started.
   */
  private fits (parked: RunLimits | undefined, run: RunLimits | undefined): boolean {
    const a = parked ?? {}
    const b = run ?? {}
    if (a.diskMax !== b.diskMax) return false
    const groups = this.d.launcher.limits?.boxes != null
    return groups || (a.memoryMax === b.memoryMax && a.pidsMax === b.pidsMax)
  }

  take (spec: RunSpec, request: RunRequest): WarmSpare | undefined {
    if (request.session_id !== undefined || spec.sessionMode !== 'new') return undefined
    // The next spare of this identity waits with this key's limits (a new session of its own).
    if (this.d.perIdentity && spec.identity !== undefined && spec.limits !== undefined) this.limits.set(spec.identity, spec.limits)
    const claimable = Object.keys(spec.env).length === 0 && spec.maxBudgetUsd === undefined &&
      spec.outputSchema === undefined && spec.approvals === 'deny' && !spec.includePartialMessages && spec.clientTools === undefined &&
      // A spare's tools and model options were fixed when it started: MCP servers, subagents, effort
      // and a fallback model need a CLI started with them.
      spec.mcpServers === undefined && spec.agents === undefined && spec.effort === undefined && spec.fallbackModel === undefined
    const set = optionSetOf(spec)
    const spare = this.pool.take(spec.identity ?? '', s => claimable && (s.onlyCwd === undefined || isInside(s.onlyCwd, spec.cwd)) && this.fits(s.limits, spec.limits), claimable ? set : {})
    if (spare === undefined) this.d.claimed('miss')
    return spare
  }
}

/**
 * The options of a run that a spare must have been started with (its system prompt, tools and
 * turn limit): spares are kept for the sets runs send.
 */
export function optionSetOf (spec: RunSpec): OptionSet {
  return {
    ...(spec.systemPrompt !== undefined ? { systemPrompt: spec.systemPrompt } : {}),
    ...(spec.allowedTools !== undefined ? { allowedTools: spec.allowedTools } : {}),
    ...(spec.disallowedTools !== undefined ? { disallowedTools: spec.disallowedTools } : {}),
    ...(spec.maxTurns !== undefined ? { maxTurns: spec.maxTurns } : {})
  }
}

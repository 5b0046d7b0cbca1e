import type { RunCredential } from '../isolation/broker.js'
import type { RunNetwork } from '../isolation/run-network.js'
import type { RunnerLogger } from '../domain/logger.js'
import type { RunSpec } from '../domain/run.js'
import type { Adoption, KeptCli } from './executor.js'

/** A session's CLI kept after a run, with what the run had lent it (marker, token, network). */
export interface KeptSession {
  sessionId: string
  /** What the CLI was started with (`keepSignature`): a run adopts it only with the same. */
  signature: string
  cli: KeptCli & { adopt: (run: Adoption) => boolean }
  marker: string
  credential?: RunCredential
  network?: RunNetwork
}

export interface KeeperOptions {
  /** How long a kept CLI waits for its session's next run (`SESSION_KEEPALIVE_S`). */
  keepAliveS: number
  /** How many are kept at most (the oldest goes first). */
  max: number
  /** A kept CLI that is gone (let go, idle too long, died): what it was lent is given back. */
  released: (k: KeptSession) => Promise<void>
  log: RunnerLogger
}

/**
 * Everything a CLI was started with that a run cannot change once it runs: a run continues on a
 * kept CLI only when its own are the same. Undefined for a run whose CLI may not be kept: limits
 * that count the whole process (`max_turns`, `max_budget_usd`), or the client's functions (served
 * by the run that started it).
 */
export function keepSignature (spec: RunSpec): string | undefined {
  if (spec.maxTurns !== undefined || spec.maxBudgetUsd !== undefined || spec.clientTools !== undefined) return undefined
  return JSON.stringify([
    spec.cwd, spec.identity ?? null, spec.permissionMode, spec.model ?? null, spec.systemPrompt ?? null, spec.appendSystemPrompt ?? null,
    spec.allowedTools ?? null, spec.disallowedTools ?? null, spec.outputSchema ?? null, spec.includePartialMessages, spec.mcpServers ?? null,
    spec.agents ?? null, spec.effort ?? null, spec.fallbackModel ?? null, spec.env, spec.approvals, spec.limits ?? null
  ])
}

/**
 * Session keep-alive: when a run of a session ends, its CLI stays alive for `keepAliveS`, and the
 * session's next run is handed to it rather than resuming the session in a new CLI (a chat's next
 * message skips the CLI's start). At most `max` are kept; one left idle that long, one whose
 * session's next run cannot take it, and all of them at shutdown, are ended.
 */
export class SessionKeeper {
  private readonly kept = new Map<string, { k: KeptSession, timer: NodeJS.Timeout }>()
  private closed = false

  constructor (private readonly o: KeeperOptions) {}

  get count (): number { return this.kept.size }

  /** Keep a run's CLI for its session's next run; false when none may be kept (it then ends with its run). */
  keep (k: KeptSession): boolean {
    if (this.closed || this.o.keepAliveS <= 0 || this.o.max <= 0 || this.kept.has(k.sessionId)) return false
    while (this.kept.size >= this.o.max) {
      const oldest = this.kept.keys().next().value as string
      void this.end(oldest)
    }
    // Its token works again only for the run that takes it: nothing the last run left behind can use it meanwhile.
    k.credential?.deactivate()
    const timer = setTimeout(() => { void this.end(k.sessionId) }, this.o.keepAliveS * 1000)
    timer.unref()
    this.kept.set(k.sessionId, { k, timer })
    // Died while kept: what it was lent goes back.
    void k.cli.gone.then(async () => {
      if (this.kept.get(k.sessionId)?.k !== k) return
      clearTimeout(timer)
      this.kept.delete(k.sessionId)
      this.o.log.info({ session_id: k.sessionId }, 'a kept CLI exited between runs')
      await this.o.released(k)
    })
    return true
  }

  /**
   * The session's kept CLI for a run with this signature, taken (the run owns it and what it was
   * lent from here). One that does not fit, or a run that may not continue on one (no signature),
   * ends it first: a session is never written by two CLIs.
   */
  async take (sessionId: string, signature: string | undefined): Promise<KeptSession | undefined> {
    const e = this.kept.get(sessionId)
    if (e === undefined) return undefined
    if (signature === e.k.signature && !e.k.cli.process.ending && !e.k.cli.over()) {
      clearTimeout(e.timer)
      this.kept.delete(sessionId)
      e.k.credential?.activate()
      return e.k
    }
    await this.end(sessionId)
    return undefined
  }

  /** End the session's kept CLI, if any; resolves once it is gone and what it was lent is back. */
  async end (sessionId: string): Promise<void> {
    const e = this.kept.get(sessionId)
    if (e === undefined) return
    clearTimeout(e.timer)
    this.kept.delete(sessionId)
    await e.k.cli.close()
    await this.o.released(e.k)
  }

  /** End every kept CLI, and keep no more. */
  async close (): Promise<void> {
    this.closed = true
    await Promise.all([...this.kept.keys()].map(async id => await this.end(id)))
  }
}

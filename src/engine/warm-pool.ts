import type { SpareProcess } from '@anthropic-ai/claude-agent-sdk'
import type { RunCredential } from '../isolation/broker.js'
import type { RunNetwork } from '../isolation/run-network.js'
import type { RunLimits } from '../domain/limits.js'
import type { CliProcess } from './cli-process.js'
import type { RunnerLogger } from '../domain/logger.js'

/**
 * What a spare's CLI is started with beyond the server's own options, fixed for its life (flags a
 * claim cannot change): a run takes only a spare of its own option set. The empty set is a run
 * that sets none of them.
 */
export interface OptionSet {
  systemPrompt?: string
  allowedTools?: string[]
  disallowedTools?: string[]
  maxTurns?: number
}

/** An option set as one string: equal sets, equal signatures. */
export function signatureOf (set: OptionSet): string {
  return JSON.stringify([set.systemPrompt ?? null, set.allowedTools ?? null, set.disallowedTools ?? null, set.maxTurns ?? null])
}

/** The signature of the empty option set. */
export const PLAIN = signatureOf({})

/** A CLI started ahead of demand and parked by the Agent SDK (`prewarm()`), waiting for a run. */
export interface WarmSpare {
  id: string
  /** The agent identity it runs as (`''`: the server's own user). */
  profile: string
  /** The signature of the option set it was started with (`PLAIN`: none). */
  options: string
  /** The session it will write: fixed when it was started, so a run knows it before the claim. */
  sessionId: string
  spare: SpareProcess
  process: CliProcess
  /** Its own token from the credential broker, handed to the run that takes it. */
  credential?: RunCredential
  /** The limits it was launched with: what its group can change at a claim, its rlimits and /tmp cannot. */
  limits?: RunLimits
  /** Its own network (sandboxed), which the run that takes it keeps. */
  network?: RunNetwork
  /** In the sandbox: the one directory it can serve (the identity's own work area). */
  onlyCwd?: string
}

/**
 * What became of a run of a new session: on a spare, cold for want of one, or cold after a
 * refusal; or a session's next run on the CLI kept from its last (`kept`).
 */
export type ClaimOutcome = 'hit' | 'miss' | 'refused' | 'kept'

export interface WarmPoolOptions {
  /** How many spares to keep parked for runs with no option set (`WARM_SPARES`). */
  target: number
  /** Start and park a spare for a profile and an option set. */
  start: (profile: string, set: OptionSet) => Promise<WarmSpare>
  /**
   * Runs are of one profile (the server's own user) and the pool keeps `target` of it; with agent
   * identities each key's runs have their own, and the pool keeps one spare for each of the
   * `target` identities that started a run most recently.
   */
  perIdentity: boolean
  /**
   * Memory for spares of the option sets runs actually send (`WARM_MEMORY_MAX`, bytes): beyond
   * the spares above, one spare for each option set sent most recently (per identity), as long as
   * every parked spare together stays within it. 0: none.
   */
  memoryMax?: number
  /** CLIs counted against `memoryMax` outside the pool (sessions kept alive). */
  reserved?: () => number
  log: RunnerLogger
}

/** What one parked spare is counted at against `memoryMax` (the SDK's own figure for a parked CLI). */
export const SPARE_BYTES = 256 * 1024 * 1024
/** Option sets remembered, most recent first. */
const MAX_DEMANDS = 32

/** A kind of spare in demand: its identity and its option set, and how often runs asked for it. */
interface Demand {
  profile: string
  options: string
  set: OptionSet
  seen: number
}

const MAX_BACKOFF_MS = 60_000
/** A spare that dies sooner than this after parking counts as a failure to start one. */
const YOUNG_DEATH_MS = 10_000

/**
 * The warm spares: parked CLIs that a run for a new session starts on, saving it the CLI's cold
 * start. Taken synchronously at admission, refilled one at a time in the background (so parking
 * never competes with runs for more than one CPU), replaced when one dies, backing off while
 * starting fails, and all ended at `close()`. A spare is never shared across agent identities.
 */
export class WarmPool {
  private readonly parked: WarmSpare[] = []
  /** Plain kinds in demand, most recent first (without identities, the server's own only). */
  private readonly wanted: Demand[]
  /** Option sets in demand, most recent first: one a run sent once (a prompt made per request) gets no spare. */
  private readonly sets: Demand[] = []
  private starting: Promise<void> | undefined
  private closed = false
  private failures = 0
  private retry: NodeJS.Timeout | undefined
  /** Spares whose process has exited (one handed back then is not parked again). */
  private readonly exited = new Set<string>()

  constructor (private readonly o: WarmPoolOptions) {
    this.wanted = o.perIdentity ? [] : [{ profile: '', options: PLAIN, set: {}, seen: 1 }]
  }

  get target (): number { return this.o.target }
  get parkedCount (): number { return this.parked.length }

  /** Park the first spares. */
  start (): void {
    this.fill()
  }

  /**
   * A parked spare of `profile` that `fits` the run, taken out of the pool (or none). Synchronous,
   * so admission decides on it in the same step. The demand is noted either way, and a refill begins.
   */
  take (profile: string, fits: (s: WarmSpare) => boolean, set: OptionSet = {}): WarmSpare | undefined {
    if (this.closed) return undefined
    const options = signatureOf(set)
    // The identity is in demand whatever its runs send; the option set it sent, too.
    this.want({ profile, options: PLAIN, set: {}, seen: 1 })
    if (options !== PLAIN) this.want({ profile, options, set, seen: 1 })
    const i = this.parked.findIndex(s => s.profile === profile && s.options === options && fits(s))
    const spare = i === -1 ? undefined : this.parked.splice(i, 1)[0]
    // A spare that lived to be taken: starting them works.
    if (spare !== undefined) this.failures = 0
    this.fill()
    return spare
  }

  /** A spare taken for a run that admission refused: parked again if it still lives, else ended. */
  giveBack (s: WarmSpare): void {
    if (this.closed || s.process.ending || this.exited.has(s.id)) {
      void this.discard(s)
      return
    }
    this.parked.push(s)
    this.trim()
  }

  /** A spare taken but not used, whose session id is spoken for: ended (a refill follows). */
  drop (s: WarmSpare): void {
    void this.discard(s)
    this.fill()
  }

  /** End every spare (and one being started), and start no more. */
  async close (): Promise<void> {
    this.closed = true
    clearTimeout(this.retry)
    const all = this.parked.splice(0)
    await Promise.all([...all.map(async s => await this.discard(s)), this.starting])
  }

  private want (d: Demand): void {
    // Each list on its own: one key's option sets never push another identity's plain spare out.
    const list = d.options === PLAIN ? this.wanted : this.sets
    if (d.options === PLAIN && !this.o.perIdentity) return
    const at = list.findIndex(w => w.profile === d.profile && w.options === d.options)
    const seen = at === -1 ? 1 : list[at]!.seen + 1
    if (at !== -1) list.splice(at, 1)
    list.unshift({ ...d, seen })
    list.length = Math.min(list.length, d.options === PLAIN ? this.o.target : MAX_DEMANDS)
    this.trim()
  }

  /**
   * The spares the pool should hold, in order: `target` with no option set (with identities: one
   * for each of the `target` identities in demand most recently), then one for each option set
   * runs sent more than once, most recent first, while they fit in `memoryMax` with what else it
   * counts (`reserved`).
   */
  private slots (): Demand[] {
    const out: Demand[] = []
    if (!this.o.perIdentity) {
      for (let i = 0; i < this.o.target; i++) out.push(this.wanted[0]!)
    } else {
      out.push(...this.wanted)
    }
    let room = Math.floor((this.o.memoryMax ?? 0) / SPARE_BYTES) - out.length - (this.o.reserved?.() ?? 0)
    for (const d of this.sets) {
      if (room <= 0) break
      if (d.seen < 2) continue
      out.push(d)
      room--
    }
    return out
  }

  /** The parked spares each slot is filled by (undefined: still to start), and the spares no slot wants. */
  private matched (): { open: Demand[], extra: WarmSpare[] } {
    const free = [...this.parked]
    const open: Demand[] = []
    for (const d of this.slots()) {
      const i = free.findIndex(s => s.profile === d.profile && s.options === d.options)
      if (i === -1) open.push(d)
      else free.splice(i, 1)
    }
    return { open, extra: free }
  }

  /** The kind the next spare is for: the first slot no parked spare fills. */
  private lacking (): Demand | undefined {
    return this.matched().open[0]
  }

  /** Spares of kinds no longer in demand (or beyond the memory) make room for those that are. */
  private trim (): void {
    for (const s of this.matched().extra) {
      this.parked.splice(this.parked.indexOf(s), 1)
      void this.discard(s)
    }
  }

  private fill (): void {
    if (this.closed || this.starting !== undefined || this.retry !== undefined) return
    const kind = this.lacking()
    if (kind === undefined) return
    this.starting = this.o.start(kind.profile, kind.set).then(async s => {
      if (this.closed) {
        await this.discard(s)
        this.starting = undefined
        return
      }
      this.starting = undefined
      const parkedAt = Date.now()
      void s.spare.exited.then(() => {
        this.exited.add(s.id)
        const at = this.parked.indexOf(s)
        if (at === -1) return
        // Died while parked: its token and leftovers go, and another takes its place (after a
        // pause if it died young, so a CLI that cannot stay up does not spin).
        this.parked.splice(at, 1)
        void this.discard(s)
        this.o.log.warn({ spare: s.id, stderr: s.process.stderrTail.slice(-500) }, 'a parked warm spare exited; starting another')
        if (Date.now() - parkedAt < YOUNG_DEATH_MS) this.failed(new Error('a warm spare exited soon after it parked'))
        else {
          this.failures = 0
          this.fill()
        }
      })
      this.parked.push(s)
      this.trim()
      this.fill()
    }, (err: unknown) => {
      this.starting = undefined
      if (this.closed) return
      if (kind.options === PLAIN) {
        this.failed(err as Error)
        return
      }
      // A set whose spare cannot start is forgotten (its runs start cold); the others go on.
      this.o.log.warn({ err: (err as Error).message }, 'a warm spare for an option set could not start; that set\'s runs start cold')
      const at = this.sets.indexOf(kind)
      if (at !== -1) this.sets.splice(at, 1)
      this.fill()
    })
  }

  /** Starting (or keeping) a spare failed: try again after a pause that doubles each time. */
  private failed (err: Error): void {
    this.failures++
    const wait = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (this.failures - 1))
    this.o.log.warn({ err: err.message, retry_in_ms: wait }, 'starting a warm spare failed; runs start cold meanwhile')
    clearTimeout(this.retry)
    this.retry = setTimeout(() => {
      this.retry = undefined
      this.fill()
    }, wait)
    this.retry.unref()
  }

  private async discard (s: WarmSpare): Promise<void> {
    s.spare.close()
    s.credential?.revoke()
    await s.process.end(0)
    await s.network?.close()
  }
}

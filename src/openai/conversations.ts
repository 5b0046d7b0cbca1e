import { fingerprint, prefixPrints, type Turn } from './messages.js'

// OpenAI clients send the whole history with every request. The server remembers, per key, the
// fingerprint of each conversation it answered (its messages and its answer) and the Claude
// session that holds it, so the next request of that conversation continues that very session
// with only its new turns: the model sees one growing session, tools, files and context intact.

interface Known {
  sessionId: string
  workingDirectory: string
  /** The run that gave the answer. */
  runId: string
  /** No later turn of the session was answered since: it can be continued as it is. */
  head: boolean
  at: number
}

/** How a request's conversation goes on: in a session it continues, or a new one. */
export interface Continuation {
  /** The session to resume (its working directory), when the earlier turns are one the server answered. */
  resume?: { sessionId: string, workingDirectory: string }
  /** The turns answered before (carried into a new session's first prompt when not resumed). */
  earlier: Turn[]
  /** The turns after them: the new prompt. */
  next: Turn[]
  /**
   * A known conversation whose session has moved on since (the request branches from it): the
   * session, and the run whose answer ends the branch point (fork the session there).
   */
  branched?: { sessionId: string, workingDirectory: string, runId: string }
}

/** The conversations of every key, most recent first, within a bound (in memory; per instance). */
export class ConversationIndex {
  private readonly known = new Map<string, Known>()
  /** Each session's latest answered conversation. */
  private readonly heads = new Map<string, Known>()

  constructor (private readonly max = 10_000) {}

  /**
   * Where `turns` (less the new trailing ones) were answered before for `key`: the longest prefix
   * that ends with an assistant turn this server gave. The new turns are what follows it.
   */
  continuation (key: string, system: string | undefined, turns: Turn[]): Continuation {
    const prints = prefixPrints(system, turns)
    for (let k = turns.length - 1; k > 0; k--) {
      if (turns[k - 1]?.role !== 'assistant') continue
      const print = key + ':' + (prints[k - 1] ?? '')
      const hit = this.known.get(print)
      if (hit === undefined) continue
      const earlier = turns.slice(0, k)
      const next = turns.slice(k)
      if (!hit.head) return { earlier, next, branched: { sessionId: hit.sessionId, workingDirectory: hit.workingDirectory, runId: hit.runId } }
      return { resume: { sessionId: hit.sessionId, workingDirectory: hit.workingDirectory }, earlier, next }
    }
    // Not answered here: the trailing user (and tool) turns are new; all before them came with it.
    let k = turns.length
    while (k > 0 && turns[k - 1]?.role !== 'assistant') k--
    return { earlier: turns.slice(0, k), next: turns.slice(k) }
  }

  /** The conversation now ends with `answer`, in `sessionId`; the turns it continued are no longer its head. */
  answered (key: string, system: string | undefined, turns: Turn[], answer: Turn, sessionId: string, workingDirectory: string, runId: string): void {
    const before = this.heads.get(sessionId)
    if (before !== undefined) before.head = false
    const print = key + ':' + fingerprint(system, [...turns, answer])
    const now: Known = { sessionId, workingDirectory, runId, head: true, at: Date.now() }
    this.known.delete(print)
    this.known.set(print, now)
    this.heads.set(sessionId, now)
    while (this.known.size > this.max) {
      const [oldest, entry] = this.known.entries().next().value ?? []
      if (oldest === undefined) break
      this.known.delete(oldest)
      if (entry !== undefined && this.heads.get(entry.sessionId) === entry) this.heads.delete(entry.sessionId)
    }
  }
}

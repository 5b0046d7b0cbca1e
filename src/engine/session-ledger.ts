/**
 * Who owns each session, and which are being deleted: what every admission (in memory on one
 * machine, in SQL in a cluster), the planner and the sessions API consult. Ownership is recorded
 * when a session's first run is admitted or when it is made without a run (a fork), and read from
 * the store at start; it never changes after.
 */
export class SessionLedger {
  private readonly owners = new Map<string, string | null>()
  /** Sessions being deleted: no run of them is admitted meanwhile. */
  private readonly held = new Map<string, number>()

  /** What the store knows at start (a session already recorded here keeps its owner). */
  load (owners: Map<string, string | null>): void {
    for (const [session, key] of owners) if (!this.owners.has(session)) this.owners.set(session, key)
  }

  /** `session` belongs to `owner` (null: made without a key), unless it belongs to someone already. */
  adopt (sessionId: string, owner: string | null): void {
    if (!this.owners.has(sessionId)) this.owners.set(sessionId, owner)
  }

  /** The key that owns a session: undefined when no run has used it. */
  ownerOf (sessionId: string): string | null | undefined {
    return this.owners.get(sessionId)
  }

  /** Whether a session has an owner on record. */
  knows (sessionId: string): boolean {
    return this.owners.has(sessionId)
  }

  /** Admit no run of a session until the returned release is called (it is being deleted). */
  hold (sessionId: string): () => void {
    this.held.set(sessionId, (this.held.get(sessionId) ?? 0) + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const n = (this.held.get(sessionId) ?? 1) - 1
      if (n <= 0) this.held.delete(sessionId)
      else this.held.set(sessionId, n)
    }
  }

  /** Whether a session is being deleted (no run of it may be admitted). */
  isHeld (sessionId: string): boolean {
    return this.held.has(sessionId)
  }
}

import { randomUUID } from 'node:crypto'
import pg from 'pg'
import type { RunResult, UserTurn } from '../domain/run.js'
import type { NewRun, RunRecord } from '../domain/records.js'
import type { RunEnd } from './event-buffer.js'
import { inTransaction } from './pg-pool.js'
import { toRecord, type RunRow } from './rows.js'

/** Committed events: `runId first last origin` (see `PostgresStoreOptions.origin`). */
export const EVENTS_CHANNEL = 'ccapi_events'
/** Runs wait here for an instance with a free slot: notified on every insert. */
const QUEUE_CHANNEL = 'ccapi_queue'
/** Requests between instances (cancel, interrupt, messages, approvals) and their replies. */
const CONTROL_CHANNEL = 'ccapi_control'
/** A notification carries at most 8000 bytes: a larger control message goes through a table. */
const NOTIFY_MAX = 7000

/** What the shared queue needs of the run store: the same writes as its own. */
export interface QueueHost {
  /** Insert a run (and its session) as `RunStore.insertRun` does, on `c`. */
  insertRun: (c: pg.PoolClient, run: NewRun) => Promise<void>
  /** Write a run's end as `RunStore.markFinished` does, on `c`. */
  writeEnd: (c: pg.PoolClient, end: RunEnd) => Promise<void>
  /** `RunStore.lastSeq`: waiting events of this process included. */
  lastSeq: (runId: string) => Promise<number>
}

/** What cluster admission decides on, read under the key's and sessions' locks. */
export interface AdmissionCounts {
  /** The owner of each claimed session that exists. */
  owners: Map<string, string | null>
  /** The key's runs queued or running (0 unless asked for). */
  keyLive: number
  /** What the key spent since `spentSince` (0 unless asked for). */
  keySpent: number
  /** Runs queued, and running, in the cluster. */
  queued: number
  running: number
  /** `MAX_CONCURRENT_RUNS` of every instance alive. */
  slots: number
}

/** What admission reads for a run. */
export interface AdmissionAsk {
  /** The run's key (locked, its runs counted), null without one. */
  key: string | null
  /** The sessions the run continues (locked, their owners read). */
  sessions: string[]
  /** Count the key's live runs. */
  keyLive: boolean
  /** Sum what the key spent since then (absent: not needed). */
  spentSince?: number
  /** Instances heard from since then count with their slots. */
  aliveSince: number
}

/** A run claimed from the queue, with the messages that waited for it. */
export interface Claimed {
  record: RunRecord
  messages: Array<{ id: string, turn: UserTurn }>
}

/** An instance as the others see it. */
export interface InstanceRow { startedAt: number, heartbeatAt: number, stoppedAt: number | null }

/** What the notification connection hears. */
export interface Notifications {
  /** Events committed (`runId first last origin`). */
  events: (payload: string) => void
  /** A run may be waiting in the queue. */
  queue: () => void
  /** A control message for some instance (read it with `receiveControl`). */
  control: (payload: string) => void
}

/**
 * The shared queue of a cluster, in the PostgreSQL run store: the instances and their heartbeats,
 * admission against the whole cluster in the transaction that records a run, claims (`FOR UPDATE
 * SKIP LOCKED`, one session's runs in order), releases and reaping, messages for runs nobody holds
 * yet, and notifications between instances (NOTIFY, and one LISTEN connection). Its rules are
 * the caller's: admission is decided by the `decide` it is given.
 */
export class PostgresQueue {
  constructor (private readonly pool: pg.Pool, private readonly url: string, private readonly host: QueueHost) {}

  /** An instance joins (or comes back): alive from `now`. */
  async join (instance: { id: string, host: string, maxConcurrent: number }, now: number): Promise<void> {
    await this.pool.query(`INSERT INTO instances (id, host, started_at, heartbeat_at, max_concurrent) VALUES ($1, $2, $3, $3, $4)
      ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, max_concurrent = EXCLUDED.max_concurrent, stopped_at = NULL`,
    [instance.id, instance.host, now, instance.maxConcurrent])
  }

  /** An instance is alive at `now`: how many are, counting those heard from since `aliveSince`. */
  async heartbeat (id: string, now: number, aliveSince: number): Promise<number> {
    await this.pool.query('UPDATE instances SET heartbeat_at = $1 WHERE id = $2', [now, id])
    const { rows } = await this.pool.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM instances WHERE stopped_at IS NULL AND heartbeat_at >= $1', [aliveSince])
    return rows[0]?.n ?? 1
  }

  /** An instance leaves. */
  async leave (id: string, now: number): Promise<void> {
    await this.pool.query('UPDATE instances SET stopped_at = $1 WHERE id = $2', [now, id])
  }

  async instance (id: string): Promise<InstanceRow | undefined> {
    const { rows } = await this.pool.query<{ started_at: number, heartbeat_at: number, stopped_at: number | null }>('SELECT started_at, heartbeat_at, stopped_at FROM instances WHERE id = $1', [id])
    const i = rows[0]
    return i === undefined ? undefined : { startedAt: i.started_at, heartbeatAt: i.heartbeat_at, stoppedAt: i.stopped_at }
  }

  /**
   * Admit a run to the queue, in one transaction with its insert: the key's and the sessions'
   * advisory locks first (sorted, so two instances admitting at once see each other and never
   * deadlock), then what admission decides on, then `decide` (which throws to refuse), then the
   * insert. The instances are told once it is committed.
   */
  async admit (run: NewRun, ask: AdmissionAsk, decide: (counts: AdmissionCounts) => void): Promise<void> {
    await inTransaction(this.pool, async c => {
      const locks = [...(ask.key !== null ? [`key:${ask.key}`] : []), ...ask.sessions.map(s => `session:${s}`)].sort()
      for (const l of locks) await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [l])
      const owners = await c.query<{ id: string, key_name: string | null }>('SELECT id, key_name FROM sessions WHERE id = ANY($1)', [ask.sessions])
      let keyLive = 0
      if (ask.key !== null && ask.keyLive) {
        const { rows } = await c.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM runs WHERE key_name = $1 AND status IN (\'queued\', \'running\')', [ask.key])
        keyLive = rows[0]?.n ?? 0
      }
      let keySpent = 0
      if (ask.key !== null && ask.spentSince !== undefined) {
        const { rows } = await c.query<{ usd: number }>('SELECT COALESCE(SUM((result::jsonb->>\'total_cost_usd\')::float8), 0) AS usd FROM runs WHERE key_name = $1 AND ended_at >= $2', [ask.key, ask.spentSince])
        keySpent = Number(rows[0]?.usd ?? 0)
      }
      const { rows } = await c.query<{ queued: number, slots: number, running: number }>(`SELECT
        (SELECT COUNT(*)::int FROM runs WHERE status = 'queued') AS queued,
        (SELECT COALESCE(SUM(max_concurrent), 0)::int FROM instances WHERE stopped_at IS NULL AND heartbeat_at >= $1) AS slots,
        (SELECT COUNT(*)::int FROM runs WHERE status = 'running') AS running`, [ask.aliveSince])
      const { queued, slots, running } = rows[0]!
      decide({ owners: new Map(owners.rows.map(r => [r.id, r.key_name])), keyLive, keySpent, queued, running, slots })
      await this.host.insertRun(c, run)
    })
    await this.notify(QUEUE_CHANNEL, run.id).catch(() => {})
  }

  /**
   * Claim the oldest queued run that may start: unclaimed, and the first live run of its session
   * (one session's runs go one at a time, in order, across the cluster). Locked rows are skipped,
   * so instances claiming at once never take the same run. The run stays `queued`, owned by
   * `owner` under a lease, until it is marked started; the messages that waited for it are its.
   */
  async claim (owner: string, leaseUntil: number): Promise<Claimed | undefined> {
    return await inTransaction(this.pool, async c => {
      const { rows } = await c.query<RunRow>(`UPDATE runs SET owner = $1, lease_until = $2 WHERE id = (
          SELECT r.id FROM runs r WHERE r.status = 'queued' AND r.owner IS NULL
            AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.session_id = r.session_id AND o.rowid < r.rowid AND o.status IN ('queued', 'running'))
          ORDER BY r.rowid LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING *`, [owner, leaseUntil])
      if (rows[0] === undefined) return undefined
      const record = toRecord(rows[0])
      const msgs = await c.query<{ id: string, turn: string }>('SELECT id, turn FROM queued_messages WHERE run_id = $1 ORDER BY rowid', [record.id])
      if (msgs.rows.length > 0) await c.query('DELETE FROM queued_messages WHERE run_id = $1', [record.id])
      return { record, messages: msgs.rows.map(m => ({ id: m.id, turn: JSON.parse(m.turn) as UserTurn })) }
    })
  }

  /** Give claimed runs that never started back to the queue (their owner is stopping). */
  async release (owner: string, runIds: string[]): Promise<void> {
    if (runIds.length === 0) return
    await this.pool.query('UPDATE runs SET owner = NULL, lease_until = NULL WHERE id = ANY($1) AND status = \'queued\' AND owner = $2', [runIds, owner])
    await this.notify(QUEUE_CHANNEL, 'released').catch(() => {})
  }

  /**
   * Runs whose owner stopped renewing their lease (before `now`) and went silent (no heartbeat
   * since `aliveSince`: a busy instance late with a renewal keeps its runs): claimed ones that
   * never started go back to the queue; running ones become `owner`'s under `leaseUntil`, to end
   * (returned).
   */
  async reap (owner: string, now: number, leaseUntil: number, aliveSince: number): Promise<RunRecord[]> {
    const silent = (param: string): string => `owner NOT IN (SELECT id FROM instances WHERE stopped_at IS NULL AND heartbeat_at >= ${param})`
    const back = await this.pool.query(`UPDATE runs SET owner = NULL, lease_until = NULL WHERE status = 'queued' AND owner IS NOT NULL AND lease_until < $1 AND ${silent('$2')}`, [now, aliveSince])
    if ((back.rowCount ?? 0) > 0) await this.notify(QUEUE_CHANNEL, 'reaped').catch(() => {})
    const { rows } = await this.pool.query<RunRow>(`UPDATE runs SET owner = $1, lease_until = $2 WHERE id IN (
        SELECT id FROM runs WHERE status = 'running' AND (owner IS NULL OR (owner <> $1 AND ${silent('$4')})) AND (lease_until IS NULL OR lease_until < $3) FOR UPDATE SKIP LOCKED)
      RETURNING *`, [owner, leaseUntil, now, aliveSince])
    return rows.map(toRecord)
  }

  /** Queued runs of `/api/execute*` that `instanceId` accepted (their clients waited on it), nobody's yet. */
  async clientRunsOf (instanceId: string): Promise<string[]> {
    const { rows } = await this.pool.query<{ id: string }>(`SELECT id FROM runs WHERE status = 'queued' AND owner IS NULL AND cancel_on_disconnect
      AND spec LIKE '%"submittedBy":"' || $1 || '"%' ORDER BY rowid`, [instanceId])
    return rows.map(r => r.id)
  }

  /** Queued runs nobody has claimed whose time limit, counted from submission, has passed by `now`. */
  async overdue (now: number): Promise<string[]> {
    const { rows } = await this.pool.query<{ id: string }>(`SELECT id FROM runs WHERE status = 'queued' AND owner IS NULL AND spec IS NOT NULL
      AND created_at + (spec::jsonb->>'timeoutS')::bigint * 1000 <= $1 ORDER BY rowid LIMIT 100`, [now])
    return rows.map(r => r.id)
  }

  /** Runs waiting in the queue (not claimed). */
  async waiting (): Promise<number> {
    const { rows } = await this.pool.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM runs WHERE status = \'queued\' AND owner IS NULL')
    return rows[0]?.n ?? 0
  }

  /** A queued run's place in the queue (1-based; 1 once claimed and starting), null when it is not queued. */
  async positionOf (runId: string): Promise<number | null> {
    const { rows } = await this.pool.query<{ n: number | null }>(`SELECT CASE WHEN r.owner IS NOT NULL THEN 1 ELSE
        (SELECT COUNT(*)::int FROM runs o WHERE o.status = 'queued' AND o.owner IS NULL AND o.rowid <= r.rowid) END AS n
      FROM runs r WHERE r.id = $1 AND r.status = 'queued'`, [runId])
    return rows[0]?.n ?? null
  }

  /** The live runs `owner` holds (running, or claimed), oldest first. */
  async heldBy (owner: string): Promise<RunRecord[]> {
    const { rows } = await this.pool.query<RunRow>('SELECT * FROM runs WHERE owner = $1 AND status IN (\'queued\', \'running\') ORDER BY rowid', [owner])
    return rows.map(toRecord)
  }

  /**
   * End a queued run that no instance has claimed, in one transaction: its end (`end` gives the
   * result; written as `markFinished` writes one) and the messages that waited for it go. Returns
   * the record as it was, the result, and the seq its `result` event takes; undefined when it is
   * claimed, running or over.
   */
  async cancelQueued (runId: string, end: (r: RunRecord) => RunResult): Promise<{ record: RunRecord, result: RunResult, seq: number } | undefined> {
    return await inTransaction(this.pool, async c => {
      const { rows } = await c.query<RunRow>('SELECT * FROM runs WHERE id = $1 AND status = \'queued\' AND owner IS NULL FOR UPDATE', [runId])
      if (rows[0] === undefined) return undefined
      const record = toRecord(rows[0])
      const result = end(record)
      const endedAt = Date.parse(result.timestamp)
      await this.host.writeEnd(c, { runId, status: result.status, result: JSON.stringify(result), endedAt: Number.isFinite(endedAt) ? endedAt : Date.now() })
      await c.query('DELETE FROM queued_messages WHERE run_id = $1', [runId])
      return { record, result, seq: await this.host.lastSeq(runId) + 1 }
    })
  }

  /**
   * Leave a message for a run: kept for its claimer when nobody holds it yet (`queued`), else the
   * instance that holds it (`owner`), or nothing (`finished`). The run's row is locked: `check`
   * (which throws when the message does not fit beside those waiting) and the insert are one
   * decision, whichever instance posts.
   */
  async postMessage (runId: string, m: { id: string, turn: UserTurn, bytes: number }, check: (waiting: { messages: number, bytes: number }) => void): Promise<{ queued: true } | { owner: string } | { finished: true }> {
    return await inTransaction(this.pool, async c => {
      const { rows } = await c.query<{ status: string, owner: string | null }>('SELECT status, owner FROM runs WHERE id = $1 FOR UPDATE', [runId])
      const r = rows[0]
      if (r === undefined || (r.status !== 'queued' && r.status !== 'running')) return { finished: true as const }
      if (r.owner !== null) return { owner: r.owner }
      const held = await c.query<{ n: number, bytes: number }>('SELECT COUNT(*)::int AS n, COALESCE(SUM(bytes), 0)::bigint AS bytes FROM queued_messages WHERE run_id = $1', [runId])
      check({ messages: held.rows[0]?.n ?? 0, bytes: held.rows[0]?.bytes ?? 0 })
      await c.query('INSERT INTO queued_messages (run_id, id, turn, bytes) VALUES ($1, $2, $3, $4)', [runId, m.id, JSON.stringify(m.turn), m.bytes])
      return { queued: true as const }
    })
  }

  /** The instance that holds a run now (null: nobody, it is queued or over). */
  async ownerOf (runId: string): Promise<string | null> {
    const { rows } = await this.pool.query<{ owner: string | null }>('SELECT owner FROM runs WHERE id = $1 AND status IN (\'queued\', \'running\')', [runId])
    return rows[0]?.owner ?? null
  }

  /**
   * Send a control message (JSON, with `to`) to instance `to`. One too big for a notification
   * waits in a row the receiver takes; the notification then carries `{ to, ref }`.
   */
  async sendControl (to: string, message: string): Promise<void> {
    let payload = message
    if (Buffer.byteLength(payload) > NOTIFY_MAX) {
      const ref = randomUUID()
      await this.pool.query('INSERT INTO queued_messages (run_id, id, turn) VALUES ($1, $2, $3)', [`control:${ref}`, ref, payload])
      payload = JSON.stringify({ to, ref })
    }
    await this.notify(CONTROL_CHANNEL, payload)
  }

  /** The control message a notification carries for `me`: undefined when it is another's (or unreadable, or taken). */
  async receiveControl<T extends { to: string }> (payload: string, me: string): Promise<T | undefined> {
    try {
      const m = JSON.parse(payload) as T & { ref?: string }
      if (m.to !== me) return undefined
      if (m.ref === undefined) return m
      const { rows } = await this.pool.query<{ turn: string }>('DELETE FROM queued_messages WHERE run_id = $1 RETURNING turn', [`control:${m.ref}`])
      return rows[0] === undefined ? undefined : JSON.parse(rows[0].turn) as T
    } catch {
      return undefined
    }
  }

  /**
   * Listen for events, queue and control notifications on a connection of its own (a pooled one
   * would drop them), to the store's database or `url`. Resolves once listening; the returned
   * function stops.
   */
  async listen (on: Notifications, onError: (err: Error) => void, url = this.url): Promise<() => Promise<void>> {
    const client = new pg.Client({ connectionString: url })
    client.on('error', onError)
    const stop = async (): Promise<void> => { await client.end().catch(() => {}) }
    try {
      await client.connect()
      client.on('notification', n => {
        const payload = n.payload ?? ''
        if (n.channel === EVENTS_CHANNEL) on.events(payload)
        else if (n.channel === QUEUE_CHANNEL) on.queue()
        else if (n.channel === CONTROL_CHANNEL) on.control(payload)
      })
      for (const ch of [EVENTS_CHANNEL, QUEUE_CHANNEL, CONTROL_CHANNEL]) await client.query(`LISTEN ${ch}`)
    } catch (err) {
      await stop()
      throw err
    }
    return stop
  }

  private async notify (channel: string, payload: string): Promise<void> {
    await this.pool.query('SELECT pg_notify($1, $2)', [channel, payload])
  }
}

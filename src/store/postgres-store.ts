import type pg from 'pg'
import type { Batch, BufferOptions, PendingEvent } from './event-buffer.js'
import { inTransaction, openPool } from './pg-pool.js'
import { PostgresTranscripts } from './pg-transcripts.js'
import { EVENTS_CHANNEL, PostgresQueue } from './postgres-queue.js'
import { POSTGRES, type Query } from './sql.js'
import { endQueries, insertQueries, SqlRunStore, type SqlDatabase } from './sql-store.js'

/** Events in one insert: 4 arguments each, well within PostgreSQL's 65,535. */
const INSERT_ROWS = 5000

export interface PostgresStoreOptions extends BufferOptions {
  /** `postgres://user:pass@host:port/db` */
  url: string
  /** Connections in the pool. */
  poolSize?: number
  /**
   * Cluster mode: each write of events also notifies `ccapi_events` with `runId first last
   * origin`, in the same transaction (delivered once committed), so other instances' followers
   * read them from the table.
   */
  origin?: string
}

/** One insert of events; a `(runId, seq)` stored already is skipped. */
function insertEvents (events: PendingEvent[]): Query {
  const rows: string[] = []
  const values: unknown[] = []
  for (const e of events) {
    rows.push(`($${values.length + 1}, $${values.length + 2}, $${values.length + 3}, $${values.length + 4})`)
    values.push(e.runId, e.seq, e.type, e.data)
  }
  return { text: `INSERT INTO events (run_id, seq, type, data) VALUES ${rows.join(', ')} ON CONFLICT DO NOTHING`, values }
}

/** What `ccapi_events` says of a batch: for each run, `runId first last origin`. */
function notes (events: PendingEvent[], origin: string): string[] {
  const spans = new Map<string, [number, number]>()
  for (const e of events) {
    const span = spans.get(e.runId)
    if (span === undefined) spans.set(e.runId, [e.seq, e.seq])
    else span[1] = e.seq
  }
  return [...spans].map(([runId, [first, last]]) => `${runId} ${first} ${last} ${origin}`)
}

/**
 * The run store of a cluster, in PostgreSQL: the same tables as the embedded store, shared by
 * every instance, and the same rules (`SqlRunStore`): event appends are buffered, visible to this
 * process at once and written in one transaction (with their notification, in cluster mode) at
 * most every `flushIntervalMs`. It also holds what only a cluster has: the shared queue
 * (`queue`) and the session transcripts (`transcripts`). Open with `PostgresRunStore.open()`,
 * which applies the migrations first.
 */
export class PostgresRunStore extends SqlRunStore {
  protected readonly sql: SqlDatabase
  /** Cluster mode: the shared queue, the instances, and the notifications between them. */
  readonly queue: PostgresQueue
  /** Cluster mode: session transcripts. */
  readonly transcripts: PostgresTranscripts

  private constructor (private readonly pool: pg.Pool, private readonly opts: PostgresStoreOptions) {
    super(POSTGRES, opts)
    this.sql = {
      all: async <T>(text: string, values?: unknown[]) => (await pool.query(text, values)).rows as T[],
      run: async (text, values) => (await pool.query(text, values)).rowCount ?? 0,
      atomically: async queries => { await this.transaction(queries) }
    }
    this.queue = new PostgresQueue(pool, opts.url, {
      insertRun: async (c, run) => { await this.run(c, insertQueries(this.q, run)) },
      writeEnd: async (c, end) => { await this.run(c, endQueries(this.q, end)) },
      lastSeq: async runId => await this.lastSeq(runId)
    })
    this.transcripts = new PostgresTranscripts(pool)
  }

  /** Connect, apply what migrations are missing (one instance at a time), and return the store. */
  static async open (opts: PostgresStoreOptions): Promise<PostgresRunStore> {
    return new PostgresRunStore(await openPool(opts.url, opts.poolSize ?? 10, opts.onError), opts)
  }

  protected async writeBatch (batch: Batch): Promise<void> {
    const queries: Query[] = []
    for (let i = 0; i < batch.events.length; i += INSERT_ROWS) queries.push(insertEvents(batch.events.slice(i, i + INSERT_ROWS)))
    for (const end of batch.ends) queries.push(...endQueries(this.q, end))
    if (this.opts.origin !== undefined && batch.events.length > 0) {
      queries.push({ text: `SELECT pg_notify('${EVENTS_CHANNEL}', n) FROM unnest($1::text[]) AS n`, values: [notes(batch.events, this.opts.origin)] })
    }
    if (queries.length === 1) await this.pool.query(queries[0]!.text, queries[0]!.values)
    else await this.transaction(queries)
  }

  protected async release (): Promise<void> {
    await this.pool.end()
  }

  private async transaction (queries: Query[]): Promise<void> {
    await inTransaction(this.pool, async c => { await this.run(c, queries) })
  }

  private async run (c: pg.PoolClient, queries: Query[]): Promise<void> {
    for (const q of queries) await c.query(q.text, q.values)
  }
}

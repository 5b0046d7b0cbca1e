import Database from 'better-sqlite3'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { Checkpointer } from './checkpointer.js'
import { createPrivateFile } from './data-dir-lock.js'
import type { Batch, BufferOptions } from './event-buffer.js'
import { MIGRATIONS } from './migrations.js'
import { SQLITE, type Query } from './sql.js'
import { endQueries, SqlRunStore, type SqlDatabase } from './sql-store.js'

export type { RunRecord, StoredEvent, WebhookDelivery } from '../domain/records.js'

export interface RunStoreOptions extends BufferOptions {
  /** Directory of the database file; `:memory:` for a throwaway store. */
  dataDir: string
}

/**
 * Arguments as SQLite binds them: by name (`$1` is the name `1`), booleans as 0/1, lists as JSON
 * text (read with `json_each`).
 */
function bind (values: unknown[]): Record<string, unknown> {
  const named: Record<string, unknown> = {}
  values.forEach((v, i) => { named[i + 1] = typeof v === 'boolean' ? (v ? 1 : 0) : Array.isArray(v) ? JSON.stringify(v) : v })
  return named
}

/**
 * The embedded run store of one machine: one row per run and an append-only event log per run, in
 * SQLite (WAL). Event appends are batched (`EventBuffer`): they wait in memory at most
 * `flushIntervalMs` and are written in one transaction, so a chatty run is not slowed by the disk.
 * SQLite answers synchronously: a batch is written before `appendEvent` or `flush()` returns.
 */
export class SqliteRunStore extends SqlRunStore {
  private readonly db: Database.Database
  private readonly statements = new Map<string, Database.Statement>()
  private readonly checkpointer: Checkpointer | undefined
  protected readonly sql: SqlDatabase

  constructor (opts: RunStoreOptions) {
    super(SQLITE, opts)
    let file = ':memory:'
    if (opts.dataDir !== ':memory:') {
      mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 })
      file = join(opts.dataDir, 'runs.db')
      // Every prompt and output is in it (and SQLite gives -wal and -shm the file's own mode).
      createPrivateFile(file)
    }
    this.db = new Database(file)
    this.db.pragma('journal_mode = WAL')
    // WAL with NORMAL sync is durable against process crashes (kill -9), which is what we need.
    this.db.pragma('synchronous = NORMAL')
    this.db.pragma('busy_timeout = 5000')
    this.migrate()
    if (file !== ':memory:') {
      // Checkpoints happen off the event loop (their fsync would stall live events).
      this.db.pragma('wal_autocheckpoint = 0')
      this.checkpointer = new Checkpointer(file)
    }
    this.sql = {
      all: async <T>(text: string, values: unknown[] = []) => this.prepared(text).all(bind(values)) as T[],
      run: async (text, values = []) => this.prepared(text).run(bind(values)).changes,
      atomically: async queries => { this.transaction(queries) },
      iterate: <T>(text: string, values: unknown[] = []) => this.prepared(text).iterate(bind(values)) as Iterable<T>
    }
  }

  private migrate (): void {
    const version = this.db.pragma('user_version', { simple: true }) as number
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!)
        this.db.pragma(`user_version = ${v + 1}`)
      })()
    }
  }

  /** A statement, prepared once. */
  private prepared (text: string): Database.Statement {
    let s = this.statements.get(text)
    if (s === undefined) {
      s = this.db.prepare(text)
      this.statements.set(text, s)
    }
    return s
  }

  private transaction (queries: Query[]): void {
    this.db.transaction(() => {
      for (const q of queries) this.prepared(q.text).run(bind(q.values))
    })()
  }

  protected writeBatch (batch: Batch): void {
    const insert = this.prepared(this.q.insertEvent)
    this.db.transaction(() => {
      for (const e of batch.events) insert.run(bind([e.runId, e.seq, e.type, e.data]))
      for (const end of batch.ends) for (const q of endQueries(this.q, end)) this.prepared(q.text).run(bind(q.values))
    })()
  }

  protected async release (): Promise<void> {
    this.db.close()
    await this.checkpointer?.close()
  }
}

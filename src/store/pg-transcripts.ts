import type { SessionKey, SessionStoreEntry } from '@anthropic-ai/claude-agent-sdk'
import { createHash } from 'node:crypto'
import type pg from 'pg'
import { inTransaction } from './pg-pool.js'

/**
 * The `transcripts` table of the PostgreSQL store (cluster mode): session transcripts, entry by
 * entry, in order. Each entry is written once: by its `uuid`, or (titles, tags and the like have
 * none) by its content, so a retried batch or a second copy of the same file adds nothing.
 */
export class PostgresTranscripts {
  constructor (private readonly pool: pg.Pool) {}

  async append (key: SessionKey, entries: SessionStoreEntry[]): Promise<void> {
    await this.insert(this.pool, key, entries)
  }

  private async insert (client: pg.Pool | pg.PoolClient, key: SessionKey, entries: SessionStoreEntry[]): Promise<void> {
    if (entries.length === 0) return
    const values: string[] = []
    const args: unknown[] = [key.projectKey, key.sessionId, key.subpath ?? '', Date.now()]
    for (const e of entries) {
      const text = JSON.stringify(e)
      args.push(typeof e.uuid === 'string' ? e.uuid : `sha256:${createHash('sha256').update(text).digest('hex')}`, text)
      values.push(`($1, $2, $3, $${args.length - 1}, $${args.length}, $4)`)
    }
    await client.query(`INSERT INTO transcripts (project_key, session_id, subpath, uuid, entry, written_at) VALUES ${values.join(', ')}
      ON CONFLICT (project_key, session_id, subpath, uuid) WHERE uuid IS NOT NULL DO NOTHING`, args)
  }

  /** A transcript's entries in order; null when none is stored. */
  async load (key: SessionKey): Promise<SessionStoreEntry[] | null> {
    const { rows } = await this.pool.query<{ entry: string }>('SELECT entry FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath = $3 ORDER BY n',
      [key.sessionId, key.projectKey, key.subpath ?? ''])
    return rows.length === 0 ? null : rows.map(r => JSON.parse(r.entry) as SessionStoreEntry)
  }

  /** The sessions of a project, with when each was last written. */
  async listSessions (projectKey: string): Promise<Array<{ sessionId: string, mtime: number }>> {
    const { rows } = await this.pool.query<{ session_id: string, mtime: number }>(
      'SELECT session_id, MAX(written_at) AS mtime FROM transcripts WHERE project_key = $1 AND subpath = \'\' GROUP BY session_id', [projectKey])
    return rows.map(r => ({ sessionId: r.session_id, mtime: Number(r.mtime) }))
  }

  async listSubkeys (key: { projectKey: string, sessionId: string }): Promise<string[]> {
    const { rows } = await this.pool.query<{ subpath: string }>('SELECT DISTINCT subpath FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath <> \'\'',
      [key.sessionId, key.projectKey])
    return rows.map(r => r.subpath)
  }

  /** Delete a transcript: one subpath's, or (none given) the session's whole in that project. */
  async delete (key: SessionKey): Promise<void> {
    if (key.subpath === undefined) await this.pool.query('DELETE FROM transcripts WHERE session_id = $1 AND project_key = $2', [key.sessionId, key.projectKey])
    else await this.pool.query('DELETE FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath = $3', [key.sessionId, key.projectKey, key.subpath])
  }

  /** Replace a session's main transcript in one project with `entries`, in one transaction. */
  async replace (key: { projectKey: string, sessionId: string }, entries: SessionStoreEntry[]): Promise<void> {
    await inTransaction(this.pool, async c => {
      await c.query('DELETE FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath = \'\'', [key.sessionId, key.projectKey])
      await this.insert(c, key, entries)
    })
  }

  /** A session's main transcript in every project that has one, entries in order. */
  async ofSession (sessionId: string): Promise<Map<string, SessionStoreEntry[]>> {
    const { rows } = await this.pool.query<{ project_key: string, entry: string }>('SELECT project_key, entry FROM transcripts WHERE session_id = $1 AND subpath = \'\' ORDER BY n', [sessionId])
    const byProject = new Map<string, SessionStoreEntry[]>()
    for (const r of rows) {
      const list = byProject.get(r.project_key) ?? []
      list.push(JSON.parse(r.entry) as SessionStoreEntry)
      byProject.set(r.project_key, list)
    }
    return byProject
  }

  /** Whether any instance has written this session. */
  async has (sessionId: string): Promise<boolean> {
    const { rows } = await this.pool.query('SELECT 1 FROM transcripts WHERE session_id = $1 AND subpath = \'\' LIMIT 1', [sessionId])
    return rows.length > 0
  }
}

import type { SessionKey, SessionStore, SessionStoreEntry } from '@anthropic-ai/claude-agent-sdk'
import { createHash } from 'node:crypto'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import type pg from 'pg'
import { TranscriptFiles } from '../sessions/transcript-files.js'
import { inTransaction } from '../store/postgres-store.js'

/**
 * Session transcripts in PostgreSQL, behind the Agent SDK's `SessionStore` interface (the sessions
 * API reads and changes them through the SDK's session functions). The CLI's file stays the
 * working copy: a run that continues a session writes the stored transcript to the file first
 * (`materialise`), and the file is copied back whole when the run ends (`copyFrom`). One
 * session's runs go one at a time across the cluster, so each starts from the last one's end. Each entry is written once: by its
 * `uuid`, or (titles, tags and the like have none) by its content, so a retried batch or a second
 * copy of the same file adds nothing.
 */
export class PostgresTranscriptStore implements SessionStore {
  constructor (private readonly pool: pg.Pool) {}

  async append (key: SessionKey, entries: SessionStoreEntry[], client: pg.Pool | pg.PoolClient = this.pool): Promise<void> {
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

  async load (key: SessionKey): Promise<SessionStoreEntry[] | null> {
    const { rows } = await this.pool.query<{ entry: string }>('SELECT entry FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath = $3 ORDER BY n',
      [key.sessionId, key.projectKey, key.subpath ?? ''])
    return rows.length === 0 ? null : rows.map(r => JSON.parse(r.entry) as SessionStoreEntry)
  }

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

  async delete (key: SessionKey): Promise<void> {
    if (key.subpath === undefined) await this.pool.query('DELETE FROM transcripts WHERE session_id = $1 AND project_key = $2', [key.sessionId, key.projectKey])
    else await this.pool.query('DELETE FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath = $3', [key.sessionId, key.projectKey, key.subpath])
  }

  /** A view for one request that also notes each loaded entry's timestamp (the SDK's messages lack it). */
  reading (): SessionStore & { timestamps: Map<string, string> } {
    const timestamps = new Map<string, string>()
    return {
      timestamps,
      append: async (key, entries) => { await this.append(key, entries) },
      load: async key => {
        const entries = await this.load(key)
        for (const e of entries ?? []) if (typeof e.uuid === 'string' && typeof e.timestamp === 'string') timestamps.set(e.uuid, e.timestamp)
        return entries
      },
      listSessions: async projectKey => await this.listSessions(projectKey),
      listSubkeys: async key => await this.listSubkeys(key),
      delete: async key => { await this.delete(key) }
    }
  }

  /**
   * Copy a session's transcript from the CLI's files in `configDir` (what the SDK's mirror had not
   * sent when the CLI ended); entries already here are skipped.
   */
  async copyFrom (configDir: string, owner: { uid: number, gid: number } | undefined, sessionId: string): Promise<void> {
    let projects: string[]
    try {
      projects = await readdir(join(configDir, 'projects'))
    } catch {
      return
    }
    const files = new TranscriptFiles(configDir, owner)
    for (const projectKey of projects) {
      const entries = await files.load({ projectKey, sessionId }).catch(() => null)
      if (entries === null || entries.length === 0) continue
      // The file is the whole transcript, in order: it replaces what was stored.
      await inTransaction(this.pool, async c => {
        await c.query('DELETE FROM transcripts WHERE session_id = $1 AND project_key = $2 AND subpath = \'\'', [sessionId, projectKey])
        await this.append({ projectKey, sessionId }, entries, c)
      })
    }
  }

  /**
   * Write the stored transcript of a session to the CLI's files in `configDir` (replacing this
   * instance's copy, which may be behind), before a run continues it. Nothing when none is stored.
   */
  async materialise (configDir: string, owner: { uid: number, gid: number } | undefined, sessionId: string): Promise<void> {
    const { rows } = await this.pool.query<{ project_key: string, entry: string }>('SELECT project_key, entry FROM transcripts WHERE session_id = $1 AND subpath = \'\' ORDER BY n', [sessionId])
    const byProject = new Map<string, SessionStoreEntry[]>()
    for (const r of rows) {
      const list = byProject.get(r.project_key) ?? []
      list.push(JSON.parse(r.entry) as SessionStoreEntry)
      byProject.set(r.project_key, list)
    }
    const files = new TranscriptFiles(configDir, owner)
    for (const [projectKey, entries] of byProject) {
      await files.delete({ projectKey, sessionId })
      await files.append({ projectKey, sessionId }, entries)
    }
  }

  /** Whether any instance has written this session (so a run resumes it rather than creating it). */
  async has (sessionId: string): Promise<boolean> {
    const { rows } = await this.pool.query('SELECT 1 FROM transcripts WHERE session_id = $1 AND subpath = \'\' LIMIT 1', [sessionId])
    return rows.length > 0
  }
}

import type { SessionKey, SessionStore, SessionStoreEntry } from '@anthropic-ai/claude-agent-sdk'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { TranscriptFiles } from '../sessions/transcript-files.js'
import type { PostgresTranscripts } from '../store/pg-transcripts.js'

/**
 * Session transcripts in PostgreSQL (the store's `transcripts`), behind the Agent SDK's
 * `SessionStore` interface (the sessions API reads and changes them through the SDK's session
 * functions). The CLI's file stays the working copy: a run that continues a session writes the
 * stored transcript to the file first (`materialise`), and the file is copied back whole when the
 * run ends (`copyFrom`). One session's runs go one at a time across the cluster, so each starts
 * from the last one's end.
 */
export class PostgresTranscriptStore implements SessionStore {
  constructor (private readonly table: PostgresTranscripts) {}

  async append (key: SessionKey, entries: SessionStoreEntry[]): Promise<void> {
    await this.table.append(key, entries)
  }

  async load (key: SessionKey): Promise<SessionStoreEntry[] | null> {
    return await this.table.load(key)
  }

  async listSessions (projectKey: string): Promise<Array<{ sessionId: string, mtime: number }>> {
    return await this.table.listSessions(projectKey)
  }

  async listSubkeys (key: { projectKey: string, sessionId: string }): Promise<string[]> {
    return await this.table.listSubkeys(key)
  }

  async delete (key: SessionKey): Promise<void> {
    await this.table.delete(key)
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
      await this.table.replace({ projectKey, sessionId }, entries)
    }
  }

  /**
   * Write the stored transcript of a session to the CLI's files in `configDir` (replacing this
   * instance's copy, which may be behind), before a run continues it. Nothing when none is stored.
   */
  async materialise (configDir: string, owner: { uid: number, gid: number } | undefined, sessionId: string): Promise<void> {
    const files = new TranscriptFiles(configDir, owner)
    for (const [projectKey, entries] of await this.table.ofSession(sessionId)) {
      await files.delete({ projectKey, sessionId })
      await files.append({ projectKey, sessionId }, entries)
    }
  }

  /** Whether any instance has written this session (so a run resumes it rather than creating it). */
  async has (sessionId: string): Promise<boolean> {
    return await this.table.has(sessionId)
  }
}

import { deleteSession, forkSession, getSessionInfo, getSessionMessages, renameSession, type SessionStore } from '@anthropic-ai/claude-agent-sdk'
import { InvalidRequest, SessionBusy, SessionEmpty, SessionNotFound, withProblem } from '../domain/errors.js'
import type { RunStore } from '../store/store.js'
import type { SessionRecord } from '../domain/records.js'
import { TranscriptFiles } from './transcript-files.js'

/** Who asks: a key sees (and changes) its own sessions only, unless it may see all. */
export interface Viewer {
  keyName: string | null
  all: boolean
}

/** Where a session's transcript lives: a Claude config directory, and who its files belong to. */
export interface TranscriptPlace {
  configDir: string
  owner?: { uid: number, gid: number }
}

/** One message of a transcript, as the API shows it. */
export interface TranscriptMessage {
  uuid: string
  type: 'user' | 'assistant' | 'system'
  message: unknown
  parent_tool_use_id: string | null
  timestamp: string | null
}

/** What the catalog needs of the engine. */
export interface CatalogDeps {
  store: RunStore
  /** The config directory holding the sessions of a key (its agent identity's, or the server's). */
  placeOf: (owner: string | null) => TranscriptPlace
  /** A run of the session is queued or running in this process. */
  live: (sessionId: string) => boolean
  /**
   * Keep new runs of a session out while it is deleted (they are refused as busy); returns the
   * release. Taken and checked in one synchronous step with the session's live runs.
   */
  hold: (sessionId: string) => () => void
  /** End a CLI kept alive for the session's next run (session keep-alive), if there is one. */
  letGo?: (sessionId: string) => Promise<void>
  /** A session made here (a fork): its owner and directory, for the runs that will continue it. */
  adopt: (sessionId: string, owner: string | null, cwd: string) => void
  /**
   * Cluster mode: the transcripts of every instance, in the database (read and changed there
   * instead of this instance's files); a session is busy when the store says so, too.
   */
  transcripts?: { reading: () => SessionStore & { timestamps: Map<string, string> } }
  now?: () => number
}

/** The title of a session: the one it was given, else what it was first asked. */
export const titleOf = (s: SessionRecord): string | null => s.title ?? s.firstPrompt

const cursorOf = (s: SessionRecord): string => Buffer.from(`${s.updatedAt}.${s.id}`).toString('base64url')

function parseCursor (cursor: string): { updatedAt: number, id: string } {
  const m = /^(\d{1,16})\.([0-9a-f-]{36})$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'))
  if (m === null) throw withProblem(new InvalidRequest('cursor is not one this server gave'), { problem: { errors: [{ path: '/cursor', message: 'is not a cursor from next_cursor' }] } })
  return { updatedAt: Number(m[1]), id: m[2]! }
}

/**
 * The sessions of the API: browse, read, rename, fork and delete Claude sessions. Who owns a
 * session, where it lives and its runs come from the run store (how busy it is, from admission); the transcripts themselves
 * are read and changed through the Agent SDK's session functions, over the CLI's own files
 * (`TranscriptFiles`). A session another key owns is, to the viewer, not there at all.
 */
export class SessionCatalog {
  private readonly now: () => number
  /** Changes to one session (rename, fork, delete) are made one at a time. */
  private readonly changing = new Map<string, Promise<unknown>>()

  constructor (private readonly deps: CatalogDeps) {
    this.now = deps.now ?? Date.now
  }

  /** A session the viewer may see (not deleted), `busy` as this process knows it. */
  async find (id: string, viewer: Viewer): Promise<SessionRecord> {
    const s = await this.deps.store.getSession(id.toLowerCase())
    if (s === undefined || s.deletedAt !== null || (!viewer.all && s.keyName !== viewer.keyName)) throw new SessionNotFound(`no session ${id}`)
    return this.withLive(s)
  }

  /** A page of the viewer's sessions, most recently active first. */
  async list (viewer: Viewer, q: { workingDirectory?: string, limit: number, cursor?: string }): Promise<{ sessions: SessionRecord[], nextCursor: string | null }> {
    const page = await this.deps.store.listSessions({
      limit: q.limit + 1,
      ...(viewer.all ? {} : { keyName: viewer.keyName }),
      ...(q.workingDirectory !== undefined ? { workingDirectory: q.workingDirectory } : {}),
      ...(q.cursor !== undefined ? { before: parseCursor(q.cursor) } : {})
    })
    const shown = page.slice(0, q.limit)
    return { sessions: shown.map(s => this.withLive(s)), nextCursor: page.length > q.limit ? cursorOf(shown.at(-1)!) : null }
  }

  /** The transcript, oldest first: user, assistant and system messages, a page at a time. */
  async messages (id: string, viewer: Viewer, q: { limit: number, cursor?: string }): Promise<{ messages: TranscriptMessage[], nextCursor: string | null }> {
    const s = await this.find(id, viewer)
    const offset = q.cursor === undefined ? 0 : Number(q.cursor)
    const files = this.filesOf(s)
    const page = await getSessionMessages(s.id, { dir: s.workingDirectory, limit: q.limit + 1, offset, includeSystemMessages: true, sessionStore: files })
    const shown = page.slice(0, q.limit)
    return {
      messages: shown.map(m => ({ uuid: m.uuid, type: m.type, message: m.message, parent_tool_use_id: m.parent_tool_use_id, timestamp: files.timestamps.get(m.uuid) ?? null })),
      nextCursor: page.length > q.limit ? String(offset + q.limit) : null
    }
  }

  /** Give a session a title: kept with the session, and in its transcript for the CLI's own lists. */
  async rename (id: string, viewer: Viewer, title: string): Promise<SessionRecord> {
    return await this.oneAtATime(id, async () => await this.renameNow(id, viewer, title))
  }

  private async renameNow (id: string, viewer: Viewer, title: string): Promise<SessionRecord> {
    const s = await this.find(id, viewer)
    const files = this.filesOf(s)
    // Written to a transcript only once there is one: a title alone would pass for a conversation.
    if (await getSessionInfo(s.id, { dir: s.workingDirectory, sessionStore: files }) !== undefined) {
      await renameSession(s.id, title, { dir: s.workingDirectory, sessionStore: files })
    }
    await this.deps.store.updateSession(s.id, { title, updatedAt: this.now() })
    return await this.find(s.id, viewer)
  }

  /**
   * A new session with the transcript of this one (up to a message, if named), owned by the same
   * key, in the same directory. Nothing runs; resume it with a run naming its `session_id`.
   */
  async fork (id: string, viewer: Viewer, opts: { upToMessageUuid?: string, title?: string }): Promise<SessionRecord> {
    return await this.oneAtATime(id, async () => await this.forkNow(id, viewer, opts))
  }

  private async forkNow (id: string, viewer: Viewer, opts: { upToMessageUuid?: string, title?: string }): Promise<SessionRecord> {
    const s = await this.find(id, viewer)
    const files = this.filesOf(s)
    const title = opts.title ?? `${titleOf(s) ?? 'session'} (fork)`
    let forked: string
    try {
      ({ sessionId: forked } = await forkSession(s.id, {
        dir: s.workingDirectory,
        title,
        sessionStore: files,
        ...(opts.upToMessageUuid !== undefined ? { upToMessageId: opts.upToMessageUuid } : {})
      }))
    } catch (err) {
      const message = (err as Error).message
      if (opts.upToMessageUuid !== undefined && /^Message .* not found/.test(message)) {
        throw withProblem(new InvalidRequest(`up_to_message_uuid ${opts.upToMessageUuid} is not a message of session ${s.id}`), { problem: { errors: [{ path: '/up_to_message_uuid', message: 'not a message of this session' }] } })
      }
      if (/^Session .* (not found|has no messages)/.test(message)) throw new SessionEmpty(`session ${s.id} has no transcript yet: nothing to fork`)
      throw err
    }
    this.deps.adopt(forked, s.keyName, s.workingDirectory)
    await this.deps.store.insertSession({ id: forked, keyName: s.keyName, workingDirectory: s.workingDirectory, title, firstPrompt: s.firstPrompt, createdAt: this.now() })
    return await this.find(forked, viewer)
  }

  /** Delete a session and its transcript; refused while a run of it is queued or running. */
  async delete (id: string, viewer: Viewer): Promise<void> {
    await this.oneAtATime(id, async () => {
      const s = await this.find(id, viewer)
      const release = this.deps.hold(s.id)
      try {
        if (this.withLive(s).busy) throw new SessionBusy(`session ${s.id} has a run queued or running; cancel it or wait for it to end`)
        // A CLI kept for the session's next run goes before its files.
        await this.deps.letGo?.(s.id)
        // The files first: if they cannot go, the session stays, and a retry can try again.
        await deleteSession(s.id, { dir: s.workingDirectory, sessionStore: this.filesOf(s) })
        // In a cluster this instance's own copy goes too (others' copies are never read again:
        // resumes are materialised from the database).
        if (this.deps.transcripts !== undefined) await deleteSession(s.id, { dir: s.workingDirectory, sessionStore: this.localFilesOf(s) }).catch(() => {})
        await this.deps.store.updateSession(s.id, { deletedAt: this.now() })
      } finally {
        release()
      }
    })
  }

  private async oneAtATime<T> (id: string, fn: () => Promise<T>): Promise<T> {
    const key = id.toLowerCase()
    const before = this.changing.get(key) ?? Promise.resolve()
    const mine = before.then(fn, fn)
    const settled = mine.catch(() => {})
    this.changing.set(key, settled)
    try {
      return await mine
    } finally {
      if (this.changing.get(key) === settled) this.changing.delete(key)
    }
  }

  /**
   * `busy` as this process knows it: one server instance per database, so every queued or running
   * run is one of its own, and its word is current where the store's may lag a run's end by a write.
   */
  private withLive (s: SessionRecord): SessionRecord {
    // In a cluster, other instances' runs are only known to the store.
    const busy = this.deps.live(s.id) || (this.deps.transcripts !== undefined && s.busy)
    return s.busy === busy ? s : { ...s, busy }
  }

  private filesOf (s: SessionRecord): SessionStore & { timestamps: Map<string, string> } {
    return this.deps.transcripts !== undefined ? this.deps.transcripts.reading() : this.localFilesOf(s)
  }

  /** The CLI's files of this instance where the session's owner keeps its transcripts. */
  private localFilesOf (s: SessionRecord): TranscriptFiles {
    const place = this.deps.placeOf(s.keyName)
    return new TranscriptFiles(place.configDir, place.owner)
  }
}

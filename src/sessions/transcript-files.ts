import { constants } from 'node:fs'
import { chown, lstat, mkdir, open, readlink, realpath, rm, type FileHandle } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { SessionKey, SessionStore, SessionStoreEntry } from '@anthropic-ai/claude-agent-sdk'
import { TranscriptUnreadable } from '../errors.js'

/** The largest transcript read whole (a longer one is refused, not read into memory). */
export const MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024

const PROJECT_KEY = /^[A-Za-z0-9-]{1,255}$/
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const SUBPATH_PART = /^[A-Za-z0-9_.-]{1,255}$/

/**
 * The CLI's own transcript files (`<config>/projects/<project>/<session>.jsonl`) as the Agent SDK's
 * `SessionStore`, so the SDK's session functions (messages, fork, rename, delete) read and write
 * them for one Claude config directory: the server's, or one agent identity's.
 *
 * An identity's directory belongs to its agent, which may plant links there: nothing is followed
 * (every component below the config directory must be a real directory, the file is opened with
 * `O_NOFOLLOW`, and the opened file must be the one asked for), files are read only up to
 * `MAX_TRANSCRIPT_BYTES`, and what is created is given to the identity, so its CLI can go on
 * writing it.
 */
export class TranscriptFiles implements SessionStore {
  /** The `timestamp` of each entry read, by its `uuid` (the SDK's messages leave it out). */
  readonly timestamps = new Map<string, string>()
  private root: string | undefined
  private readonly configDir: string

  constructor (configDir: string, private readonly owner?: { uid: number, gid: number }) {
    this.configDir = resolve(configDir)
  }

  async load (key: SessionKey): Promise<SessionStoreEntry[] | null> {
    const path = await this.pathOf(key, false)
    if (path === null) return null
    let handle: FileHandle
    try {
      handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw new TranscriptUnreadable(`the transcript of session ${key.sessionId} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
    try {
      await this.checkOpened(handle, path)
      const { size } = await handle.stat()
      if (size > MAX_TRANSCRIPT_BYTES) throw new TranscriptUnreadable(`the transcript of session ${key.sessionId} is ${size} bytes, more than the ${MAX_TRANSCRIPT_BYTES} this server reads`)
      const entries: SessionStoreEntry[] = []
      for (const line of (await handle.readFile('utf8')).split('\n')) {
        if (line === '') continue
        let entry: unknown
        try {
          entry = JSON.parse(line)
        } catch {
          // A line cut short by a crash: the CLI skips it too.
          continue
        }
        if (entry === null || typeof entry !== 'object' || typeof (entry as { type?: unknown }).type !== 'string') continue
        const e = entry as SessionStoreEntry
        if (typeof e.uuid === 'string' && typeof e.timestamp === 'string') this.timestamps.set(e.uuid, e.timestamp)
        entries.push(e)
      }
      return entries
    } finally {
      await handle.close()
    }
  }

  async append (key: SessionKey, entries: SessionStoreEntry[]): Promise<void> {
    const path = await this.pathOf(key, true)
    if (path === null) throw new TranscriptUnreadable(`session ${key.sessionId} has no place to be written`)
    const handle = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)
    try {
      await this.checkOpened(handle, path)
      if (this.owner !== undefined) await handle.chown(this.owner.uid, this.owner.gid)
      await handle.write(entries.map(e => JSON.stringify(e)).join('\n') + '\n')
    } finally {
      await handle.close()
    }
  }

  async delete (key: SessionKey): Promise<void> {
    const path = await this.pathOf(key, false)
    if (path === null) return
    // `rm` removes a link itself, never what it points to; the session's own folder (subagent
    // transcripts) goes with it.
    await rm(path, { force: true })
    if (key.subpath === undefined) await rm(path.slice(0, -'.jsonl'.length), { recursive: true, force: true })
  }

  /**
   * The file of a key, its directories checked (and made, to write): null when they do not exist.
   * Throws for a key that could lead outside the config directory, or a link on the way.
   */
  private async pathOf (key: SessionKey, create: boolean): Promise<string | null> {
    if (!PROJECT_KEY.test(key.projectKey) || !SESSION_ID.test(key.sessionId)) throw new TranscriptUnreadable(`not a session key: ${key.projectKey}/${key.sessionId}`)
    const parts = key.subpath === undefined ? [] : key.subpath.split('/')
    if (parts.some(p => !SUBPATH_PART.test(p) || p === '.' || p === '..')) throw new TranscriptUnreadable(`not a session key: ${key.subpath ?? ''}`)
    const dirs = [join(this.configDir, 'projects'), join(this.configDir, 'projects', key.projectKey)]
    if (parts.length > 0) {
      dirs.push(join(dirs[1]!, key.sessionId))
      for (const p of parts.slice(0, -1)) dirs.push(join(dirs.at(-1)!, p))
    }
    // The config directory of an identity is its agent's: it must not be a link either.
    if (this.owner !== undefined) dirs.unshift(this.configDir)
    for (const dir of dirs) {
      let st
      try {
        st = await lstat(dir)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        if (!create) return null
        await mkdir(dir, { mode: 0o700 })
        if (this.owner !== undefined) await chown(dir, this.owner.uid, this.owner.gid)
        continue
      }
      if (!st.isDirectory()) throw new TranscriptUnreadable(`the transcripts of session ${key.sessionId} are behind a link or a file, not a directory: not followed`)
    }
    return join(dirs.at(-1)!, `${parts.length > 0 ? parts.at(-1)! : key.sessionId}.jsonl`)
  }

  /** The file opened is the one asked for (no directory was swapped for a link in between). */
  private async checkOpened (handle: FileHandle, path: string): Promise<void> {
    if (!(await handle.stat()).isFile()) throw new TranscriptUnreadable('a transcript is not a regular file: not read')
    this.root ??= await realpath(this.configDir)
    const expected = join(this.root, path.slice(this.configDir.length))
    let opened: string
    try {
      opened = await readlink(`/proc/self/fd/${handle.fd}`)
    } catch {
      // No /proc (not Linux): the checks on the way stand alone.
      return
    }
    if (opened !== expected) throw new TranscriptUnreadable('a transcript moved while it was opened: not read')
  }
}

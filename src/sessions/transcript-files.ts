import { constants } from 'node:fs'
import { lstat, mkdir, open, readlink, realpath, rm, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import type { SessionKey, SessionStore, SessionStoreEntry } from '@anthropic-ai/claude-agent-sdk'
import { execa } from 'execa'
import { TranscriptUnreadable } from '../domain/errors.js'
import { trackLaunch, untrackLaunch } from '../isolation/process-tree.js'

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
 * An identity's directory belongs to its agent, which may plant links there while the server
 * (root) works in it: nothing is followed (every component below the config directory must be a
 * real directory, files are opened with `O_NOFOLLOW`, the opened file must be the one asked for,
 * with one link, owned by the identity), at most `MAX_TRANSCRIPT_BYTES` are read, what the server
 * creates is given to the identity through its descriptor (so its CLI can go on writing it), and
 * deleting is done as the identity itself, which can delete nothing it could not delete anyway.
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
    return await this.guarded(async () => {
      const path = await this.pathOf(key, false)
      if (path === null) return null
      const root = await this.rootDir()
      let handle: FileHandle
      try {
        handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
        throw err
      }
      try {
        await this.checkOpened(handle, path, root, false)
        // Read by hand, never past the limit: the file may grow while it is read.
        const buf = Buffer.alloc(Math.min(MAX_TRANSCRIPT_BYTES + 1, (await handle.stat()).size + 1))
        let got = 0
        for (;;) {
          const { bytesRead } = await handle.read(buf, got, buf.length - got, got)
          if (bytesRead === 0) break
          got += bytesRead
          if (got === buf.length) break
        }
        if (got > MAX_TRANSCRIPT_BYTES) throw new TranscriptUnreadable(`the transcript of session ${key.sessionId} is larger than the ${MAX_TRANSCRIPT_BYTES} bytes this server reads`)
        return this.parse(buf.subarray(0, got).toString('utf8'))
      } finally {
        await handle.close()
      }
    })
  }

  private parse (text: string): SessionStoreEntry[] {
    const entries: SessionStoreEntry[] = []
    for (const line of text.split('\n')) {
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
  }

  async append (key: SessionKey, entries: SessionStoreEntry[]): Promise<void> {
    await this.guarded(async () => {
      const path = await this.pathOf(key, true)
      if (path === null) throw new TranscriptUnreadable(`session ${key.sessionId} has no place to be written`)
      const root = await this.rootDir()
      let created = true
      let handle: FileHandle
      try {
        handle = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
        created = false
        handle = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW)
      }
      try {
        await this.checkOpened(handle, path, root, created)
        // Only a file made here changes hands; one that was there stays as it is.
        if (created && this.owner !== undefined) await handle.chown(this.owner.uid, this.owner.gid)
        await handle.write(entries.map(e => JSON.stringify(e)).join('\n') + '\n')
      } finally {
        await handle.close()
      }
    })
  }

  async delete (key: SessionKey): Promise<void> {
    await this.guarded(async () => {
      const path = await this.pathOf(key, false)
      if (path === null) return
      // The session's own folder (subagent transcripts) goes with it.
      const targets = key.subpath === undefined ? [path, path.slice(0, -'.jsonl'.length)] : [path]
      if (this.owner === undefined) {
        for (const target of targets) await rm(target, { recursive: true, force: true })
        return
      }
      // As the identity: a link or a swapped folder in its directory can only lead where it may
      // delete anyway.
      // From inside their folder (entered as the server): the identity need not reach it from /.
      const child = execa('rm', ['-rf', '--', ...targets.map(x => basename(x))], { uid: this.owner.uid, gid: this.owner.gid, reject: false, env: { PATH: '/usr/bin:/bin' }, extendEnv: false, cwd: dirname(path) })
      // One of the identity's processes, but no stray: the sweep of its processes leaves it alone.
      trackLaunch(child.pid)
      const r = await child.finally(() => untrackLaunch(child.pid))
      if (r.exitCode !== 0) throw new TranscriptUnreadable(`the transcript of session ${key.sessionId} could not be deleted: ${String(r.stderr).slice(0, 200)}`)
    })
  }

  /** Errors of the file system become `transcript_unreadable` (a 409), never a 500. */
  private async guarded<T> (fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) throw new TranscriptUnreadable(`a transcript file could not be used (${code})`)
      throw err
    }
  }

  /** The config directory as it really is, fixed before any file is opened (its parent is not the agent's to change). */
  private async rootDir (): Promise<string> {
    this.root ??= join(await realpath(dirname(this.configDir)), basename(this.configDir))
    return this.root
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
        if (this.owner !== undefined) {
          // Through a descriptor that refuses a link: a directory swapped meanwhile is not chowned.
          const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
          try {
            await handle.chown(this.owner.uid, this.owner.gid)
          } finally {
            await handle.close()
          }
        }
        continue
      }
      if (!st.isDirectory()) throw new TranscriptUnreadable(`the transcripts of session ${key.sessionId} are behind a link or a file, not a directory: not followed`)
    }
    return join(dirs.at(-1)!, `${parts.length > 0 ? parts.at(-1)! : key.sessionId}.jsonl`)
  }

  /**
   * The file opened is the one asked for (no directory was swapped for a link in between), a
   * regular file with one name; in an identity's directory, one of the identity's own (or one
   * just made here).
   */
  private async checkOpened (handle: FileHandle, path: string, root: string, created: boolean): Promise<void> {
    const st = await handle.stat()
    if (!st.isFile()) throw new TranscriptUnreadable('a transcript is not a regular file: not used')
    if (st.nlink !== 1) throw new TranscriptUnreadable('a transcript has other names (hard links): not used')
    if (this.owner !== undefined && !created && st.uid !== this.owner.uid) throw new TranscriptUnreadable('a transcript in an agent\'s directory is not the agent\'s own: not used')
    const expected = join(root, path.slice(this.configDir.length))
    let opened: string
    try {
      opened = await readlink(`/proc/self/fd/${handle.fd}`)
    } catch {
      // No /proc (not Linux): the checks on the way stand alone.
      return
    }
    if (opened !== expected) throw new TranscriptUnreadable('a transcript moved while it was opened: not used')
  }
}

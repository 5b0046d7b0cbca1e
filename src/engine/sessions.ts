import { constants } from 'node:fs'
import { access, open, readdir } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * Where each Claude session lives. The CLI only finds a session from the
 * directory it was created in, so a session is pinned to that directory. Sessions created before
 * a restart are found again in the CLI's own files (`<config>/projects/<slug>/<id>.jsonl`), whose
 * lines record their `cwd`. (One run at a time per session is the scheduler's job.)
 */
export class SessionRegistry {
  /**
   * Recently used sessions and their directories, newest last. Bounded: a pin only has to outlive
   * the runs queued for a session before the CLI writes its file (found on disk from then on), and
   * the queue is far shorter than this.
   */
  private readonly dirs = new Map<string, string>()

  constructor (private readonly claudeConfigDir: string, private readonly maxRemembered = 10_000) {}

  /** The directory a session was created in, or null for a session never seen. */
  async locate (sessionId: string): Promise<string | null> {
    const known = this.dirs.get(sessionId)
    if (known !== undefined) return known
    const cwd = await this.findOnDisk(sessionId)
    if (cwd !== null) this.remember(sessionId, cwd)
    return cwd
  }

  /** Whether the CLI has written this session (so a run must resume it rather than create it). */
  async exists (sessionId: string): Promise<boolean> {
    for await (const file of this.candidates(sessionId)) {
      try {
        await access(file)
        return true
      } catch {
        // Not in this project directory.
      }
    }
    return false
  }

  /** Pin a session to a directory as soon as a run for it is accepted. */
  remember (sessionId: string, cwd: string): void {
    this.dirs.delete(sessionId)
    this.dirs.set(sessionId, cwd)
    if (this.dirs.size > this.maxRemembered) this.dirs.delete(this.dirs.keys().next().value!)
  }

  private async findOnDisk (sessionId: string): Promise<string | null> {
    for await (const file of this.candidates(sessionId)) {
      const cwd = await readCwd(file)
      if (cwd !== null) return cwd
    }
    return null
  }

  /** Where the CLI may have written a session: one file name in each project directory. */
  private async * candidates (sessionId: string): AsyncGenerator<string> {
    const projects = join(this.claudeConfigDir, 'projects')
    let slugs: string[]
    try {
      slugs = await readdir(projects)
    } catch {
      return
    }
    for (const slug of slugs) yield join(projects, slug, `${sessionId}.jsonl`)
  }
}

/** The `cwd` recorded in the first lines of a session file (null if absent or unreadable). */
async function readCwd (file: string): Promise<string | null> {
  let handle
  try {
    // An agent may own this file: never follow a link, never block on a FIFO, read only a regular file.
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  } catch {
    return null
  }
  try {
    if (!(await handle.stat()).isFile()) return null
    const buf = Buffer.alloc(256 * 1024)
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0)
    for (const line of buf.subarray(0, bytesRead).toString('utf8').split('\n')) {
      try {
        const obj = JSON.parse(line) as { cwd?: unknown }
        if (typeof obj.cwd === 'string') return obj.cwd
      } catch {
        // A partial last line, or a line of another shape: keep looking.
      }
    }
    // A session file without a cwd still proves the session exists; its directory is unknown.
    return null
  } finally {
    await handle.close()
  }
}

import { open, readdir } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * Where each Claude session lives, and which are busy. The CLI only finds a session from the
 * directory it was created in, so a session is pinned to that directory. Sessions created before
 * a restart are found again in the CLI's own files (`<config>/projects/<slug>/<id>.jsonl`), whose
 * lines record their `cwd`.
 */
export class SessionRegistry {
  private readonly dirs = new Map<string, string>()
  private readonly busy = new Map<string, string>()

  constructor (private readonly claudeConfigDir: string) {}

  /** The directory a session was created in, or null for a session never seen. */
  async locate (sessionId: string): Promise<string | null> {
    const known = this.dirs.get(sessionId)
    if (known !== undefined) return known
    const cwd = await this.findOnDisk(sessionId)
    if (cwd !== null) this.dirs.set(sessionId, cwd)
    return cwd
  }

  /** Record a session's directory once its run has started. */
  remember (sessionId: string, cwd: string): void {
    this.dirs.set(sessionId, cwd)
  }

  /** The run holding a session, if any. */
  holder (sessionId: string): string | undefined {
    return this.busy.get(sessionId)
  }

  /** Claim a session for a run; false when another run holds it. */
  claim (sessionId: string, runId: string): boolean {
    if (this.busy.has(sessionId)) return false
    this.busy.set(sessionId, runId)
    return true
  }

  release (sessionId: string, runId: string): void {
    if (this.busy.get(sessionId) === runId) this.busy.delete(sessionId)
  }

  private async findOnDisk (sessionId: string): Promise<string | null> {
    const projects = join(this.claudeConfigDir, 'projects')
    let slugs: string[]
    try {
      slugs = await readdir(projects)
    } catch {
      return null
    }
    for (const slug of slugs) {
      const cwd = await readCwd(join(projects, slug, `${sessionId}.jsonl`))
      if (cwd !== null) return cwd
    }
    return null
  }
}

/** The `cwd` recorded in the first lines of a session file (null if absent or unreadable). */
async function readCwd (file: string): Promise<string | null> {
  let handle
  try {
    handle = await open(file, 'r')
  } catch {
    return null
  }
  try {
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

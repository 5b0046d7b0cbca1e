import Database from 'better-sqlite3'
import { readFileSync, rmSync, writeFileSync, accessSync, constants, chmodSync, closeSync, lstatSync, openSync, readdirSync, statSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { ConfigError, makeDirectory } from '../config.js'

const LOCK_FILE = 'server.lock'
const PID_FILE = 'server.pid'

/** Mode bits that let anyone but the owner in. */
const OTHERS = 0o077

/**
 * Create `path` as a file only its owner may read (0600) if it is missing. Made before SQLite
 * opens it: SQLite gives its -wal, -shm and -journal files the database file's mode.
 */
export function createPrivateFile (path: string): void {
  closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600))
}

/**
 * Close `dataDir` to everyone but its owner (0700), whoever runs the server: the store holds every
 * prompt and output. A directory open to others that this user may not chmod is a `ConfigError`.
 * Returns whether it was open.
 */
function closeDirectory (dataDir: string): boolean {
  const mode = statSync(dataDir).mode & 0o7777
  if ((mode & OTHERS) === 0) return false
  try {
    chmodSync(dataDir, mode & ~OTHERS)
  } catch (err) {
    throw new ConfigError(`DATA_DIR=${dataDir} is open to other users (mode ${mode.toString(8)}) and this user cannot close it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): ` +
      `chmod 700 ${dataDir} as its owner, or set DATA_DIR to a directory of this user's`)
  }
  return true
}

/**
 * Close the entries of `dataDir` that an older server (or a lax umask) left open to other users,
 * never following a link. Those this user may not chmod (another user's) stay behind the 0700
 * directory and are reported.
 */
function closeEntries (dataDir: string): { closed: string[], open: string[] } {
  const closed: string[] = []
  const open: string[] = []
  for (const name of readdirSync(dataDir)) {
    const path = join(dataDir, name)
    try {
      const st = lstatSync(path)
      if (st.isSymbolicLink() || (st.mode & OTHERS) === 0) continue
      chmodSync(path, st.mode & 0o7777 & ~OTHERS)
      closed.push(path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') open.push(path)
    }
  }
  return { closed, open }
}

/**
 * One server per `DATA_DIR`. The lock is an exclusive SQLite lock (an OS file lock) on
 * `DATA_DIR/server.lock`, held for the server's life: the kernel drops it when the process dies,
 * even by `kill -9`, so there is never a stale lock to clean up. `server.pid` says who holds it.
 * Taken before anything reads or writes the directory, restart recovery included.
 */
export class DataDirLock {
  private constructor (
    private readonly db: Database.Database,
    private readonly dataDir: string,
    /** What was open to other users and is now closed to them (to be logged). */
    readonly closed: string[],
    /** What stays open to other users: not this user's to chmod (to be logged). */
    readonly open: string[]
  ) {}

  /**
   * Create `dataDir` if needed (0700) and lock it; a `ConfigError` naming the directory (and the
   * other server's pid) when it cannot be used or another server holds it. An existing directory
   * open to other users is closed to them, with its files (0600), once the lock is held.
   */
  static acquire (dataDir: string): DataDirLock {
    let wasOpen: boolean
    try {
      makeDirectory(dataDir, 0o700)
      accessSync(dataDir, constants.W_OK | constants.X_OK)
      wasOpen = closeDirectory(dataDir)
    } catch (err) {
      if (err instanceof ConfigError) throw err
      throw new ConfigError(`DATA_DIR=${dataDir} cannot be used (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): set DATA_DIR to a directory this user can create and write`)
    }
    let db: Database.Database | undefined
    try {
      createPrivateFile(join(dataDir, LOCK_FILE))
      db = new Database(join(dataDir, LOCK_FILE), { timeout: 0 })
      db.pragma('locking_mode = EXCLUSIVE')
      // The first write takes the exclusive lock; in EXCLUSIVE mode it is never given back.
      db.exec('CREATE TABLE IF NOT EXISTS holder (pid INTEGER, host TEXT, since TEXT); DELETE FROM holder;')
      db.prepare('INSERT INTO holder VALUES (?, ?, ?)').run(process.pid, hostname(), new Date().toISOString())
    } catch (err) {
      db?.close()
      if ((err as { code?: string }).code === 'SQLITE_BUSY' || (err as { code?: string }).code === 'SQLITE_LOCKED') {
        const other = DataDirLock.holder(dataDir)
        throw new ConfigError(`DATA_DIR=${dataDir} is in use by another server${other !== null ? ` (pid ${other})` : ''}: stop that server, or give this one its own DATA_DIR`)
      }
      throw new ConfigError(`DATA_DIR=${dataDir} cannot be used (${(err as Error).message}): set DATA_DIR to a directory this user can write`)
    }
    // Only now, holding the lock: another server's files are not this one's to change.
    const { closed, open } = closeEntries(dataDir)
    writeFileSync(join(dataDir, PID_FILE), `${process.pid}\n`, { mode: 0o600 })
    return new DataDirLock(db, dataDir, wasOpen ? [dataDir, ...closed] : closed, open)
  }

  /** The pid recorded by the server that holds the lock, if it says. */
  static holder (dataDir: string): number | null {
    try {
      const pid = Number(readFileSync(join(dataDir, PID_FILE), 'utf8').trim())
      return Number.isInteger(pid) && pid > 0 ? pid : null
    } catch {
      return null
    }
  }

  /** Let go (at shutdown): the next server on this directory may start. */
  release (): void {
    if (!this.db.open) return
    if (DataDirLock.holder(this.dataDir) === process.pid) rmSync(join(this.dataDir, PID_FILE), { force: true })
    this.db.close()
  }
}

import Database from 'better-sqlite3'
import { readFileSync, rmSync, writeFileSync, accessSync, constants } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { ConfigError, makeDirectory } from '../config.js'

const LOCK_FILE = 'server.lock'
const PID_FILE = 'server.pid'

/**
 * One server per `DATA_DIR`. The lock is an exclusive SQLite lock (an OS file lock) on
 * `DATA_DIR/server.lock`, held for the server's life: the kernel drops it when the process dies,
 * even by `kill -9`, so there is never a stale lock to clean up. `server.pid` says who holds it.
 * Taken before anything reads or writes the directory, restart recovery included.
 */
export class DataDirLock {
  private constructor (private readonly db: Database.Database, private readonly dataDir: string) {}

  /**
   * Create `dataDir` if needed and lock it; a `ConfigError` naming the directory (and the other
   * server's pid) when it cannot be used or another server holds it.
   */
  static acquire (dataDir: string): DataDirLock {
    try {
      makeDirectory(dataDir)
      accessSync(dataDir, constants.W_OK | constants.X_OK)
    } catch (err) {
      throw new ConfigError(`DATA_DIR=${dataDir} cannot be used (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): set DATA_DIR to a directory this user can create and write`)
    }
    let db: Database.Database | undefined
    try {
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
    writeFileSync(join(dataDir, PID_FILE), `${process.pid}\n`)
    return new DataDirLock(db, dataDir)
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

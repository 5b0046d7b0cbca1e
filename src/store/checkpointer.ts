import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'

/** Runs in the worker: its own connection to the database, checkpointing the WAL now and then. */
const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads')
const Database = require(workerData.driver)
const db = new Database(workerData.file)
db.pragma('busy_timeout = 1000')
const tick = () => {
  try {
    db.pragma('wal_checkpoint(PASSIVE)')
  } catch {
    // Busy or a full disk: the next tick tries again; the WAL only grows meanwhile.
  }
}
const timer = setInterval(tick, workerData.intervalMs)
parentPort.on('message', () => { clearInterval(timer); tick(); db.close(); parentPort.close() })
`

/**
 * Copies the WAL into the database file on a thread of its own. SQLite's automatic checkpoint runs
 * inside a commit, on the event loop, and its fsync stalls every event in flight for milliseconds;
 * here it never does (a passive checkpoint lets writers go on).
 */
export class Checkpointer {
  private readonly worker: Worker

  constructor (file: string, intervalMs = 1000) {
    const driver = createRequire(import.meta.url).resolve('better-sqlite3')
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { file, driver, intervalMs } })
    this.worker.on('error', () => { /* a checkpoint thread that fails leaves the WAL to grow, nothing more */ })
    this.worker.unref()
  }

  /** One last checkpoint, then the thread ends. */
  async close (): Promise<void> {
    const ended = new Promise<void>(resolve => this.worker.once('exit', () => resolve()))
    this.worker.postMessage('close')
    const timer = setTimeout(() => { void this.worker.terminate() }, 5000)
    await ended
    clearTimeout(timer)
  }
}

import { EventEmitter } from 'node:events'
import { writeFileSync } from 'node:fs'
import { PassThrough, type Writable } from 'node:stream'
import type { SpawnedProcess, SpawnOptions } from '@anthropic-ai/claude-agent-sdk'
import { execa, type ResultPromise } from 'execa'
import { RUN_MARKER_VAR } from '../isolation/proc.js'
import { sdkNeeds } from './cli-events.js'
import { LineSplitter } from './line-splitter.js'
import { endStrays, killRunTree, trackLaunch, untrackLaunch, type KillReport } from '../isolation/process-tree.js'
import type { RunnerLogger } from '../domain/logger.js'
import type { LimitName, ResourceUsage, RunLimits } from '../domain/limits.js'
import { launchOf, type ExecutorSettings } from './launch-command.js'

export type { ExecutorSettings }
import type { Box } from '../isolation/cgroups.js'

const STDERR_TAIL_BYTES = 8 * 1024
/** Lines past this size are streamed through the shrinker rather than held whole. */
const SHRINK_ABOVE_BYTES = 1024 * 1024
/** An oversized line is shown to clients as a preview with strings cut to this. */
const PREVIEW_STRING_BYTES = 64 * 1024
/** After the CLI exits, how long its output may stay silent before the pipe is given up. */
const OUTPUT_GRACE_MS = 2000
/** How often a limited run's control group is looked at for a limit it ran into. */
const LIMIT_WATCH_MS = 250

/** What became of a run's control group at its end. */
export interface BoxReport {
  /** The limit its tree ran into, if any. */
  limit: LimitName | null
  usage: ResourceUsage | null
  /** Processes still in the group that were killed. */
  killed: number
}

/** One line of the CLI's output as a run sees it: parsed, as shown, and whether it was shrunk. */
export type LineHandler = (msg: unknown, line: string, shrunk: boolean, preview: string | undefined) => void

/** How a CLI process ended. */
export interface ProcessExit {
  exitCode?: number | undefined
  failed: boolean
  cause?: unknown
  message?: string | undefined
  signal: NodeJS.Signals | null
}

/**
 * The CLI as the SDK sees it: the real process's stdin, its stdout after our line splitter (so a
 * 200 MB line is shrunk before the SDK ever parses it), and `exit` only once that stdout is flushed.
 */
class ContainedProcess extends EventEmitter implements SpawnedProcess {
  readonly stdin: Writable
  readonly stdout = new PassThrough()
  private exit: { code: number | null, signal: NodeJS.Signals | null } | undefined

  constructor (readonly child: ResultPromise) {
    super()
    this.stdin = child.stdin as Writable
    child.on('error', (err) => { if (this.listenerCount('error') > 0) this.emit('error', err) })
  }

  get killed (): boolean { return this.child.killed }
  get exitCode (): number | null { return this.exit?.code ?? null }
  get signalCode (): NodeJS.Signals | null { return this.exit?.signal ?? null }

  kill (signal: NodeJS.Signals): boolean {
    return this.child.kill(signal)
  }

  /** The process has exited and its output was read to the end. */
  exited (code: number | null, signal: NodeJS.Signals | null): void {
    this.exit = { code, signal }
    this.stdout.end()
    this.emit('exit', code, signal)
  }
}

/**
 * One CLI process, spawned for the Agent SDK (its `spawnClaudeCodeProcess`) by execa in its own
 * process group, carrying a marker, as the agent identity and inside the sandbox when there is
 * one. Its output goes through the line splitter: the SDK gets the lines of its protocol, the run
 * bound to it (`onLine`) gets every line. A warm spare is such a process before any run is bound.
 */
export class CliProcess {
  readonly contained: ContainedProcess
  /** Settles once the process has exited and its output was read (or given up after a grace). */
  readonly exited: Promise<ProcessExit>
  stderrTail = ''
  oversizeLines = 0
  /** The run's reader of every line; lines before one is bound are the SDK's alone. */
  onLine: LineHandler | undefined
  /** The limit the run's tree ran into (seen while it ran, or at its end). */
  limitHit: LimitName | null = null
  private killing: Promise<KillReport> | undefined
  /** The run's control group, while it has one. */
  private readonly box: Box | undefined
  private watch: NodeJS.Timeout | undefined
  private released: Promise<BoxReport> | undefined

  constructor (o: SpawnOptions, readonly marker: string, private readonly s: ExecutorSettings, fallbackCwd: string, private readonly log: RunnerLogger) {
    const childEnv: Record<string, string> = {}
    for (const [k, v] of Object.entries(o.env)) if (v !== undefined) childEnv[k] = v
    // A group of its own first: if it cannot be made, the run does not start (never unlimited).
    this.box = s.limits?.setup.boxes?.create(marker, s.limits.limits)
    const launch = launchOf(o.command, o.args, o.cwd ?? fallbackCwd, childEnv, s)
    let placed: (ok: boolean) => void = () => {}
    const gate = launch.gated ? new Promise<boolean>(resolve => { placed = resolve }) : undefined
    const child = execa(launch.command, launch.args, {
      ...launch.options,
      buffer: false,
      reject: false,
      // Own process group, so the CLI and its ordinary children can be signalled at once.
      detached: true,
      cleanup: true,
      stdio: ['pipe', 'pipe', 'pipe', ...launch.fds, ...(gate !== undefined ? [(async function * () { if (await gate) yield 'go\n' })()] : [])],
      stripFinalNewline: false
    })
    this.contained = new ContainedProcess(child)
    // Its processes (and those of the identity descended from it) are a live run's, until it exits.
    trackLaunch(child.pid)
    child.once('exit', () => untrackLaunch(child.pid))
    if (gate !== undefined) placed(this.place(child.pid))
    log.debug({ pid: child.pid, args: o.args }, 'CLI started')
    const c = this.contained
    const splitter = new LineSplitter(s.maxLineBytes, (line, shrunk, preview) => {
      let msg: unknown
      try {
        msg = JSON.parse(line)
      } catch {
        log.debug({ line: line.slice(0, 200) }, 'CLI printed a non-JSON line')
        return
      }
      this.onLine?.(msg, line, shrunk, preview)
      if (shrunk) log.warn({ max: s.maxLineBytes }, 'a CLI output line over MAX_LINE_BYTES was shrunk: its longest strings were cut')
      // The SDK reads the lines of its protocol (shrunk, if they had to be).
      if (sdkNeeds(msg)) c.stdout.write(line + '\n')
    }, bytes => {
      this.oversizeLines++
      log.warn({ bytes, max: s.maxLineBytes }, 'dropped a CLI output line over MAX_LINE_BYTES')
    }, s.maxOutputBytes, SHRINK_ABOVE_BYTES, PREVIEW_STRING_BYTES)

    let lastOutputAt = Date.now()
    const stdoutDone = new Promise<void>(resolve => {
      if (child.stdout === null) return resolve()
      child.stdout.on('data', (chunk: Buffer) => {
        lastOutputAt = Date.now()
        splitter.push(chunk)
      })
      child.stdout.once('close', () => resolve())
    })
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES)
    })
    const processExit = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
    this.exited = Promise.race([
      // A spawn that failed (no such CLI) ends here, with its cause.
      child.then(r => ({ exitCode: r.exitCode, failed: r.failed, cause: r.cause, message: r.message, signal: (r.signal as NodeJS.Signals | undefined) ?? null })),
      // The CLI exited: its output is read to the end, but not waited for past a grace, since a
      // process it left behind (detached, without the marker) may hold the pipe open forever.
      // The grace counts from the last output, so a busy server still reads a long tail whole.
      processExit.then(async ({ code, signal }) => {
        let timer: NodeJS.Timeout | undefined
        const quiet = new Promise<void>(resolve => {
          const check = (): void => {
            const idle = Date.now() - lastOutputAt
            if (idle >= OUTPUT_GRACE_MS) resolve()
            else timer = setTimeout(check, OUTPUT_GRACE_MS - idle)
          }
          lastOutputAt = Date.now()
          check()
        })
        await Promise.race([stdoutDone, quiet])
        clearTimeout(timer)
        return { exitCode: code ?? undefined, failed: code !== 0, cause: undefined, message: undefined, signal }
      })
    ]).then(r => {
      clearInterval(this.watch)
      child.stdout?.destroy()
      child.stderr?.destroy()
      splitter.end()
      c.exited(r.exitCode ?? null, r.signal)
      return r
    })
  }

  get pid (): number | undefined { return this.contained.child.pid }

  /**
   * Put the launch's first process (waiting at its gate) in the run's control group and watch the
   * group for a limit it runs into: then the whole run is ended. False if it could not be placed
   * (the gate then stays shut and the launch ends, running nothing).
   */
  private place (pid: number | undefined): boolean {
    const box = this.box
    if (box === undefined) return pid !== undefined
    if (pid === undefined) return false
    try {
      for (const f of box.procsFiles) writeFileSync(f, String(pid))
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'could not place the run in its control group; it does not start')
      return false
    }
    this.watch = setInterval(() => {
      void box.hit().then(hit => {
        if (hit === null || this.limitHit !== null) return
        this.limitHit = hit
        this.log.warn({ limit: hit, limits: this.s.limits?.limits }, 'the run\'s processes hit a resource limit; ending the run')
        void this.end(0)
      })
    }, LIMIT_WATCH_MS)
    this.watch.unref()
    return true
  }

  /** A spare takes the limits of the run that claims it; false if its group cannot hold them (it holds more already). */
  applyLimits (limits: RunLimits | undefined): boolean {
    if (this.box === undefined || limits === undefined) return true
    try {
      this.box.apply(limits)
      return true
    } catch (err) {
      this.log.warn({ err: (err as Error).message, limits }, 'the spare could not take the run\'s limits (it holds more already)')
      return false
    }
  }

  /**
   * Kill what is left in the run's control group (whatever session or parent it gave itself), read
   * what the tree used and whether it hit a limit, and remove the group. Once; after `end()` or exit.
   */
  release (): Promise<BoxReport> {
    this.released ??= (async () => {
      clearInterval(this.watch)
      const box = this.box
      if (box === undefined) return { limit: this.limitHit, usage: null, killed: 0 }
      const killed = await box.kill()
      this.limitHit ??= await box.hit()
      const usage = await box.usage()
      await box.remove().catch((err: Error) => this.log.warn({ err: err.message }, 'could not remove the run\'s control group'))
      return { limit: this.limitHit, usage, killed }
    })()
    return this.released
  }

  /** End the whole tree (its control group, the process group and everything carrying the marker). Once. */
  end (graceMs = this.s.killGraceMs): Promise<KillReport> {
    this.killing ??= killRunTree({ rootPid: this.pid, markerName: RUN_MARKER_VAR, markerValue: this.marker, graceMs, rootExited: this.exited })
      .then(async report => {
        report.killed += (await this.release()).killed
        // What escaped the tree (detached, environment cleared) is still its identity's: it goes too.
        if (this.s.identity !== undefined) report.killed += await endStrays(this.s.identity.uid, RUN_MARKER_VAR)
        return report
      })
    return this.killing
  }

  /** Whether `end()` was called. */
  get ending (): boolean { return this.killing !== undefined }

  /** How a spawn that never started failed, if it did. */
  async spawnError (): Promise<{ code?: string, message: string } | undefined> {
    const res = await this.exited
    const cause = res.cause as NodeJS.ErrnoException | undefined
    if (this.pid === undefined || (res.failed && cause?.syscall?.startsWith('spawn') === true)) {
      return { message: cause?.message ?? res.message ?? 'spawn failed', ...(cause?.code !== undefined ? { code: cause.code } : {}) }
    }
    return undefined
  }
}

/** The spawn hook the SDK calls: a `CliProcess` for each spawn, handed to `spawned`. */
export function cliSpawner (marker: string, s: ExecutorSettings, fallbackCwd: string, log: RunnerLogger, spawned: (p: CliProcess) => void): (o: SpawnOptions) => SpawnedProcess {
  return (o) => {
    const p = new CliProcess(o, marker, s, fallbackCwd, log)
    spawned(p)
    return p.contained
  }
}

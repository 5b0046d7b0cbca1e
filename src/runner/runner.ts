import { EventEmitter, setMaxListeners } from 'node:events'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type { Settings } from '../config.js'
import { SessionDirectoryMismatch, ShuttingDown, WorkingDirectoryForbidden } from '../errors.js'
import type { ExecuteRequest, ExecuteResult, RunStatus } from '../schemas/execute.js'
import type { RunRecord, RunStore } from '../store/run-store.js'
import { buildChildEnv, RUN_MARKER_VAR } from './child-env.js'
import { CliProbe } from './cli-probe.js'
import { executeRun, type RunnerLogger } from './executor.js'
import { checkEnvVars, checkPermissionMode, isInside, resolveWorkingDir } from './policy.js'
import { killRunTree } from './process-tree.js'
import { PartialText, toExecuteResult, type RunOutcome } from './result.js'
import { Scheduler, type Ticket } from './scheduler.js'
import { SessionRegistry } from './sessions.js'
import type { RunEvent, RunEventType, RunSpec } from './types.js'

export type { RunnerLogger }

type EndReason = { by: 'timeout' } | { by: 'cancel', reason: string }

const REPLAY_PAGE = 500
/** A replay page holds at most this much data, however big the events. */
const REPLAY_PAGE_BYTES = 1024 * 1024

/** How a run was asked for. */
export interface SubmitOptions {
  /** The request as the client sent it; stored with env var values left out. */
  request: ExecuteRequest
  /** The API key's name, recorded with the run. */
  keyName?: string | null
  /** Runs of `/api/execute*` end with their connection; runs of `POST /api/runs` never do. */
  cancelOnDisconnect: boolean
  /** The HTTP request that started it, for the log. */
  requestId?: string
}

/** What the runner tells the rest of the server (metrics, webhooks). */
export interface RunnerEvents {
  started: [RunHandle]
  finished: [RunHandle, ExecuteResult]
}

/**
 * A run while it is queued or running: its events go to the store and to live listeners
 * (`event`), in order, the terminal `result` last.
 */
export class RunHandle extends EventEmitter<{ event: [RunEvent] }> {
  status: RunStatus = 'queued'
  readonly submittedAt = Date.now()
  /** Resolves with the contract's result once the run has ended and its process tree is gone. */
  readonly result: Promise<ExecuteResult>
  /** Resolves when the scheduler lets the run start. */
  readonly admitted: Promise<void>
  admit!: () => void
  /** The scheduler let it start (it may not be `running` yet: the spawn is on its way). */
  wasAdmitted = false
  ticket: Ticket | undefined
  endedBy: EndReason | undefined
  private resolveResult!: (r: ExecuteResult) => void
  private readonly endListeners: Array<() => void> = []

  constructor (
    readonly spec: RunSpec,
    readonly cancelOnDisconnect: boolean,
    private readonly store: RunStore,
    private seq: number,
    readonly keyName: string | null,
    /** Every log line about this run carries its run id, key name and request id. */
    readonly log: RunnerLogger
  ) {
    super()
    this.setMaxListeners(0)
    this.result = new Promise(resolve => { this.resolveResult = resolve })
    this.admitted = new Promise(resolve => {
      this.admit = () => {
        this.wasAdmitted = true
        resolve()
      }
    })
  }

  get id (): string { return this.spec.runId }

  /** Place in the queue (1-based), 0 once running. */
  position (): number { return this.ticket?.position() ?? 0 }

  /** Ask the run to end; a queued run never starts, a running one has its tree killed. Idempotent. */
  cancel (reason: string): void {
    this.end({ by: 'cancel', reason })
  }

  /** @internal */
  end (reason: EndReason): void {
    if (this.endedBy !== undefined || this.isFinished()) return
    this.endedBy = reason
    for (const l of this.endListeners.splice(0)) l()
  }

  /** @internal called once, when `end` is. */
  onEnd (listener: () => void): void {
    if (this.endedBy !== undefined) listener()
    else this.endListeners.push(listener)
  }

  isFinished (): boolean {
    return this.status !== 'queued' && this.status !== 'running'
  }

  /** @internal append an event to the log and hand it to live listeners. */
  push (type: RunEventType, data: unknown): void {
    const event: RunEvent = { seq: ++this.seq, type, data: typeof data === 'string' ? data : JSON.stringify(data) }
    this.store.appendEvent(this.id, event.seq, event.type, event.data)
    this.emit('event', event)
  }

  /** The result as JSON, exactly as the `result` event carries it (set when the run ends). */
  resultJson = ''

  /** @internal */
  finish (result: ExecuteResult, endedAt: number): void {
    this.status = result.status
    // Serialized once: the log, the stream and /api/execute all send this same text.
    this.resultJson = JSON.stringify(result)
    this.push('result', this.resultJson)
    this.store.markFinished(this.id, result, endedAt)
    this.resolveResult(result)
  }
}

/**
 * The CLI the Agent SDK ships for this platform (its optional dependency
 * `@anthropic-ai/claude-agent-sdk-<platform>-<arch>`), else `claude` on PATH.
 */
export function defaultCliPath (): string {
  const require = createRequire(import.meta.url)
  for (const pkg of [`@anthropic-ai/claude-agent-sdk-${process.platform}-${process.arch}`, `@anthropic-ai/claude-agent-sdk-${process.platform}-${process.arch}-musl`]) {
    try {
      const bin = join(dirname(require.resolve(`${pkg}/package.json`)), process.platform === 'win32' ? 'claude.exe' : 'claude')
      if (existsSync(bin)) return bin
    } catch {
      // Not installed for this platform: try the next, then PATH.
    }
  }
  return 'claude'
}

/** A request as stored: everything but the values of its env vars. */
function redactRequest (req: ExecuteRequest): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...req }
  if (req.env_vars !== undefined) copy.env_vars = Object.fromEntries(Object.keys(req.env_vars).map(k => [k, '[redacted]']))
  return copy
}

/**
 * Runs Claude Code CLIs for callers: checks requests against policy, records every run in the
 * store, admits runs within the limits (one at a time per session), streams and logs each run's
 * events, ends every run's whole process tree, and recovers what a previous process left behind.
 */
export class Runner extends EventEmitter<RunnerEvents> {
  readonly cliPath: string
  readonly probe: CliProbe
  readonly sessions: SessionRegistry
  private readonly scheduler: Scheduler
  private readonly runs = new Map<string, RunHandle>()
  private closing = false
  /** Aborted when the server shuts down: followers of runs that stay queued end their streams. */
  private readonly shutdown = new AbortController()
  private pruneTimer: NodeJS.Timeout | undefined
  /** What the previous process left in the store, until `recover()` deals with it. */
  private leftovers: { running: RunRecord[], queued: RunRecord[] } | undefined

  constructor (private readonly settings: Settings, private readonly log: RunnerLogger & { child: (b: object) => RunnerLogger }, readonly store: RunStore) {
    super()
    this.cliPath = settings.claudePath ?? defaultCliPath()
    const probeEnv = buildChildEnv(settings.serverEnv, {}, 'probe', settings.passEnv)
    this.probe = new CliProbe(this.cliPath, probeEnv)
    const env = settings.serverEnv
    const configDir = env.CLAUDE_CONFIG_DIR ?? join(env.HOME ?? '/', '.claude')
    this.sessions = new SessionRegistry(configDir)
    this.scheduler = new Scheduler(settings.maxConcurrentRuns, settings.maxQueuedRuns)
    // Every queued run and every follower listens for the shutdown.
    setMaxListeners(0, this.shutdown.signal)
  }

  /**
   * Probe the CLI, note what a previous process left (acted on by `recover()`, once the server
   * has its port), prune old runs, keep all of it going.
   */
  async start (): Promise<void> {
    const status = await this.probe.refresh()
    if (!status.available) this.log.warn({ cli: this.cliPath, error: status.error }, 'Claude Code CLI not available: runs will fail with cli_not_found')
    else if (status.credentials === 'missing') this.log.warn({ cli: this.cliPath }, 'no Claude credential configured (ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN or a `claude` login): runs will fail with not_authenticated')
    this.probe.startBackground(this.settings.cliProbeIntervalS)
    // Read now, before any new run exists, so recovery never touches a run of this process.
    this.leftovers = { running: this.store.runsWithStatus('running'), queued: this.store.runsWithStatus('queued') }
    this.prune()
    this.pruneTimer = setInterval(() => this.prune(), 3600_000)
    this.pruneTimer.unref()
  }

  stats (): { active: number, queued: number } {
    return { active: this.scheduler.active, queued: this.scheduler.queued }
  }

  get shuttingDown (): boolean { return this.closing }

  /** How many runs of a key are queued or running. */
  liveRunsOf (keyName: string): number {
    let n = 0
    for (const h of this.runs.values()) if (h.keyName === keyName) n++
    return n
  }

  /** The live handle of a queued or running run. */
  get (runId: string): RunHandle | undefined {
    return this.runs.get(runId)
  }

  /**
   * Check a request against policy and resolve its directory and session. Throws the typed
   * errors of `errors.ts` (400/403/409); starts nothing.
   */
  async prepare (req: ExecuteRequest): Promise<RunSpec> {
    const s = this.settings
    const permissionMode = checkPermissionMode(req.permission_mode, s)
    const env = checkEnvVars(req.env_vars)
    let cwd = await resolveWorkingDir(req.working_directory, s)
    let sessionId: string = randomUUID()
    let sessionMode: RunSpec['sessionMode'] = 'new'
    let forkedFrom: string | undefined
    if (req.session_id !== undefined) {
      const id = req.session_id.toLowerCase()
      const home = await this.sessions.locate(id)
      if (home !== null) {
        if (req.working_directory !== undefined && home !== cwd) {
          throw new SessionDirectoryMismatch(`session ${id} belongs to working_directory ${home}; omit working_directory or name that one`)
        }
        if (!s.allowedRoots.some(root => isInside(root, home))) {
          throw new WorkingDirectoryForbidden(`session ${id} lives in ${home}, which is outside the allowed roots: ${s.allowedRoots.join(', ')}`)
        }
        cwd = home
      }
      if (req.fork_session === true) {
        sessionMode = 'fork'
        forkedFrom = id
      } else {
        // Whether to create or resume is settled when the run starts: an earlier queued run may create it.
        sessionId = id
      }
    }
    const spec: RunSpec = {
      runId: randomUUID(),
      prompt: req.prompt,
      cwd,
      sessionId,
      sessionMode,
      timeoutS: req.timeout ?? s.defaultTimeoutS,
      env,
      permissionMode,
      includePartialMessages: req.include_partial_messages === true
    }
    if (forkedFrom !== undefined) spec.forkedFrom = forkedFrom
    if (req.model !== undefined) spec.model = req.model
    if (req.system_prompt !== undefined) spec.systemPrompt = req.system_prompt
    if (req.append_system_prompt !== undefined) spec.appendSystemPrompt = req.append_system_prompt
    if (req.allowed_tools !== undefined) spec.allowedTools = req.allowed_tools
    if (req.disallowed_tools !== undefined) spec.disallowedTools = req.disallowed_tools
    if (req.max_turns !== undefined) spec.maxTurns = req.max_turns
    if (req.max_budget_usd !== undefined) spec.maxBudgetUsd = req.max_budget_usd
    if (req.output_schema !== undefined) spec.outputSchema = req.output_schema
    return spec
  }

  /**
   * Accept a prepared run: 503 while shutting down, 429 when it cannot start and the queue is
   * full. The run is recorded before this returns and goes on whether or not anyone listens.
   */
  submit (spec: RunSpec, opts: SubmitOptions): RunHandle {
    if (this.closing) throw new ShuttingDown('the server is shutting down; retry in a moment')
    this.scheduler.checkCapacity(spec.sessionId)
    this.store.insertRun({
      id: spec.runId,
      sessionId: spec.sessionId,
      workingDirectory: spec.cwd,
      request: redactRequest(opts.request),
      spec,
      keyName: opts.keyName ?? null,
      cancelOnDisconnect: opts.cancelOnDisconnect,
      createdAt: Date.now()
    })
    this.sessions.remember(spec.sessionId, spec.cwd)
    const handle = this.track(spec, opts.cancelOnDisconnect, 0, opts.keyName ?? null, opts.requestId)
    handle.push('run', { run_id: spec.runId, session_id: spec.sessionId, working_directory: spec.cwd })
    handle.ticket = this.scheduler.enter(spec.sessionId, handle.admit, true)
    return handle
  }

  /** Cancel a queued or running run; false when it is not live (finished, or unknown). */
  cancel (runId: string, reason: string): boolean {
    const handle = this.runs.get(runId)
    if (handle === undefined) return false
    handle.cancel(reason)
    return true
  }

  /**
   * Send a run's events with `seq > after` to `write`, from the log and then live, until the
   * terminal `result` (true) or until `signal` aborts or the server shuts down (false). When
   * `write` reports congestion, live delivery stops and resumes from the log after `drained`:
   * a slow client never makes the server buffer without bound, and never misses an event.
   */
  async follow (runId: string, after: number, write: (e: RunEvent) => boolean, drained: () => Promise<void>, signal: AbortSignal): Promise<boolean> {
    let cursor = after
    const stopped = (): boolean => signal.aborted || this.shutdown.signal.aborted
    const send = (e: RunEvent): { ok: boolean, done: boolean } => {
      cursor = e.seq
      return { ok: write(e), done: e.type === 'result' }
    }
    for (;;) {
      // Catch up from the log, a page at a time.
      for (;;) {
        const page = this.store.eventsAfter(runId, cursor, REPLAY_PAGE, REPLAY_PAGE_BYTES)
        for (const e of page) {
          const { ok, done } = send(e as RunEvent)
          if (done) return true
          if (!ok) await drained()
          if (stopped()) return false
        }
        if (page.length === 0) break
      }
      // Then live: the empty page above was read in this same tick, so attaching now misses nothing.
      const handle = this.runs.get(runId)
      // Not live and no result in the log: a run left queued by a shutdown. Nothing more will come.
      if (handle === undefined) return false
      const outcome = await new Promise<'done' | 'congested' | 'stopped'>(resolve => {
        const onEvent = (e: RunEvent): void => {
          if (e.seq <= cursor) return
          const { ok, done } = send(e)
          if (done) finish('done')
          else if (!ok) finish('congested')
        }
        const onStop = (): void => finish('stopped')
        const finish = (o: 'done' | 'congested' | 'stopped'): void => {
          handle.off('event', onEvent)
          signal.removeEventListener('abort', onStop)
          this.shutdown.signal.removeEventListener('abort', onStop)
          resolve(o)
        }
        if (stopped()) return resolve('stopped')
        handle.on('event', onEvent)
        signal.addEventListener('abort', onStop)
        this.shutdown.signal.addEventListener('abort', onStop)
      })
      if (outcome === 'done') return true
      if (outcome === 'stopped') return false
      await drained()
      if (stopped()) return false
    }
  }

  /**
   * Shut down: stop admitting (503), let running runs finish for `graceMs`, then cancel the rest
   * and wait until their trees are gone. Queued runs stay queued for the next start, except those
   * whose client waits on the connection that is about to close.
   */
  async close (graceMs = this.settings.shutdownGraceS * 1000): Promise<void> {
    this.closing = true
    this.scheduler.pause()
    this.probe.stop()
    clearInterval(this.pruneTimer)
    const live = [...this.runs.values()]
    for (const h of live) {
      if (h.status === 'queued' && h.cancelOnDisconnect) h.cancel('server shutting down')
    }
    // Admitted runs count as running: their spawn may be a tick away, and must not outlive the store.
    const running = live.filter(h => h.status === 'running' || h.wasAdmitted || h.cancelOnDisconnect)
    if (graceMs > 0 && running.length > 0) {
      this.log.info({ running: running.length, grace_s: graceMs / 1000 }, 'waiting for running runs to finish')
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        Promise.all(running.map(h => h.result)),
        new Promise(resolve => { timer = setTimeout(resolve, graceMs) })
      ])
      clearTimeout(timer)
    }
    for (const h of running) h.cancel('server shutting down')
    await Promise.all(running.map(h => h.result))
    // Runs left queued stay so in the store; their followers end now and reconnect later.
    this.shutdown.abort()
    this.store.close()
  }

  /** Build the live handle of a run and run it through its life. */
  private track (spec: RunSpec, cancelOnDisconnect: boolean, lastSeq: number, keyName: string | null, requestId?: string): RunHandle {
    const log = this.log.child({ run_id: spec.runId, key_name: keyName, ...(requestId !== undefined ? { request_id: requestId } : {}) })
    const handle = new RunHandle(spec, cancelOnDisconnect, this.store, lastSeq, keyName, log)
    this.runs.set(handle.id, handle)
    void this.execute(handle).finally(() => {
      handle.ticket?.release()
      this.runs.delete(handle.id)
    })
    return handle
  }

  /**
   * What a previous process left: runs it had `running` are `interrupted` (after any process of
   * theirs still alive is killed); runs it had `queued` are queued again, but for those whose
   * client waited on a connection that died with it. Called once the server holds its port (and
   * `DATA_DIR`'s lock), so a server that cannot start never touches another one's runs. Once only.
   */
  async recover (): Promise<void> {
    const leftovers = this.leftovers
    this.leftovers = undefined
    if (leftovers === undefined || this.closing) return
    for (const r of leftovers.running) {
      let killed = 0
      if (r.marker !== null) {
        const report = await killRunTree({ rootPid: undefined, markerName: RUN_MARKER_VAR, markerValue: r.marker, graceMs: 0, rootExited: Promise.resolve() })
        killed = report.killed
      }
      this.finishStored(r, { status: 'interrupted', error: 'The server stopped while this run was going; it did not finish' })
      this.log.warn({ run_id: r.id, killed }, 'run interrupted by a server restart')
    }
    for (const r of leftovers.queued) {
      if (r.cancelOnDisconnect || r.spec === null) {
        this.finishStored(r, { status: 'cancelled', error: 'Run cancelled: its client\'s connection ended when the server stopped' })
        continue
      }
      this.sessions.remember(r.sessionId, r.workingDirectory)
      const handle = this.track(r.spec, false, this.store.lastSeq(r.id), r.keyName)
      handle.ticket = this.scheduler.enter(r.spec.sessionId, handle.admit, true)
      this.log.info({ run_id: r.id }, 'queued run recovered after a restart')
    }
  }

  /** End a stored run that has no live process: result event, then the row. */
  private finishStored (r: RunRecord, how: { status: 'interrupted' | 'cancelled', error: string }): void {
    const now = Date.now()
    const partialText = this.textOf(r)
    const result: ExecuteResult = {
      ...toExecuteResult({ runId: r.id, sessionId: r.sessionId, timeoutS: 0, exitCode: null, stderrTail: '', oversizeLines: 0, startedAt: r.createdAt, endedAt: now, maxOutputBytes: this.settings.maxOutputBytes, ended: { by: 'cancel', reason: '' }, partialText }),
      status: how.status,
      error_code: how.status,
      error: how.error
    }
    const seq = this.store.lastSeq(r.id) + 1
    this.store.appendEvent(r.id, seq, 'result', JSON.stringify(result))
    this.store.markFinished(r.id, result, now)
  }

  /** The text a stored run had streamed, read back from its log (capped like any output). */
  private textOf (r: RunRecord): string {
    const partial = new PartialText(this.settings.maxOutputBytes)
    let cursor = 0
    for (;;) {
      const page = this.store.eventsAfter(r.id, cursor, REPLAY_PAGE, REPLAY_PAGE_BYTES)
      if (page.length === 0 || partial.truncated) break
      for (const e of page) {
        cursor = e.seq
        if (e.type === 'text') partial.add((JSON.parse(e.data) as { text: string }).text, r.spec?.includePartialMessages !== true)
      }
    }
    return partial.text
  }

  private prune (): void {
    const removed = this.store.prune({ maxAgeMs: this.settings.retentionDays * 86_400_000, maxRuns: this.settings.retentionMaxRuns })
    if (removed > 0) this.log.info({ removed }, 'pruned old runs')
  }

  private async execute (handle: RunHandle): Promise<void> {
    const spec = handle.spec
    // The limit counts from submission: a run that waits too long in the queue times out too.
    const deadline = setTimeout(() => handle.end({ by: 'timeout' }), spec.timeoutS * 1000)
    deadline.unref()
    const ended = new Promise<void>(resolve => handle.onEnd(resolve))
    const outcome: RunOutcome = {
      runId: spec.runId,
      sessionId: spec.sessionId,
      timeoutS: spec.timeoutS,
      exitCode: null,
      stderrTail: '',
      oversizeLines: 0,
      startedAt: handle.submittedAt,
      endedAt: 0,
      maxOutputBytes: this.settings.maxOutputBytes
    }
    const shutdown = new Promise<void>(resolve => this.shutdown.signal.addEventListener('abort', () => resolve(), { once: true }))
    try {
      await Promise.race([handle.admitted, ended, shutdown])
      // Left queued by a shutdown: it stays queued in the store for the next start.
      if (handle.status === 'queued' && handle.endedBy === undefined && this.shutdown.signal.aborted) return
      if (handle.endedBy === undefined) await this.spawn(handle, outcome, ended)
    } catch (err) {
      handle.log.error({ err }, 'run failed unexpectedly')
      outcome.spawnError = { message: (err as Error).message }
    } finally {
      clearTimeout(deadline)
    }
    if (handle.endedBy !== undefined) outcome.ended = handle.endedBy
    outcome.endedAt = Date.now()
    const result = toExecuteResult(outcome)
    handle.log.info({
      session_id: result.session_id,
      status: result.status,
      error_code: result.error_code,
      duration_s: result.execution_time,
      cost_usd: result.total_cost_usd,
      num_turns: result.num_turns
    }, 'run finished')
    handle.finish(result, outcome.endedAt)
    this.emit('finished', handle, result)
  }

  private async spawn (handle: RunHandle, outcome: RunOutcome, ended: Promise<void>): Promise<void> {
    const spec = handle.spec
    if (spec.sessionMode !== 'fork') spec.sessionMode = await this.sessions.exists(spec.sessionId) ? 'resume' : 'new'
    if (handle.endedBy !== undefined) return
    const marker = randomUUID()
    const env = buildChildEnv(this.settings.serverEnv, spec.env, marker, this.settings.passEnv)
    handle.status = 'running'
    // Recorded before the spawn: if the server dies now, the next start finds and kills the tree.
    this.store.markStarted(spec.runId, Date.now(), marker, spec.sessionId)
    this.emit('started', handle)
    const execution = await executeRun(spec, env, marker, {
      cliPath: this.cliPath,
      settingSources: this.settings.settingSources,
      maxLineBytes: this.settings.maxLineBytes,
      maxOutputBytes: this.settings.maxOutputBytes,
      killGraceMs: this.settings.killGraceMs
    }, {
      event: (type, data) => handle.push(type, data),
      ended,
      log: handle.log
    })
    Object.assign(outcome, execution)
  }
}

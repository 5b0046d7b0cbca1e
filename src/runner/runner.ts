import { EventEmitter } from 'node:events'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { execa } from 'execa'
import type { Settings } from '../config.js'
import { SessionBusy, SessionDirectoryMismatch, ShuttingDown, WorkingDirectoryForbidden } from '../errors.js'
import type { ExecuteRequest, ExecuteResult, RunStatus } from '../schemas/execute.js'
import { Admission, type Ticket } from './admission.js'
import { buildCliArgs } from './cli-args.js'
import { buildChildEnv, RUN_MARKER_VAR } from './child-env.js'
import { CliProbe } from './cli-probe.js'
import { LineSplitter } from './line-splitter.js'
import { checkEnvVars, checkPermissionMode, isInside, resolveWorkingDir } from './policy.js'
import { killRunTree, type KillReport } from './process-tree.js'
import { toExecuteResult, type CliResultLine, type RunOutcome } from './result.js'
import { SessionRegistry } from './sessions.js'
import type { RunEvent, RunSpec } from './types.js'

/** The logging the runner needs (a pino logger fits). */
export interface RunnerLogger {
  info: (obj: object, msg?: string) => void
  warn: (obj: object, msg?: string) => void
  error: (obj: object, msg?: string) => void
  debug: (obj: object, msg?: string) => void
}

type EndReason = { by: 'timeout' } | { by: 'cancel', reason: string }

const STDERR_TAIL_BYTES = 8 * 1024

/** Distributes the `Omit` over the event union, so each member keeps its own `data` type. */
type NewEvent = RunEvent extends infer E ? E extends RunEvent ? Omit<E, 'seq'> : never : never

/**
 * One run: queued, then running, then ended with exactly one result. Emits `event` (RunEvent)
 * for every event in order, the terminal `result` last.
 */
export class RunHandle extends EventEmitter<{ event: [RunEvent] }> {
  status: RunStatus = 'queued'
  readonly submittedAt = Date.now()
  /** Resolves with the contract's result once the run has ended and its process tree is gone. */
  readonly result: Promise<ExecuteResult>
  endedBy: EndReason | undefined
  private seq = 0
  private resolveResult!: (r: ExecuteResult) => void
  private readonly endListeners: Array<() => void> = []
  /** Set while running: pauses and resumes reading the CLI's output (backpressure). */
  flow: { pause: () => void, resume: () => void } | undefined

  constructor (readonly spec: RunSpec, readonly ticket: Ticket) {
    super()
    this.result = new Promise(resolve => { this.resolveResult = resolve })
  }

  get id (): string { return this.spec.runId }

  /** Place in the admission queue (1-based), 0 once running. */
  position (): number { return this.ticket.position() }

  /** Ask the run to end; the tree is killed and the result says `cancelled`. Idempotent. */
  cancel (reason: string): void {
    this.end({ by: 'cancel', reason })
  }

  /** @internal */
  end (reason: EndReason): void {
    if (this.endedBy !== undefined || this.isFinished()) return
    this.endedBy = reason
    for (const l of this.endListeners.splice(0)) l()
  }

  /** @internal resolves when `end` is called. */
  onEnd (listener: () => void): void {
    if (this.endedBy !== undefined) listener()
    else this.endListeners.push(listener)
  }

  isFinished (): boolean {
    return this.status !== 'queued' && this.status !== 'running'
  }

  /** @internal */
  push (event: NewEvent): void {
    this.emit('event', { ...event, seq: ++this.seq } as RunEvent)
  }

  /** @internal */
  finish (result: ExecuteResult): void {
    this.status = result.status
    this.push({ type: 'result', data: result })
    this.resolveResult(result)
  }
}

/** The CLI this package depends on, else `claude` on PATH. */
export function defaultCliPath (): string {
  try {
    const pkg = createRequire(import.meta.url).resolve('@anthropic-ai/claude-code/package.json')
    const bin = join(dirname(pkg), 'bin', 'claude.exe')
    if (existsSync(bin)) return bin
  } catch {
    // Not installed as a dependency: fall back to PATH.
  }
  return 'claude'
}

/**
 * Runs Claude Code CLIs for callers: checks requests against policy, admits them within the
 * concurrency limits, keeps sessions in their directories and one run at a time, streams each
 * run's events, and ends every run's whole process tree.
 */
export class Runner {
  readonly cliPath: string
  readonly probe: CliProbe
  readonly sessions: SessionRegistry
  private readonly admission: Admission
  private readonly runs = new Map<string, RunHandle>()
  private closing = false

  constructor (private readonly settings: Settings, private readonly log: RunnerLogger) {
    this.cliPath = settings.claudePath ?? defaultCliPath()
    const probeEnv = buildChildEnv(settings.serverEnv, {}, 'probe', settings.passEnv)
    this.probe = new CliProbe(this.cliPath, probeEnv)
    const env = settings.serverEnv
    const configDir = env.CLAUDE_CONFIG_DIR ?? join(env.HOME ?? '/', '.claude')
    this.sessions = new SessionRegistry(configDir)
    this.admission = new Admission(settings.maxConcurrentRuns, settings.maxQueuedRuns)
  }

  /** Probe the CLI and keep the probe fresh in the background. */
  async start (): Promise<void> {
    const status = await this.probe.refresh()
    if (!status.available) this.log.warn({ cli: this.cliPath, error: status.error }, 'Claude Code CLI not available: runs will fail with cli_not_found')
    this.probe.startBackground(this.settings.cliProbeIntervalS)
  }

  stats (): { active: number, queued: number } {
    return { active: this.admission.running, queued: this.admission.queued }
  }

  get shuttingDown (): boolean { return this.closing }

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
        sessionId = id
        sessionMode = home !== null ? 'resume' : 'new'
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
   * Admit a prepared run: 503 while shutting down, 409 when its session is busy, 429 when the
   * queue is full. Returns at once; the run starts when a slot is free.
   */
  submit (spec: RunSpec, onEvent?: (event: RunEvent) => void): RunHandle {
    if (this.closing) throw new ShuttingDown('the server is shutting down; retry against another instance or after restart')
    const holder = this.sessions.holder(spec.sessionId)
    if (holder !== undefined) {
      throw new SessionBusy(`session ${spec.sessionId} is busy with run ${holder}; retry when it has finished`)
    }
    const ticket = this.admission.enter()
    this.sessions.claim(spec.sessionId, spec.runId)
    const handle = new RunHandle(spec, ticket)
    // Attached before the first event, so a caller sees every event, 'run' included.
    if (onEvent !== undefined) handle.on('event', onEvent)
    this.runs.set(handle.id, handle)
    handle.push({ type: 'run', data: { run_id: spec.runId, session_id: spec.sessionId, working_directory: spec.cwd } })
    void this.execute(handle).finally(() => {
      ticket.release()
      this.sessions.release(spec.sessionId, spec.runId)
      this.runs.delete(handle.id)
    })
    return handle
  }

  /** Stop admitting, cancel every queued and running run, and wait until their trees are gone. */
  async close (reason = 'server shutting down'): Promise<void> {
    this.closing = true
    this.probe.stop()
    const pending = [...this.runs.values()]
    for (const h of pending) h.cancel(reason)
    await Promise.all(pending.map(h => h.result))
  }

  private async execute (handle: RunHandle): Promise<void> {
    const spec = handle.spec
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
    try {
      await Promise.race([handle.ticket.ready, ended])
      if (handle.endedBy === undefined) await this.spawn(handle, outcome, ended)
    } catch (err) {
      this.log.error({ err, run_id: spec.runId }, 'run failed unexpectedly')
      outcome.spawnError = { message: (err as Error).message }
    } finally {
      clearTimeout(deadline)
    }
    if (handle.endedBy !== undefined) outcome.ended = handle.endedBy
    outcome.endedAt = Date.now()
    const result = toExecuteResult(outcome)
    this.log.info({
      run_id: spec.runId,
      session_id: result.session_id,
      status: result.status,
      error_code: result.error_code,
      duration_s: result.execution_time,
      cost_usd: result.total_cost_usd
    }, 'run finished')
    handle.finish(result)
  }

  private async spawn (handle: RunHandle, outcome: RunOutcome, ended: Promise<void>): Promise<void> {
    const spec = handle.spec
    const marker = randomUUID()
    const env = buildChildEnv(this.settings.serverEnv, spec.env, marker, this.settings.passEnv)
    const args = buildCliArgs(spec, this.settings.settingSources)
    handle.status = 'running'
    this.sessions.remember(spec.sessionId, spec.cwd)
    const child = execa(this.cliPath, args, {
      cwd: spec.cwd,
      env,
      extendEnv: false,
      input: spec.prompt,
      buffer: false,
      reject: false,
      // Own process group, so the CLI and its ordinary children can be signalled at once.
      detached: true,
      cleanup: true,
      stripFinalNewline: false
    })
    this.log.debug({ run_id: spec.runId, pid: child.pid, args }, 'CLI started')

    const splitter = new LineSplitter(this.settings.maxLineBytes, line => {
      let msg: { type?: unknown, subtype?: unknown, message?: { content?: unknown }, event?: { type?: unknown, delta?: { type?: unknown, text?: unknown } } }
      try {
        msg = JSON.parse(line)
      } catch {
        this.log.debug({ run_id: spec.runId, line: line.slice(0, 200) }, 'CLI printed a non-JSON line')
        return
      }
      if (msg === null || typeof msg !== 'object') return
      handle.push({ type: 'message', data: line })
      if (msg.type === 'result') {
        outcome.resultLine = msg as CliResultLine
      } else if (msg.type === 'stream_event' && msg.event?.type === 'content_block_delta' && msg.event.delta?.type === 'text_delta' && typeof msg.event.delta.text === 'string') {
        handle.push({ type: 'text', data: { text: msg.event.delta.text } })
      } else if (msg.type === 'assistant' && !spec.includePartialMessages && Array.isArray(msg.message?.content)) {
        for (const block of msg.message.content as Array<{ type?: unknown, text?: unknown }>) {
          if (block?.type === 'text' && typeof block.text === 'string' && block.text.length > 0) {
            handle.push({ type: 'text', data: { text: block.text } })
          }
        }
      }
    }, bytes => {
      outcome.oversizeLines++
      this.log.warn({ run_id: spec.runId, bytes, max: this.settings.maxLineBytes }, 'dropped a CLI output line over MAX_LINE_BYTES')
    })

    child.stdout?.on('data', (chunk: Buffer) => splitter.push(chunk))
    child.stderr?.on('data', (chunk: Buffer) => {
      outcome.stderrTail = (outcome.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES)
    })
    handle.flow = {
      pause: () => child.stdout?.pause(),
      resume: () => child.stdout?.resume()
    }

    const exited = child.then(r => r)
    let killing: Promise<KillReport> | undefined
    void ended.then(() => {
      // Timeout, cancel, disconnect or shutdown: end the whole tree, not just the CLI.
      child.stdout?.resume()
      killing = killRunTree({ rootPid: child.pid, markerName: RUN_MARKER_VAR, markerValue: marker, graceMs: this.settings.killGraceMs, rootExited: exited })
    })

    const res = await exited
    splitter.end()
    handle.flow = undefined
    outcome.exitCode = res.exitCode ?? null
    const cause = res.cause as NodeJS.ErrnoException | undefined
    if (child.pid === undefined || (res.failed && cause?.syscall?.startsWith('spawn') === true)) {
      outcome.spawnError = { message: cause?.message ?? res.message ?? 'spawn failed', ...(cause?.code !== undefined ? { code: cause.code } : {}) }
    }
    // The CLI is gone; whatever its tools left behind (background tasks, daemons) goes too.
    const report = await (killing ?? killRunTree({ rootPid: undefined, markerName: RUN_MARKER_VAR, markerValue: marker, graceMs: 0, rootExited: exited }))
    if (report.survivors.length > 0) {
      this.log.error({ run_id: spec.runId, survivors: report.survivors }, 'processes of the run survived SIGKILL')
    } else if (report.killed > 0) {
      this.log.info({ run_id: spec.runId, killed: report.killed }, 'ended the run\'s remaining processes')
    }
  }
}

import { EventEmitter } from 'node:events'
import { PassThrough, type Writable } from 'node:stream'
import { query, type CanUseTool, type SDKUserMessage, type SpawnedProcess, type SpawnOptions } from '@anthropic-ai/claude-agent-sdk'
import { userContent } from './attachments.js'
import type { Inbox } from './inbox.js'
import { execa, type ResultPromise } from 'execa'
import { RUN_MARKER_VAR } from './child-env.js'
import { sdkOptions } from './cli-options.js'
import { mapCliLine, sdkNeeds } from './cli-events.js'
import { LineSplitter } from './line-splitter.js'
import { killRunTree, type KillReport } from './process-tree.js'
import { PartialText, type CliResultLine } from './result.js'
import type { RunSpec } from './types.js'

/** The logging the engine needs (a pino logger fits). */
export interface RunnerLogger {
  info: (obj: object, msg?: string) => void
  warn: (obj: object, msg?: string) => void
  error: (obj: object, msg?: string) => void
  debug: (obj: object, msg?: string) => void
}

const STDERR_TAIL_BYTES = 8 * 1024
/** Lines past this size are streamed through the shrinker rather than held whole. */
const SHRINK_ABOVE_BYTES = 1024 * 1024
/** An oversized line is shown to clients as a preview with strings cut to this. */
const PREVIEW_STRING_BYTES = 64 * 1024
/** After the CLI exits, how long its output may stay silent before the pipe is given up. */
const OUTPUT_GRACE_MS = 2000

/** How the executor runs CLIs: the same for every run. */
export interface ExecutorSettings {
  cliPath: string
  settingSources: string
  maxLineBytes: number
  maxOutputBytes: number
  killGraceMs: number
  /** The unprivileged identity the CLI runs as (agent isolation); the server's own when absent. */
  identity?: { uid: number, gid: number }
  /** A program the CLI runs inside (the sandbox): `command args… -- cli cliArgs…`. */
  wrap?: { command: string, args: string[] }
}

/** What the executor learnt of a run: the parts of its outcome it is the source of. */
export interface Execution {
  exitCode: number | null
  spawnError?: { code?: string, message: string }
  resultLine?: CliResultLine
  resultShrunk?: boolean
  stderrTail: string
  oversizeLines: number
  partialText: string
  /** An interrupt that the CLI did not honour in time: the tree was killed instead. */
  interruptKilled?: boolean
}

/** What the executor tells its run while it goes. */
export interface ExecutionHooks {
  /** An event for the run's log: `message` (a CLI line as shown), `text`, or `user_message`. */
  event: (type: 'message' | 'text' | 'user_message', data: unknown) => void
  /** Follow-up messages and interrupts (none: the run answers its prompt and ends). */
  inbox?: Inbox
  /** With `approvals: ask`: decides each permission request of the CLI (and its subagents). */
  askApproval?: CanUseTool
  /** Resolves when the run must end early (timeout, cancel, disconnect, shutdown). */
  ended: Promise<void>
  log: RunnerLogger
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
 * Runs one run's CLI through the Agent SDK's `query()` with streaming input, spawned by execa in
 * its own process group and carrying the run marker: the first user message is the prompt, the
 * input ends once the CLI has answered, and at the end (normal, timeout, cancel) the whole
 * process tree is ended and swept. Never throws: what went wrong is in the `Execution`.
 */
export async function executeRun (spec: RunSpec, env: Record<string, string>, marker: string, s: ExecutorSettings, hooks: ExecutionHooks): Promise<Execution> {
  const out: Execution = { exitCode: null, stderrTail: '', oversizeLines: 0, partialText: '' }
  const partial = new PartialText(s.maxOutputBytes)
  // The input stays open turn by turn: each user turn is handed over once the previous one is
  // answered (its `result`), until the inbox has nothing more, or the run is ended early.
  let turnEnded: () => void = () => {}
  let turnDone = new Promise<void>(resolve => { turnEnded = resolve })
  let inputClosed = false
  const closeInput = (): void => {
    inputClosed = true
    hooks.inbox?.close()
    turnEnded()
  }
  void hooks.ended.then(closeInput)
  // An interrupt waits for the CLI's init (one sent earlier does nothing); if the turn has not
  // ended within the kill grace, the tree is killed instead.
  let initSeen = false
  let interruptWanted = false
  let interruptFallback: NodeJS.Timeout | undefined
  let interrupt: () => void = () => { interruptWanted = true }
  // Wired before the CLI exists: an interrupt that comes first is remembered, and sent after init.
  if (hooks.inbox !== undefined) hooks.inbox.interruptTurn = () => interrupt()

  const splitter = new LineSplitter(s.maxLineBytes, (line, shrunk, preview) => {
    let msg: unknown
    try {
      msg = JSON.parse(line)
    } catch {
      hooks.log.debug({ line: line.slice(0, 200) }, 'CLI printed a non-JSON line')
      return
    }
    // An oversized line is shown with its strings cut short; the full (capped) output is in `result`.
    for (const effect of mapCliLine(msg, preview ?? line, spec.includePartialMessages)) {
      switch (effect.kind) {
        case 'message': hooks.event('message', effect.data); break
        case 'text':
          hooks.event('text', { text: effect.text })
          partial.add(effect.text, effect.block)
          break
        case 'block': partial.newBlock(); break
        case 'result':
          out.resultLine = effect.line
          out.resultShrunk = shrunk
          clearTimeout(interruptFallback)
          turnEnded()
          break
      }
    }
    if (!initSeen && (msg as { type?: unknown, subtype?: unknown }).type === 'system' && (msg as { subtype?: unknown }).subtype === 'init') {
      initSeen = true
      if (interruptWanted) interrupt()
    }
    if (shrunk) hooks.log.warn({ max: s.maxLineBytes }, 'a CLI output line over MAX_LINE_BYTES was shrunk: its longest strings were cut')
    // The SDK reads the lines of its protocol (shrunk, if they had to be).
    if (sdkNeeds(msg)) contained?.stdout.write(line + '\n')
  }, bytes => {
    out.oversizeLines++
    hooks.log.warn({ bytes, max: s.maxLineBytes }, 'dropped a CLI output line over MAX_LINE_BYTES')
  }, s.maxOutputBytes, SHRINK_ABOVE_BYTES, PREVIEW_STRING_BYTES)

  let contained: ContainedProcess | undefined
  let exited: Promise<{ exitCode?: number | undefined, failed: boolean, cause?: unknown, message?: string | undefined }> | undefined
  const spawn = (o: SpawnOptions): SpawnedProcess => {
    const childEnv: Record<string, string> = {}
    for (const [k, v] of Object.entries(o.env)) if (v !== undefined) childEnv[k] = v
    const [command, args] = s.wrap === undefined ? [o.command, o.args] : [s.wrap.command, [...s.wrap.args, '--', o.command, ...o.args]]
    const child = execa(command, args, {
      cwd: o.cwd ?? spec.cwd,
      env: childEnv,
      extendEnv: false,
      buffer: false,
      reject: false,
      // Own process group, so the CLI and its ordinary children can be signalled at once.
      detached: true,
      cleanup: true,
      ...(s.identity !== undefined ? { uid: s.identity.uid, gid: s.identity.gid } : {}),
      stdin: 'pipe',
      stripFinalNewline: false
    })
    contained = new ContainedProcess(child)
    hooks.log.debug({ pid: child.pid, args: o.args }, 'CLI started')
    const c = contained
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
      out.stderrTail = (out.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES)
    })
    const processExit = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
    exited = Promise.race([
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
      child.stdout?.destroy()
      child.stderr?.destroy()
      splitter.end()
      c.exited(r.exitCode ?? null, r.signal)
      return r
    })
    // Ended while the SDK was still starting: the process goes at once.
    if (mustEnd) endTree()
    return contained
  }

  const userMessage = (prompt: string, attachments: RunSpec['attachments']): SDKUserMessage =>
    ({ type: 'user', message: { role: 'user', content: userContent(prompt, attachments) as SDKUserMessage['message']['content'] }, parent_tool_use_id: null, session_id: spec.sessionId })

  async function * input (): AsyncGenerator<SDKUserMessage> {
    yield userMessage(spec.prompt, spec.attachments)
    for (;;) {
      await turnDone
      if (inputClosed) return
      // Taken, or the inbox closed, in one synchronous step: nothing accepted is left behind.
      const next = hooks.inbox?.takeOrClose()
      if (next === undefined) return
      turnDone = new Promise<void>(resolve => { turnEnded = resolve })
      hooks.event('user_message', { message_id: next.id, prompt: next.prompt, attachments: next.attachments?.length ?? 0 })
      yield userMessage(next.prompt, next.attachments)
    }
  }

  let killing: Promise<KillReport> | undefined
  let mustEnd = false
  /** Timeout, cancel, disconnect or shutdown: end the whole tree, not just the CLI. Once. */
  const endTree = (): void => {
    mustEnd = true
    if (killing !== undefined || contained === undefined) return
    killing = killRunTree({ rootPid: contained.child.pid, markerName: RUN_MARKER_VAR, markerValue: marker, graceMs: s.killGraceMs, rootExited: exited ?? Promise.resolve() })
  }
  void hooks.ended.then(endTree)

  try {
    const q = query({
      prompt: input(),
      options: {
        ...sdkOptions(spec, s.settingSources),
        ...(spec.approvals === 'ask' && hooks.askApproval !== undefined ? { canUseTool: hooks.askApproval } : {}),
        env,
        pathToClaudeCodeExecutable: s.cliPath,
        spawnClaudeCodeProcess: spawn
      }
    })
    interrupt = () => {
      if (!initSeen) {
        interruptWanted = true
        return
      }
      interruptWanted = false
      q.interrupt().catch((err: unknown) => hooks.log.debug({ err }, 'the interrupt was not acknowledged'))
      clearTimeout(interruptFallback)
      interruptFallback = setTimeout(() => {
        hooks.log.warn({ grace_ms: s.killGraceMs }, 'the CLI did not stop its turn on interrupt; killing the run\'s tree')
        out.interruptKilled = true
        endTree()
      }, s.killGraceMs)
      interruptFallback.unref()
    }
    // The events come from the lines themselves (above); the SDK's parsed messages are not needed.
    const messages = q[Symbol.asyncIterator]()
    while ((await messages.next()).done !== true) { /* drained */ }
  } catch (err) {
    // The SDK reports a CLI that exited non-zero or was killed as an error; the outcome says it better.
    hooks.log.debug({ err }, 'the SDK ended with an error')
    if (contained === undefined) out.spawnError = { message: (err as Error).message }
  }
  clearTimeout(interruptFallback)
  if (hooks.inbox !== undefined) hooks.inbox.interruptTurn = undefined
  closeInput()
  if (exited !== undefined) {
    const res = await exited
    out.exitCode = res.exitCode ?? null
    const cause = res.cause as NodeJS.ErrnoException | undefined
    if (contained?.child.pid === undefined || (res.failed && cause?.syscall?.startsWith('spawn') === true)) {
      out.spawnError = { message: cause?.message ?? res.message ?? 'spawn failed', ...(cause?.code !== undefined ? { code: cause.code } : {}) }
    }
  }
  out.partialText = partial.text
  // Only when that text becomes the output does its cut say `truncated`.
  if (partial.truncated && typeof out.resultLine?.result !== 'string') out.resultShrunk = true
  // The CLI is gone; whatever its tools left behind (background tasks, daemons) goes too.
  const report = await (killing ?? killRunTree({ rootPid: undefined, markerName: RUN_MARKER_VAR, markerValue: marker, graceMs: 0, rootExited: Promise.resolve() }))
  if (report.error !== undefined) hooks.log.error({ error: report.error }, 'could not verify that the run\'s processes are gone')
  else if (report.survivors.length > 0) hooks.log.error({ survivors: report.survivors }, 'processes of the run survived SIGKILL')
  else if (report.killed > 0) hooks.log.info({ killed: report.killed }, 'ended the run\'s remaining processes')
  return out
}

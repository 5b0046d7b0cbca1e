import { createSdkMcpServer, query, type CanUseTool, type ClaimOptions, type Options, type Query, type SDKUserMessage, type SpareProcess } from '@anthropic-ai/claude-agent-sdk'
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js'
import { userContent } from '../domain/attachments.js'
import type { Inbox } from './inbox.js'
import { RUN_MARKER_VAR } from '../isolation/proc.js'
import { cliSpawner, type CliProcess, type ExecutorSettings, type LineHandler } from './cli-process.js'
import { type RunnerLogger } from '../domain/logger.js'
import { mcpServersOf, sdkOptions } from './cli-options.js'
import { mapCliLine } from './cli-events.js'
import { endStrays, killRunTree } from '../isolation/process-tree.js'
import { PartialText, type CliResultLine } from './result.js'
import type { RunSpec } from '../domain/run.js'
import type { LimitName, ResourceUsage } from '../domain/limits.js'

export type { ExecutorSettings, RunnerLogger }

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
  /** Whether the CLI started (printed its first line): undefined when the run ended before it could. */
  launched?: boolean
  /** The resource limit the run's tree ran into (it was ended for it). */
  limit?: LimitName
  /** What the run's tree used, where it had a control group. */
  resources?: ResourceUsage
  /** The run's turn is answered and its CLI lives on, kept for the session's next run (`SessionCli.keep`). */
  kept?: boolean
  /** The kept CLI the run was handed to ended before it read a word of it (the run then starts its own). */
  lost?: boolean
}

/**
 * A CLI kept alive after a run of its session, waiting for the session's next turn: the next run
 * of the session adopts it (its lines become that run's, its prompt the next user message) instead
 * of resuming the session in a new CLI.
 */
export interface KeptCli {
  process: CliProcess
  /** The cost the CLI reported so far (its results count the whole process): the next run's is what it adds. */
  costSoFar: number
  /** Closes its input and ends it; resolves once its tree is gone. */
  close: () => Promise<void>
  /** Resolves when its CLI has exited (on its own, or closed), its tree swept. */
  gone: Promise<void>
  /** Its CLI has ended (its tree may still be being swept): it can take no run. */
  over: () => boolean
}

/** How a run uses session keep-alive: the kept CLI it continues on, and whether its own CLI may be kept. */
export interface SessionCli {
  /** The session's kept CLI, taken for this run. */
  kept?: KeptCli & { adopt: (run: Adoption) => boolean }
  /** Offer the run's CLI, its turn answered, to be kept: true when it is (the run then ends with `kept`). */
  keep?: (cli: KeptCli & { adopt: (run: Adoption) => boolean }) => boolean
}

/** What a run hands the kept CLI it adopts. */
export interface Adoption {
  spec: RunSpec
  settings: ExecutorSettings
  hooks: ExecutionHooks
  keep?: SessionCli['keep']
  finish: (out: Execution) => void
}

/** What the executor tells its run while it goes. */
export interface ExecutionHooks {
  /** An event for the run's log: `message` (a CLI line as shown), `text`, or `user_message`. */
  event: (type: 'message' | 'text' | 'user_message', data: unknown) => void
  /** Follow-up messages and interrupts (none: the run answers its prompt and ends). */
  inbox?: Inbox
  /** With `approvals: ask`: decides each permission request of the CLI (and its subagents). */
  askApproval?: CanUseTool
  /** A call of one of the client's functions (`spec.clientTools`): parked until the client answers with its output. */
  clientTool?: (callId: string, name: string, args: unknown) => Promise<string>
  /** Resolves when the run must end early (timeout, cancel, disconnect, shutdown). */
  ended: Promise<void>
  /** The prompt waits for it (the working directory's recording before the run: `Snapshots`). */
  ready?: Promise<unknown>
  log: RunnerLogger
}

/** A parked spare a run starts on instead of spawning a CLI (see `WarmPool`). */
export interface WarmStart {
  spare: SpareProcess
  process: CliProcess
  /** Whether the run went on the spare (`hit`) or its claim was refused (the run then starts cold). */
  outcome: (o: 'hit' | 'refused', why?: string) => void
}

/**
 * The client's functions as an in-process MCP server named `client` (its tools reach the agent as
 * `mcp__client__<name>`, offered directly rather than behind the CLI's tool search, and allowed
 * without a permission prompt): each call is handed to `hooks.clientTool` under the id of the
 * model's tool use, and answered with what the client returns.
 */
function clientToolOptions (spec: RunSpec, hooks: ExecutionHooks): Pick<Options, 'mcpServers' | 'allowedTools'> {
  const tools = spec.clientTools
  const call = hooks.clientTool
  if (tools === undefined || call === undefined) return {}
  const server = createSdkMcpServer({ name: 'client', version: '1.0.0' })
  const low = (server.instance as unknown as { server: McpLowServer }).server
  low.registerCapabilities({ tools: {} })
  low.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: tools.map(t => ({ name: t.name, ...(t.description !== undefined ? { description: t.description } : {}), inputSchema: { type: 'object', ...(t.parameters ?? {}) } }))
  }))
  let n = 0
  low.setRequestHandler(CallToolRequestSchema, async (req: { params: { name: string, arguments?: unknown, _meta?: Record<string, unknown> } }) => {
    const id = typeof req.params._meta?.['claudecode/toolUseId'] === 'string' ? req.params._meta['claudecode/toolUseId'] : `call_${spec.runId}_${++n}`
    const output = await call(id, req.params.name, req.params.arguments ?? {})
    return { content: [{ type: 'text', text: output }] }
  })
  return { mcpServers: { client: server }, allowedTools: [...(spec.allowedTools ?? []), 'mcp__client'] }
}

/** `p` settled, or `ms` passed. */
async function settledWithin (p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  await Promise.race([p.catch(() => {}), new Promise(resolve => { timer = setTimeout(resolve, ms) })])
  clearTimeout(timer)
}

/** A run's MCP servers: the client's functions (in-process) and the servers it named. */
function toolOptions (spec: RunSpec, hooks: ExecutionHooks, s: ExecutorSettings): Pick<Options, 'mcpServers' | 'allowedTools'> {
  const client = clientToolOptions(spec, hooks)
  const named = mcpServersOf(spec, s.mcpServers ?? {})
  if (Object.keys(named).length === 0) return client
  return { ...client, mcpServers: { ...named, ...(client.mcpServers ?? {}) } }
}

/** The parts of the MCP SDK's low-level server the client's functions need. */
interface McpLowServer {
  registerCapabilities: (c: Record<string, unknown>) => void
  setRequestHandler: (schema: unknown, handler: (req: any) => Promise<unknown>) => void
}

/** What a claim sets of a run: the rest (tools, flags) was fixed when the spare was started. */
export function claimOptionsOf (spec: RunSpec): ClaimOptions {
  return {
    cwd: spec.cwd,
    permissionMode: spec.permissionMode,
    ...(spec.model !== undefined ? { model: spec.model } : {}),
    // A system prompt of the run's own replaces the preset, appended text and all (as on a cold start).
    ...(spec.appendSystemPrompt !== undefined && spec.systemPrompt === undefined ? { appendSystemPrompt: spec.appendSystemPrompt } : {})
  }
}

/**
 * Runs one run's CLI through the Agent SDK with streaming input: on a warm spare when one is
 * given and takes the claim, else through `query()`, spawned by execa in its own process group
 * and carrying the run marker. The first user message is the prompt, the input ends once the CLI
 * has answered, and at the end (normal, timeout, cancel) the whole process tree is ended and
 * swept. Never throws: what went wrong is in the `Execution`.
 */
export async function executeRun (spec: RunSpec, env: Record<string, string>, marker: string, s: ExecutorSettings, hooks: ExecutionHooks, warm?: WarmStart, session?: SessionCli): Promise<Execution> {
  // The session's kept CLI: this run continues on it.
  if (session?.kept !== undefined) {
    const kept = session.kept
    const keepHook = session.keep
    let adopted = false
    const done = new Promise<Execution>(resolve => { adopted = kept.adopt({ spec, settings: s, hooks, keep: keepHook, finish: resolve }) })
    if (adopted) {
      const ex = await done
      if (ex.lost !== true) return ex
    }
    // It ended before this run reached it: once its tree is swept (same marker), the session
    // resumes in a new CLI, as it would have without keep-alive.
    hooks.log.info({}, 'the session\'s kept CLI ended before it read the run; resuming the session in a new CLI')
    await kept.gone
    session = keepHook !== undefined ? { keep: keepHook } : undefined
  }
  // What follows is the CLI's life: one run's, or (kept between runs of its session) several in
  // turn. What is a run's own (its spec, hooks, outcome, turn) is rebound when the next adopts it.
  let out: Execution = { exitCode: null, stderrTail: '', oversizeLines: 0, partialText: '' }
  let partial = new PartialText(s.maxOutputBytes)
  let keep = session?.keep
  let finish: (o: Execution) => void = () => {}
  const finished = new Promise<Execution>(resolve => { finish = resolve })
  /** Which run the CLI serves now (a run's late signals must not reach the next). */
  let serving = 0
  /** Kept between runs: its lines belong to no run. */
  let parked = false
  /** What the CLI had reported spending before this run (kept CLIs count the whole process). */
  let costBefore = 0
  /** Lines the CLI printed for the run it serves (on a kept CLI: since the run adopted it). */
  let linesForRun = 0
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
  const onEnded = (h: ExecutionHooks): void => {
    const mine = serving
    void h.ended.then(() => {
      if (mine !== serving) return
      closeInput()
      endTree()
    })
  }
  // An interrupt waits for the CLI's init (one sent earlier does nothing); if the turn has not
  // ended within the kill grace, the tree is killed instead.
  let initSeen = false
  let interruptWanted = false
  let interruptFallback: NodeJS.Timeout | undefined
  let interrupt: () => void = () => { interruptWanted = true }
  // Wired before the CLI exists: an interrupt that comes first is remembered, and sent after init.
  if (hooks.inbox !== undefined) hooks.inbox.interruptTurn = () => interrupt()

  const onLine: LineHandler = (msg, line, shrunk, preview) => {
    if (parked) {
      hooks.log.debug({ line: line.slice(0, 200) }, 'a kept CLI printed a line between runs; dropped')
      return
    }
    linesForRun++
    // The transcript's copy for the SDK's session store (cluster mode): the SDK's business, not the client's.
    if ((msg as { type?: unknown } | null)?.type === 'transcript_mirror') return
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
          // On a kept CLI the cost is the process's running total: the run's is what it added.
          out.resultLine = costBefore > 0 && typeof effect.line.total_cost_usd === 'number'
            ? { ...effect.line, total_cost_usd: Math.max(0, effect.line.total_cost_usd - costBefore) }
            : effect.line
          out.resultShrunk = shrunk
          clearTimeout(interruptFallback)
          turnEnded()
          break
      }
    }
    if (!initSeen && (msg as { type?: unknown, subtype?: unknown }).type === 'system' && (msg as { subtype?: unknown }).subtype === 'init') {
      initSeen = true
      if (interruptWanted) interrupt()
      // A server the run named that is not connected now (failed, still starting on a busy
      // machine, or not listed at all) is reported with the CLI's own reason.
      const servers = (msg as { mcp_servers?: Array<{ name?: unknown, status?: unknown }> }).mcp_servers ?? []
      const named = (spec.mcpServers ?? []).map(m => typeof m === 'string' ? m : m.name)
      if (named.some(name => servers.find(m => m.name === name)?.status !== 'connected')) reportMcpFailures()
    }
  }

  /**
   * The init line says which MCP servers are not connected, not why: the CLI is asked, and the answer is a
   * `system`/`mcp_status` message of the run (a server that failed is the run's warning, not its end).
   */
  const reportMcpFailures = (): void => {
    mcpReport = current?.mcpServerStatus().then(list => {
      hooks.event('message', JSON.stringify({ type: 'system', subtype: 'mcp_status', mcp_servers: list.map(m => ({ name: m.name, status: m.status, ...(m.error !== undefined ? { error: m.error } : {}) })) }))
    }, (err: unknown) => { hooks.log.debug({ err }, 'the MCP servers\' status could not be asked') })
  }
  /** The query the run is on (for the CLI's own answers about it). */
  let current: Query | undefined
  /** The MCP servers' status being asked: the run's end waits for it (a moment at most), so it comes before the result. */
  let mcpReport: Promise<void> | undefined

  /** The CLI the run is on now (a refused spare is replaced by a cold one). */
  let proc: CliProcess | undefined
  let mustEnd = false
  /** Timeout, cancel, disconnect or shutdown: end the whole tree, not just the CLI. Once. */
  const endTree = (): void => {
    mustEnd = true
    void proc?.end()
  }
  onEnded(hooks)

  /** The CLI's life: until it has exited and its tree is swept. */
  let lifeDone: Promise<void> = Promise.resolve()
  /** Its query has ended (the CLI is gone or going): a kept CLI can take no more runs. */
  let lifeOver = false
  /** Let the kept CLI go: its input closes, and it ends (its life's end sweeps its tree). */
  let release: () => void = () => {}
  /** The next run that adopts the kept CLI (undefined: it was let go). */
  const adopted = async (): Promise<Adoption | undefined> => await new Promise<Adoption | undefined>(resolve => {
    release = () => resolve(undefined)
    adoptNext = resolve
  })
  let adoptNext: (a: Adoption) => void = () => {}

  /**
   * The run's turn is answered and nothing more is waiting: keep the CLI for the session's next
   * run if it may be (the run ends now with `kept`), and wait for that run; else the input ends.
   */
  const park = async (): Promise<Adoption | undefined> => {
    const r = out.resultLine
    const fine = keep !== undefined && !mustEnd && !inputClosed && proc !== undefined && !proc.ending &&
      r !== undefined && r.is_error !== true && (r.subtype === undefined || r.subtype === 'success') && spec.clientTools === undefined
    if (!fine) return undefined
    const next = adopted()
    let gone: () => void = () => {}
    const cli = {
      process: proc!,
      costSoFar: typeof r.total_cost_usd === 'number' ? costBefore + r.total_cost_usd : costBefore,
      close: async () => {
        release()
        endTree()
        await lifeDone
      },
      gone: new Promise<void>(resolve => { gone = resolve }),
      over: () => lifeOver,
      // A CLI that has ended takes no run: the caller resumes the session elsewhere.
      adopt: (a: Adoption): boolean => {
        if (lifeOver) return false
        adoptNext(a)
        return true
      }
    }
    void lifeDone.then(() => gone())
    if (keep?.(cli) !== true) return undefined
    parked = true
    if (hooks.inbox !== undefined) hooks.inbox.interruptTurn = undefined
    clearTimeout(interruptFallback)
    // The run ends here, its CLI alive: the turn was answered as a whole.
    out.exitCode = 0
    out.kept = true
    out.launched = true
    out.partialText = partial.text
    out.stderrTail = proc!.stderrTail
    out.oversizeLines = proc!.oversizeLines
    if (mcpReport !== undefined) await settledWithin(mcpReport, 2000)
    finish(out)
    const a = await next
    if (a === undefined) return undefined
    // The next run of the session: everything that is a run's own is its now.
    serving++
    linesForRun = 0
    costBefore = cli.costSoFar
    spec = a.spec
    s = a.settings
    hooks = a.hooks
    keep = a.keep
    finish = a.finish
    out = { exitCode: null, stderrTail: '', oversizeLines: 0, partialText: '', launched: true }
    partial = new PartialText(s.maxOutputBytes)
    mcpReport = undefined
    interruptWanted = false
    turnDone = new Promise<void>(resolve => { turnEnded = resolve })
    inputClosed = false
    mustEnd = false
    if (hooks.inbox !== undefined) hooks.inbox.interruptTurn = () => interrupt()
    onEnded(hooks)
    parked = false
    // Under the new run's limits (a key's own may differ): where its group cannot take them, it goes.
    if (!proc!.applyLimits(s.limits?.limits)) {
      hooks.log.warn({}, 'the kept CLI\'s control group holds more than the run\'s limits allow; ending it')
      endTree()
      return undefined
    }
    hooks.log.info({ pid: proc!.pid }, 'the run continues its session on the kept CLI')
    return a
  }

  const userMessage = (prompt: string, attachments: RunSpec['attachments']): SDKUserMessage =>
    ({ type: 'user', message: { role: 'user', content: userContent(prompt, attachments) as SDKUserMessage['message']['content'] }, parent_tool_use_id: null, session_id: spec.sessionId })

  // Each query gets its own input; a newer one (the cold start after a refused claim) retires the
  // older, which must not take a follow-up message from the inbox for a query that is gone.
  let inputs = 0
  async function * input (): AsyncGenerator<SDKUserMessage> {
    const mine = ++inputs
    // The CLI starts meanwhile; nothing it does touches the directory before its prompt.
    await hooks.ready
    yield userMessage(spec.prompt, spec.attachments)
    for (;;) {
      await turnDone
      // The CLI answers the MCP servers' status while its input is open: it is not closed before.
      if (mcpReport !== undefined) await settledWithin(mcpReport, 2000)
      if (inputClosed || mine !== inputs) return
      // Taken, or the inbox closed, in one synchronous step: nothing accepted is left behind.
      const next = hooks.inbox?.takeOrClose()
      if (next === undefined) {
        // Kept for the session's next run, that run's prompt is the next message.
        if (mine !== inputs || await park() === undefined) return
        await hooks.ready
        // Ended meanwhile (cancelled, timed out): its prompt is not sent.
        if (inputClosed) return
        yield userMessage(spec.prompt, spec.attachments)
        continue
      }
      turnDone = new Promise<void>(resolve => { turnEnded = resolve })
      hooks.event('user_message', { message_id: next.id, prompt: next.prompt, attachments: next.attachments?.length ?? 0 })
      yield userMessage(next.prompt, next.attachments)
    }
  }

  /** Read the run's messages to the end, interrupts going through this query. */
  const drain = async (q: Query): Promise<void> => {
    current = q
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
    // The events come from the lines themselves (CliProcess); the SDK's parsed messages are not needed.
    const messages = q[Symbol.asyncIterator]()
    while ((await messages.next()).done !== true) { /* drained */ }
  }

  /**
   * Claim the spare for the run: its lines wait until the claim is answered, then are the run's.
   * False when the spare would not take it (its process is then ended, and the run starts cold).
   */
  const onSpare = async (w: WarmStart): Promise<boolean> => {
    const p = w.process
    proc = p
    let state: 'waiting' | 'claimed' | 'refused' = 'waiting'
    const held: Array<Parameters<LineHandler>> = []
    p.onLine = (...line) => {
      if (state === 'claimed') onLine(...line)
      else if (state === 'waiting') held.push(line)
    }
    let q: Query | undefined
    // Parked under the limits of the key it waited for; under the run's own before the run's prompt reaches it.
    let refusal: string | undefined = p.applyLimits(s.limits?.limits) ? undefined : 'its control group holds more than the run\'s limits allow'
    try {
      if (refusal === undefined) q = w.spare.claim({ prompt: input(), options: claimOptionsOf(spec) })
      // option_not_applied: only a model setting was refused, and the prompt runs already: it
      // cannot start again, so it goes on (without that setting), and the log says so.
      if (q !== undefined) {
        refusal = await w.spare.claimed.then(() => undefined, (err: Error) => {
          if (!err.message.startsWith('option_not_applied')) return err.message
          hooks.log.warn({ why: err.message, model: spec.model }, 'the warm spare took the run but not its model setting')
          return undefined
        })
      }
    } catch (err) {
      refusal = (err as Error).message
    }
    if (refusal !== undefined || q === undefined) {
      state = 'refused'
      p.onLine = undefined
      w.outcome('refused', refusal)
      hooks.log.info({ why: refusal }, 'the warm spare refused the run; starting it cold')
      w.spare.close()
      await p.end(0)
      return false
    }
    state = 'claimed'
    for (const line of held) onLine(...line)
    w.outcome('hit')
    if (mustEnd) endTree()
    await drain(q)
    return true
  }

  const life = async (): Promise<void> => {
    try {
    // Ended before it started: a spare is left to its pool, and nothing is spawned.
      const onWarm = warm !== undefined && !mustEnd && await onSpare(warm)
      if (!onWarm && !(warm !== undefined && mustEnd)) {
        const q = query({
          prompt: input(),
          options: {
            ...sdkOptions(spec, s.settingSources),
            // Through `hooks` as it is then: a kept CLI's next run decides its own requests.
            ...(spec.approvals === 'ask' && hooks.askApproval !== undefined ? { canUseTool: async (name, input, o) => await hooks.askApproval!(name, input, o) } : {}),
            ...toolOptions(spec, hooks, s),
            env: spec.clientTools !== undefined ? { ...env, ENABLE_TOOL_SEARCH: 'false' } : env,
            pathToClaudeCodeExecutable: s.cliPath,
            spawnClaudeCodeProcess: cliSpawner(marker, s, spec.cwd, hooks.log, (p) => {
              proc = p
              p.onLine = onLine
              // Ended while the SDK was still starting: the process goes at once.
              if (mustEnd) void p.end()
            })
          }
        })
        await drain(q)
      }
    } catch (err) {
    // The SDK reports a CLI that exited non-zero or was killed as an error; the outcome says it better.
      hooks.log.debug({ err }, 'the SDK ended with an error')
      if (proc === undefined) out.spawnError = { message: (err as Error).message }
    }
    lifeOver = true
    clearTimeout(interruptFallback)
    if (hooks.inbox !== undefined) hooks.inbox.interruptTurn = undefined
    closeInput()
    if (proc !== undefined) {
      const res = await proc.exited
      out.exitCode = res.exitCode ?? null
      out.stderrTail = proc.stderrTail
      out.oversizeLines = proc.oversizeLines
      const spawnError = await proc.spawnError()
      if (spawnError !== undefined) out.spawnError = spawnError
    }
    out.partialText = partial.text
    if (mcpReport !== undefined) await settledWithin(mcpReport, 2000)
    if (initSeen) out.launched = true
    else if (!mustEnd && (out.spawnError !== undefined || (out.exitCode ?? 0) !== 0)) out.launched = false
    // Only when that text becomes the output does its cut say `truncated`.
    if (partial.truncated && typeof out.resultLine?.result !== 'string') out.resultShrunk = true
    // The CLI is gone; whatever its tools left behind (background tasks, daemons) goes too.
    const report = await (proc?.ending === true ? proc.end() : killRunTree({ rootPid: undefined, markerName: RUN_MARKER_VAR, markerValue: marker, graceMs: 0, rootExited: Promise.resolve() }))
    // With an identity, nothing the run started outlives it, however it detached: every process of
    // the identity that no live run or spare accounts for goes.
    if (s.identity !== undefined && proc?.ending !== true) report.killed += await endStrays(s.identity.uid, RUN_MARKER_VAR)
    const box = await proc?.release()
    if (box?.limit != null) out.limit = box.limit
    if (box?.usage != null) out.resources = box.usage
    if (box !== undefined && proc?.ending !== true) report.killed += box.killed
    if (report.error !== undefined) hooks.log.error({ error: report.error }, 'could not verify that the run\'s processes are gone')
    else if (report.survivors.length > 0) hooks.log.error({ survivors: report.survivors }, 'processes of the run survived SIGKILL')
    else if (report.killed > 0) hooks.log.info({ killed: report.killed }, 'ended the run\'s remaining processes')
    // A kept CLI that died as a run was handed to it, before printing anything for it: the run
    // was never started (it starts in a new CLI), unless it was ended meanwhile.
    if (serving > 0 && linesForRun === 0 && out.resultLine === undefined && !mustEnd) out.lost = true
    finish(out)
  }
  lifeDone = life()
  return await finished
}

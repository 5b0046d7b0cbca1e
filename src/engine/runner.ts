import { EventEmitter, setMaxListeners } from 'node:events'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type { Settings } from '../config.js'
import { DomainError, RunFinished, ShuttingDown, StoreUnavailable } from '../domain/errors.js'
import { BROKERED_VARS, type CredentialBroker } from '../isolation/broker.js'
import type { AgentIdentities, AgentIdentity, IsolationLevel } from '../isolation/identities.js'
import { sandboxLaunch, type SandboxTools } from '../isolation/sandbox.js'
import { ClaimLost, type EventBus, type RunStore } from '../store/store.js'
import { type ApprovalRecord, type RunRecord } from '../domain/records.js'
import { Admission } from './admission.js'
import { type KeyLimits } from '../domain/keys.js'
import { buildChildEnv, identityEnv } from './child-env.js'
import { RUN_MARKER_VAR } from '../isolation/proc.js'
import { spareStarter } from './spares.js'
import { launchOf, type ExecutorSettings } from './cli-process.js'
import { endRun, endStrays, findMarkedProcesses, killAll, startRun, trackLaunch, untrackLaunch } from '../isolation/process-tree.js'
import { LaunchHealth, launchFailureReason } from './launch-health.js'
import { execa } from 'execa'
import { WarmPool, type ClaimOutcome, type WarmSpare } from './warm-pool.js'
import { CliProbe } from './cli-probe.js'
import { ApprovalDesk } from './approvals.js'
import { describeAttachments } from './attachments.js'
import type { QueueLimits } from '../domain/messages.js'
import { executeRun } from './executor.js'
import { type RunnerLogger } from '../domain/logger.js'
import { recheckWorkingDir } from './policy.js'
import { recoverRuns } from './recovery.js'
import { toRunResult, type RunOutcome } from './result.js'
import { Retention } from './retention.js'
import { RunHandle } from './run-handle.js'
import { RunLog } from './run-log.js'
import { SessionRegistry } from './sessions.js'
import { RunPlanner } from './planner.js'
import { SessionCatalog } from '../sessions/catalog.js'
import type { RunEvent, RunRequest, RunResult, RunSpec, UserTurn } from '../domain/run.js'
import type { ClusterNode } from '../cluster/cluster.js'
import type { SubmittedRun } from '../cluster/remote-run.js'
import { ClusterRuns } from '../cluster/cluster-runs.js'
import type { ApprovalAnswer } from '../domain/records.js'

export type { RunnerLogger, SubmittedRun }
export { RunHandle }

/** How long a running run stays this instance's without a renewal; renewed every third of it. */
export const LEASE_MS = 30_000
/** How often the store is pinged for `/health` (never per request: a health check costs nothing). */
const STORE_CHECK_MS = 5_000
/** How often an identity's processes that no live run accounts for are looked for (besides each run's end). */
const STRAY_SWEEP_MS = 10_000

/** How a run was asked for. */
export interface SubmitOptions {
  /** The request as the client sent it; stored with env var values left out. */
  request: RunRequest
  /** The API key it runs for, with its limits (null with auth off). */
  key: KeyLimits | null
  /** Runs of `/api/execute*` end with their connection; runs of `POST /api/runs` never do. */
  cancelOnDisconnect: boolean
  /** The HTTP request that started it, for the log. */
  requestId?: string
}

/** A run as the rest of the server hears of it. */
export interface RunSummary {
  id: string
  keyName: string | null
  webhookUrl: string | undefined
}

/** What the runner tells the rest of the server (metrics, webhooks), for live and recovered runs alike. */
export interface RunnerEvents {
  started: [RunSummary]
  finished: [RunSummary, RunResult]
  /** An `approvals: ask` run started waiting for an answer. */
  approval: [RunSummary, ApprovalRecord]
  /** A run of a new session started on a warm spare (`hit`), or cold (`miss`, `refused`). */
  warm: [ClaimOutcome]
}

/** What the engine is built from. */
export interface RunnerDeps {
  settings: Settings
  log: RunnerLogger & { child: (b: object) => RunnerLogger }
  store: RunStore
  bus: EventBus
  /** This server instance: it owns the runs it starts (see `RunStore`). */
  instanceId: string
  /** Hands each run a token of its own instead of the operator's credential (absent: not fronted). */
  broker?: CredentialBroker
  /** Cluster mode (PostgreSQL): the shared queue, bus and transcripts; absent on one machine. */
  cluster?: ClusterNode
  /** How long a running run stays its instance's without a renewal (default `LEASE_MS`). */
  leaseMs?: number
  /** With `uid` or `sandbox` isolation: the agent identity of each key's runs, and the sandbox. */
  isolation?: { level: IsolationLevel, identities?: AgentIdentities, sandbox?: { tools: SandboxTools, agentsDir: string, hiddenDirs: string[], hiddenFiles: string[], readOnly?: string[] } }
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
function redactRequest (req: RunRequest): RunRequest {
  const copy: RunRequest = { ...req }
  if (req.env_vars !== undefined) copy.env_vars = Object.fromEntries(Object.keys(req.env_vars).map(k => [k, '[redacted]']))
  // Images are kept in the spec (to queue the run again after a restart), not in the request shown.
  if (req.attachments !== undefined) (copy as unknown as Record<string, unknown>).attachments = describeAttachments(req.attachments)
  return copy
}

/**
 * The engine's coordinator. It checks a request against policy (`prepare`), has admission decide
 * and record it in one step (`submit`), runs it with the executor when admission lets it start,
 * logs its events (`RunLog`), ends every run's whole process tree, and hands what a previous
 * process left to recovery. Its parts: admission, executor, run log, recovery, retention.
 */
export class Runner extends EventEmitter<RunnerEvents> {
  readonly cliPath: string
  readonly probe: CliProbe
  /** The sessions API: browse, read, rename, fork and delete sessions. */
  readonly sessions: SessionCatalog
  private readonly sessionDirs: SessionRegistry
  readonly store: RunStore
  readonly admission: Admission
  private readonly settings: Settings
  private readonly log: RunnerDeps['log']
  private readonly runLog: RunLog
  private readonly retention: Retention
  private readonly instanceId: string
  private readonly broker: CredentialBroker | undefined
  private readonly planner: RunPlanner
  private readonly sandbox: NonNullable<RunnerDeps['isolation']>['sandbox']
  /** The server's environment as runs may see it: without the operator's credential when brokered. */
  private readonly runEnv: Settings['serverEnv']
  private readonly runs = new Map<string, RunHandle>()
  private readonly identities: AgentIdentities | undefined
  /** Warm spares (`WARM_SPARES`); absent when off. */
  private readonly warm: WarmPool | undefined
  /** This process among the lives of this instance: its spares' markers carry it. */
  private readonly bootId = randomUUID().slice(0, 8)
  /** The permission requests of `approvals: ask` runs, parked until answered. */
  readonly approvals: ApprovalDesk
  /** Whether CLIs can be launched as runs launch them (`/health` → `isolation.error`). */
  readonly launches = new LaunchHealth()
  private closing = false
  /** Cluster mode: this instance's part in the cluster. */
  readonly cluster: ClusterNode | undefined
  private readonly leaseMs: number
  /** Cluster mode: the shared queue as this instance takes part in it. */
  private readonly clusterRuns: ClusterRuns | undefined
  /** Run ends being stored, by run id (a cancel answers once the end is stored). */
  private readonly ended = new Map<string, Promise<void>>()
  /** Aborted when the server shuts down: followers of runs that stay queued end their streams. */
  private readonly shutdown = new AbortController()
  private leaseTimer: NodeJS.Timeout | undefined
  private storeTimer: NodeJS.Timeout | undefined
  private strayTimer: NodeJS.Timeout | undefined
  private storeOk = true
  /** What the previous process left in the store, until `recover()` deals with it. */
  private leftovers: { running: RunRecord[], queued: RunRecord[] } | undefined
  /** Settles once `recover()` has dealt with the leftovers (requests about runs wait for it). */
  private readonly recovery: { promise: Promise<void>, resolve: () => void } = (() => {
    let settle = (): void => {}
    const promise = new Promise<void>(resolve => { settle = resolve })
    return { promise, resolve: settle }
  })()

  constructor (deps: RunnerDeps) {
    super()
    const { settings } = deps
    this.settings = settings
    this.log = deps.log
    this.store = deps.store
    this.instanceId = deps.instanceId
    this.cluster = deps.cluster
    this.leaseMs = deps.leaseMs ?? LEASE_MS
    this.broker = deps.broker
    this.sandbox = deps.isolation?.level === 'sandbox' ? deps.isolation.sandbox : undefined
    this.runEnv = deps.broker === undefined
      ? settings.serverEnv
      : Object.fromEntries(Object.entries(settings.serverEnv).filter(([k]) => !BROKERED_VARS.includes(k)))
    this.cliPath = settings.claudePath ?? defaultCliPath()
    this.probe = new CliProbe(this.cliPath, buildChildEnv(settings.serverEnv, {}, 'probe', settings.passEnv))
    const env = settings.serverEnv
    const configDir = env.CLAUDE_CONFIG_DIR ?? join(env.HOME ?? '/', '.claude')
    this.sessionDirs = new SessionRegistry(configDir)
    this.admission = new Admission({ maxConcurrent: settings.maxConcurrentRuns, maxQueued: settings.maxQueuedRuns })
    const identities = deps.isolation?.level === 'none' ? undefined : deps.isolation?.identities
    this.identities = identities
    this.planner = new RunPlanner(settings, this.sessionDirs, identities, session => this.admission.ownerOf(session), configDir)
    this.sessions = new SessionCatalog({
      store: deps.store,
      placeOf: owner => this.planner.placeOf(owner),
      live: session => this.admission.hasRuns(session),
      hold: session => this.admission.hold(session),
      ...(deps.cluster !== undefined ? { transcripts: deps.cluster.transcripts } : {}),
      adopt: (session, owner, cwd) => {
        this.admission.adopt(session, owner)
        this.planner.sessionsOf(identities === undefined ? undefined : identities.identityFor(owner)).remember(session, cwd)
      }
    })
    this.runLog = new RunLog(deps.store, deps.bus)
    this.clusterRuns = deps.cluster === undefined ? undefined : this.clusterRunsOf(deps.cluster)
    this.approvals = new ApprovalDesk(deps.store, (handle, record) =>
      this.emit('approval', { id: handle.id, keyName: handle.keyName, webhookUrl: handle.spec.webhookUrl }, record))
    this.retention = new Retention(deps.store, { days: settings.retentionDays, maxRuns: settings.retentionMaxRuns }, deps.log)
    // In a cluster a run starts on whichever instance claims it, never on the one it came to: no spares.
    if (settings.warmSpares > 0 && deps.cluster === undefined) {
      const start = spareStarter({
        instanceId: this.instanceId,
        bootId: this.bootId,
        runEnv: this.runEnv,
        settings,
        cliPath: this.cliPath,
        log: deps.log,
        identityOf: profile => profile === '' || identities === undefined ? undefined : identities.identityFor(profile),
        workAreaOf: identity => this.sandbox === undefined ? undefined : this.planner.workAreaOf(identity),
        ...(deps.broker !== undefined ? { broker: deps.broker } : {}),
        executorSettings: (identity, cwd, chdir) => this.executorSettings(identity, cwd, chdir)
      })
      // A spare that parks is a launch that works; one that cannot is a launch that failed.
      const launches = this.launches
      const counted = async (profile: string): Promise<WarmSpare> => await start(profile).then(spare => {
        launches.worked()
        return spare
      }, (err: Error & { launch?: string }) => {
        if (err.launch !== undefined) launches.failed(err.launch)
        throw err
      })
      this.warm = new WarmPool({ target: settings.warmSpares, perIdentity: identities !== undefined, start: counted, log: deps.log })
    }
    // Every queued run and every follower listens for the shutdown.
    setMaxListeners(0, this.shutdown.signal)
  }

  /**
   * Probe the CLI; read what the store knows (session owners, today's spending) into admission;
   * note what a previous process left (acted on by `recover()`, once the server has its port);
   * prune old runs; keep leases, probe and retention going.
   */
  async start (): Promise<void> {
    const status = await this.probe.refresh()
    if (!status.available) this.log.warn({ cli: this.cliPath, error: status.error }, 'Claude Code CLI not available: runs will fail with cli_not_found')
    else if (status.credentials === 'missing') this.log.warn({ cli: this.cliPath }, 'no Claude credential configured (ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN or a `claude` login): runs will fail with not_authenticated')
    this.probe.startBackground(this.settings.cliProbeIntervalS)
    // In the background: the server starts, and /health says what is wrong meanwhile.
    if (this.identities !== undefined && status.available) void this.selfCheck()
    if (status.available) this.warm?.start()
    // Read now, before any new run exists, so recovery never touches a run of this process.
    if (this.cluster !== undefined) {
      // Queued runs are the cluster's: only what this instance held is left to it.
      const mine = await this.cluster.leftovers()
      await this.cluster.release(mine.claimed)
      this.leftovers = { running: mine.running, queued: [] }
      this.cluster.onQueue(() => { void this.clusterRuns?.pump() })
      this.cluster.handle(async (op, args) => await this.onRequestFromCluster(op, args))
      await this.cluster.start(() => { void this.clusterRuns?.tick() })
      await this.clusterRuns?.cancelOrphans()
    } else {
      this.leftovers = await this.store.leftovers(this.instanceId, Date.now())
    }
    await this.checkStore()
    this.admission.load({ sessionOwners: await this.store.sessionOwners(), spentToday: await this.store.spendSince(this.admission.today()) })
    await this.retention.start()
    this.leaseTimer = setInterval(() => {
      this.store.renewLeases(this.instanceId, Date.now() + this.leaseMs).catch(err => this.log.error({ err }, 'renewing run leases failed; will retry'))
    }, this.leaseMs / 3)
    this.leaseTimer.unref()
    this.storeTimer = setInterval(() => { void this.checkStore() }, STORE_CHECK_MS)
    this.storeTimer.unref()
    if (this.identities !== undefined) {
      // No run is live yet: whatever an identity still runs was left by an earlier life (waiting,
      // say, for the port). Then now and again, for what escapes a run's own end.
      await this.endStrays()
      this.strayTimer = setInterval(() => { void this.endStrays() }, STRAY_SWEEP_MS)
      this.strayTimer.unref()
    }
    // The cluster's queue is shared: this instance takes its part of it from now on.
    this.clusterRuns?.begin()
  }

  /**
   * Launch the CLI exactly as a run would (its identity, sandbox and broker token, in the
   * identity's home) but with `--version`, which calls no model: whatever keeps runs from
   * starting shows in `/health` before the first client finds it.
   */
  private async selfCheck (): Promise<void> {
    let why: string | null = null
    try {
      const identity = this.identities!.identityFor(null)
      const marker = `check-${this.instanceId}-${this.bootId}`
      const env = buildChildEnv(this.runEnv, {}, marker, this.settings.passEnv)
      Object.assign(env, identityEnv(identity))
      const credential = this.broker?.issue('self-check', { inert: true, uid: identity.uid, marker })
      if (credential !== undefined) Object.assign(env, credential.env)
      const launch = launchOf(this.cliPath, ['--version'], identity.home, env, this.executorSettings(identity, identity.home))
      const child = execa(launch.command, launch.args, { ...launch.options, reject: false, timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe', ...launch.fds] })
      trackLaunch(child.pid)
      const r = await child.finally(() => untrackLaunch(child.pid))
      credential?.revoke()
      if (r.exitCode !== 0 || !/\d+\.\d+/.test(String(r.stdout))) {
        why = launchFailureReason(String(r.stderr), r.exitCode === undefined ? r.shortMessage : undefined) ??
          (String(r.stderr).trim().split('\n').at(-1)?.slice(0, 500) || `exit code ${String(r.exitCode)}`)
      }
    } catch (err) {
      why = (err as Error).message
    }
    if (why === null) {
      this.launches.worked()
      this.log.info({ level: this.sandbox !== undefined ? 'sandbox' : 'uid' }, 'self-check: the CLI starts as an agent identity')
      return
    }
    const message = `the CLI cannot start as an agent identity (${this.sandbox !== undefined ? 'ISOLATION=sandbox' : 'ISOLATION=uid'}): ${why}`
    this.launches.checkFailed(message)
    this.log.error({ cli: this.cliPath }, `self-check failed: ${message}; runs will fail until it is fixed`)
  }

  /** End every process of an agent identity that no live run or spare accounts for. */
  private async endStrays (): Promise<void> {
    const ended = await endStrays(new Set(this.identities?.knownUids() ?? []), RUN_MARKER_VAR).catch(() => 0)
    if (ended > 0) this.log.warn({ killed: ended }, 'ended processes of agent identities that no run accounts for')
  }

  /** Whether the store answered its last ping (within a second), checked every few seconds. */
  get storeAnswers (): boolean { return this.storeOk }

  private async checkStore (): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    try {
      this.storeOk = await Promise.race([
        this.store.ping().then(() => true),
        new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), 1000) })
      ])
    } catch {
      this.storeOk = false
    } finally {
      clearTimeout(timer)
    }
  }

  /** Runs running here, and runs waiting for a slot (in a cluster, in the shared queue). */
  async stats (): Promise<{ active: number, queued: number }> {
    const queued = this.cluster === undefined ? this.admission.queued : await this.cluster.queuedRuns().catch(() => 0)
    return { active: this.admission.active, queued }
  }

  /** A queued run's place in the queue (1-based): here, or in the cluster's. */
  async queuePosition (runId: string): Promise<number | null> {
    const live = this.runs.get(runId)
    if (live !== undefined || this.cluster === undefined) return live?.position() ?? null
    return await this.cluster.positionOf(runId)
  }

  /** Cluster mode: this instance's id and how many instances are alive (undefined on one machine). */
  clusterStats (): { instance_id: string, instances: number } | undefined {
    return this.cluster === undefined ? undefined : { instance_id: this.instanceId, instances: this.cluster.instances }
  }

  /** The warm spares parked now, and how many there should be (0: warm start is off). */
  warmStats (): { parked: number, target: number } {
    return { parked: this.warm?.parkedCount ?? 0, target: this.warm?.target ?? 0 }
  }

  get shuttingDown (): boolean { return this.closing }

  /** The live handle of a queued or running run. */
  get (runId: string): RunHandle | undefined {
    return this.runs.get(runId)
  }

  /**
   * Check a request against policy and resolve its directory, session and identity (see
   * `RunPlanner`); starts nothing and reserves nothing.
   */
  async prepare (req: RunRequest, keyName: string | null = null, anySession = keyName === null): Promise<RunSpec> {
    if (this.cluster !== undefined && req.session_id !== undefined) {
      // Another instance may have made the session: its owner and directory are in the store.
      const id = req.session_id.toLowerCase()
      const s = await this.store.getSession(id)
      if (s !== undefined) {
        this.admission.adopt(id, s.keyName)
        const identity = this.identities?.identityFor(s.keyName)
        const registry = this.planner.sessionsOf(identity)
        if (await registry.locate(id) === null) registry.remember(id, s.workingDirectory)
      }
    }
    return await this.planner.prepare(req, keyName, anySession)
  }

  /**
   * Accept a prepared run: admission decides and records it in one synchronous step (or throws
   * why not), then the run is stored and goes on whether or not anyone listens.
   */
  async submit (spec: RunSpec, opts: SubmitOptions): Promise<SubmittedRun> {
    if (this.clusterRuns !== undefined) {
      if (this.closing) throw new ShuttingDown('the server is shutting down; retry in a moment')
      return await this.clusterRuns.submit(spec, { ...opts, stored: redactRequest(opts.request) })
    }
    const keyName = opts.key?.name ?? null
    const log = this.log.child({ run_id: spec.runId, key_name: keyName, ...(opts.requestId !== undefined ? { request_id: opts.requestId } : {}) })
    const handle = new RunHandle(spec, opts.cancelOnDisconnect, keyName, log, this.runLog, 0)
    // A new session starts on a warm spare when one fits: the run takes the spare's session id.
    const warm = this.takeSpare(spec, opts.request)
    if (warm !== undefined) spec.sessionId = warm.sessionId
    const claims = spec.forkedFrom !== undefined ? [spec.sessionId, spec.forkedFrom] : [spec.sessionId]
    // A new session belongs where its transcript is written: the identity it runs as (a fork of
    // another key's session by an admin lives with that key), else the requesting key.
    let ticket
    try {
      ticket = this.admission.admit({ sessionId: spec.sessionId, claims, key: opts.key, ...(spec.identity !== undefined ? { newSessionOwner: spec.identity } : {}) }, () => handle.admit())
    } catch (err) {
      if (warm !== undefined) this.warm?.giveBack(warm)
      throw err
    }
    handle.warm = warm
    try {
      await this.store.insertRun({
        id: spec.runId,
        sessionId: spec.sessionId,
        workingDirectory: spec.cwd,
        request: redactRequest(opts.request),
        spec,
        keyName,
        ...(spec.identity !== undefined ? { sessionOwner: spec.identity } : {}),
        cancelOnDisconnect: opts.cancelOnDisconnect,
        createdAt: handle.submittedAt
      })
    } catch (err) {
      ticket.release()
      // Admission recorded the spare's session for this key: no other run may take it.
      if (warm !== undefined) this.warm?.drop(warm)
      log.error({ err }, 'recording the run failed')
      throw new StoreUnavailable('the run store could not record the run; retry in a moment')
    }
    handle.ticket = ticket
    this.planner.sessionsOf(this.planner.identityOf(spec)).remember(spec.sessionId, spec.cwd)
    handle.push('run', { run_id: spec.runId, session_id: spec.sessionId, working_directory: spec.cwd })
    this.track(handle)
    // Durable before the client hears of it: a crash right after the 202 keeps the run's first event.
    await this.store.flush().catch((err: unknown) => log.error({ err }, 'flushing the run event failed; will retry'))
    return handle
  }

  /**
   * Hand a follow-up message to a live run: its id. A run that has ended, or takes no more input
   * (its last turn answered, or interrupted to stop), refuses it (`RunFinished`).
   */
  async message (runId: string, turn: UserTurn): Promise<string> {
    const refused = (): never => { throw new RunFinished(`run ${runId} has ended or takes no more messages; start a new run with its session_id`) }
    const handle = this.runs.get(runId)
    if (handle !== undefined || this.cluster === undefined) return handle?.inbox.post(turn, randomUUID(), this.queueLimits) ?? refused()
    // Kept for whichever instance claims the run (within the same limits), or handed to the one that holds it.
    const id = randomUUID()
    const where = await this.cluster.postMessage(runId, id, turn, this.queueLimits)
    if ('queued' in where) return id
    if ('finished' in where) return refused()
    return await this.cluster.call(where.owner, 'message', { runId, turn }) as string
  }

  /**
   * Stop a run's current turn through the CLI's own interrupt; with a prompt, that prompt is the
   * next turn and the run goes on, without one the run ends as cancelled. A queued run that has not
   * started: without a prompt it is cancelled, with one the prompt waits as a message.
   */
  async interrupt (runId: string, turn?: UserTurn): Promise<void> {
    const handle = this.runs.get(runId)
    const nothing = (): never => { throw new RunFinished(`run ${runId} has ended; nothing to interrupt`) }
    if (handle === undefined && this.cluster !== undefined) {
      // Not here: queued for the cluster (a prompt waits as a message; none cancels it), or elsewhere.
      const owner = await this.cluster.ownerOf(runId)
      if (owner === null) {
        if (turn !== undefined) await this.message(runId, turn)
        else if (await this.clusterRuns?.cancelQueued(runId, 'interrupted before it started') !== true) nothing()
        return
      }
      await this.cluster.call(owner, 'interrupt', { runId, turn })
      return
    }
    if (handle === undefined || handle.isFinished()) return nothing()
    if (handle.status === 'queued') {
      if (turn === undefined) handle.cancel('interrupted before it started')
      else if (handle.inbox.post(turn, randomUUID(), this.queueLimits) === undefined) nothing()
      return
    }
    if (!handle.inbox.interrupt(turn, this.queueLimits)) nothing()
  }

  /** What may wait for one run's agent (`MAX_QUEUED_MESSAGES`, `MAX_QUEUED_MESSAGE_BYTES`). */
  private get queueLimits (): QueueLimits {
    return { maxMessages: this.settings.maxQueuedMessages, maxBytes: this.settings.maxQueuedMessageBytes }
  }

  /**
   * Cancel a queued or running run and wait until it has ended and its end is stored; false when
   * it is not live (finished, or unknown). In a cluster, wherever it is.
   */
  async cancel (runId: string, reason: string): Promise<boolean> {
    const handle = this.runs.get(runId)
    if (handle !== undefined) {
      handle.cancel(reason)
      await handle.result
      await this.ended.get(runId)
      return true
    }
    if (this.cluster === undefined || this.clusterRuns === undefined) return false
    if (await this.clusterRuns.cancelQueued(runId, reason)) return true
    const owner = await this.cluster.ownerOf(runId)
    if (owner === null) return await this.clusterRuns.cancelQueued(runId, reason)
    return await this.cluster.call(owner, 'cancel', { runId, reason }, this.settings.killGraceMs + 10_000) as boolean
  }

  /**
   * Answer a pending approval of `runId` where the run is waiting for it: here, or (in a cluster)
   * on the instance that runs it.
   */
  async answerApproval (runId: string, approvalId: string, answer: ApprovalAnswer): Promise<ApprovalRecord> {
    if (this.cluster === undefined || this.runs.has(runId)) return await this.approvals.answer(runId, approvalId, answer)
    const owner = await this.cluster.ownerOf(runId)
    if (owner === null || owner === this.instanceId) return await this.approvals.answer(runId, approvalId, answer)
    return await this.cluster.call(owner, 'answer', { runId, approvalId, answer }) as ApprovalRecord
  }

  /** Pending approvals of a run: here, or in the store for a run another instance holds. */
  async pendingApprovals (runId: string): Promise<number> {
    if (this.cluster === undefined || this.runs.has(runId)) return this.approvals.pendingOf(runId)
    return (await this.store.listApprovals({ runId, status: 'pending', limit: 1000 })).length
  }

  /**
   * Send a run's events with `seq > after` to `write`, from the log and then live, until the
   * terminal `result` (true) or until `signal` aborts or the server shuts down (false). A slow
   * client never makes the server buffer without bound, and never misses an event.
   */
  async follow (runId: string, after: number, write: (e: RunEvent) => boolean, drained: () => Promise<void>, signal: AbortSignal): Promise<boolean> {
    return await this.runLog.follow(runId, after, { write, drained, signal: AbortSignal.any([signal, this.shutdown.signal]) }, () => this.isLive(runId))
  }

  /**
   * What a previous process left, handed to recovery once the server holds its port (and
   * `DATA_DIR`'s lock), so a server that cannot start never touches another one's runs. Once only.
   */
  async recover (): Promise<void> {
    try {
      await this.recoverLeftovers()
    } finally {
      this.recovery.resolve()
    }
    void this.clusterRuns?.pump()
  }

  /**
   * Resolves once the runs a previous process left are interrupted or queued again: until then a
   * queued run of that process is in no one's hands, and a follower, a cancel or a message would
   * find it not live. At once when nothing was left, or once `recover()` has run.
   */
  async recovered (): Promise<void> {
    if (this.leftovers === undefined || (this.leftovers.running.length === 0 && this.leftovers.queued.length === 0)) return
    await this.recovery.promise
  }

  private async recoverLeftovers (): Promise<void> {
    const leftovers = this.leftovers
    this.leftovers = undefined
    if (leftovers === undefined || this.closing) return
    // The spares a previous life of this instance left parked (it was killed): nobody claims them now.
    const mine = `warm-${this.instanceId}-`
    const now = `${mine}${this.bootId}-`
    const ended = await killAll(() => findMarkedProcesses(RUN_MARKER_VAR, v => v.startsWith(mine) && !v.startsWith(now)))
    if (ended > 0) this.log.info({ killed: ended }, 'ended the warm spares a previous process left')
    await recoverRuns(leftovers, {
      store: this.store,
      log: this.log,
      maxOutputBytes: this.settings.maxOutputBytes,
      // Interrupted and cancelled runs end too: their webhooks and metrics hear of it.
      finished: (r, result) => this.emit('finished', { id: r.id, keyName: r.keyName, webhookUrl: r.request.webhook_url }, result),
      requeue: async (r) => {
        this.planner.sessionsOf(this.planner.identityOf(r.spec)).remember(r.sessionId, r.workingDirectory)
        const log = this.log.child({ run_id: r.id, key_name: r.keyName })
        const handle = new RunHandle(r.spec, false, r.keyName, log, this.runLog, await this.store.lastSeq(r.id))
        handle.ticket = this.admission.readmit(r.spec.sessionId, r.keyName, () => handle.admit())
        this.track(handle)
      }
    })
  }

  /**
   * Shut down: stop admitting, let running runs finish for `graceMs`, then cancel the rest and
   * wait until their trees are gone. Queued runs stay queued for the next start, except those
   * whose client waits on the connection that is about to close.
   */
  async close (graceMs = this.settings.shutdownGraceS * 1000): Promise<void> {
    this.closing = true
    this.clusterRuns?.end()
    this.admission.close()
    // Spares are nobody's runs: they go at once.
    const spares = this.warm?.close()
    this.probe.stop()
    this.retention.stop()
    clearInterval(this.leaseTimer)
    clearInterval(this.storeTimer)
    clearInterval(this.strayTimer)
    const live = [...this.runs.values()]
    for (const h of live) {
      if (h.status === 'queued' && !h.wasAdmitted && h.cancelOnDisconnect) h.cancel('server shutting down')
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
    await spares
    if (this.cluster !== undefined) {
      // Claimed here and never started: back to the cluster's queue, for another instance.
      await this.cluster.release(live.filter(h => !running.includes(h) && !h.isFinished()).map(h => h.id)).catch(() => {})
      await Promise.all([...this.ended.values()])
      await this.cluster.stop()
    }
    // Runs left queued stay so in the store; their followers end now and reconnect later.
    this.shutdown.abort()
    await this.store.close()
  }

  /** Cluster mode: what the cluster's runs need of this engine. */
  private clusterRunsOf (cluster: ClusterNode): ClusterRuns {
    return new ClusterRuns({
      cluster,
      store: this.store,
      runLog: this.runLog,
      log: this.log,
      leaseMs: this.leaseMs,
      maxConcurrentRuns: this.settings.maxConcurrentRuns,
      maxQueuedRuns: this.settings.maxQueuedRuns,
      maxOutputBytes: this.settings.maxOutputBytes,
      shutdown: this.shutdown.signal,
      localRuns: () => this.runs.size,
      isLocal: runId => this.runs.has(runId),
      isHeld: session => this.admission.isHeld(session),
      admitted: (spec, keyName) => {
        this.admission.adopt(spec.sessionId, spec.identity ?? keyName)
        this.planner.sessionsOf(this.planner.identityOf(spec)).remember(spec.sessionId, spec.cwd)
      },
      start: async ({ record: r, messages }) => {
        const spec = r.spec!
        this.planner.sessionsOf(this.planner.identityOf(spec)).remember(r.sessionId, r.workingDirectory)
        const log = this.log.child({ run_id: r.id, key_name: r.keyName, ...(spec.requestId !== undefined ? { request_id: spec.requestId } : {}) })
        const handle = new RunHandle(spec, r.cancelOnDisconnect, r.keyName, log, this.runLog, await this.store.lastSeq(r.id), r.createdAt)
        for (const m of messages) handle.inbox.post(m.turn, m.id)
        // A run of /api/execute* whose client waited on a process that is gone: nobody hears it, it does not run.
        if (r.cancelOnDisconnect && spec.submittedBy !== undefined && await cluster.processGone(spec.submittedBy, r.createdAt)) {
          handle.cancel('its client is gone: the instance it was sent to stopped before it started')
        }
        handle.ticket = this.admission.readmit(spec.sessionId, r.keyName, () => handle.admit())
        this.track(handle)
      },
      finished: (r, result) => this.emit('finished', { id: r.id, keyName: r.keyName, webhookUrl: r.request.webhook_url }, result),
      cancel: async (runId, reason) => await this.cancel(runId, reason)
    })
  }

  /** Cluster mode: what other instances ask of the runs this one holds. */
  private async onRequestFromCluster (op: string, args: any): Promise<unknown> {
    const runId = String(args?.runId)
    switch (op) {
      case 'cancel': return await this.cancel(runId, String(args.reason ?? 'cancelled'))
      case 'message': return await this.message(runId, args.turn as UserTurn)
      case 'interrupt': return await this.interrupt(runId, args.turn as UserTurn | undefined)
      case 'answer': return await this.approvals.answer(runId, String(args.approvalId), args.answer as ApprovalAnswer)
      default: throw new DomainError('invalid_request', `unknown cluster request ${op}`)
    }
  }

  /** Whether a run is queued or running: here, or (in a cluster) anywhere. */
  private isLive (runId: string): boolean {
    return this.runs.has(runId) || (this.clusterRuns?.isLive(runId) ?? false)
  }

  /** Run a recorded run through its life, in the background. */
  private track (handle: RunHandle): void {
    this.runs.set(handle.id, handle)
    void this.execute(handle).finally(() => {
      handle.ticket?.release()
      this.runs.delete(handle.id)
      // A slot is free here: the cluster's queue may have a run for it.
      void this.clusterRuns?.pump()
    })
  }

  private async execute (handle: RunHandle): Promise<void> {
    const spec = handle.spec
    // The limit counts from submission: a run that waits too long in the queue times out too.
    const deadline = setTimeout(() => handle.end({ by: 'timeout' }), Math.max(0, handle.submittedAt + spec.timeoutS * 1000 - Date.now()))
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
    let onShutdown: (() => void) | undefined
    const shutdown = new Promise<void>(resolve => {
      onShutdown = () => resolve()
      this.shutdown.signal.addEventListener('abort', onShutdown, { once: true })
    })
    try {
      await Promise.race([handle.admitted, ended, shutdown])
      // Left queued by a shutdown: it stays queued in the store for the next start.
      if (!handle.wasAdmitted && handle.endedBy === undefined && this.shutdown.signal.aborted) return
      if (handle.endedBy === undefined) await this.run(handle, outcome, ended)
    } catch (err) {
      handle.log.error({ err }, 'run failed unexpectedly')
      outcome.spawnError = { message: (err as Error).message }
    } finally {
      clearTimeout(deadline)
      // Its spare was never claimed (the run ended before it started): its session id is this
      // run's, so the spare goes rather than serving another run.
      if (handle.warm !== undefined) {
        this.warm?.drop(handle.warm)
        handle.warm = undefined
      }
      // One listener per run would pile up for the server's life.
      if (onShutdown !== undefined) this.shutdown.signal.removeEventListener('abort', onShutdown)
    }
    if (outcome.abandoned === true) {
      handle.ticket?.release()
      handle.abandon()
      return
    }
    if (handle.endedBy !== undefined) outcome.ended = handle.endedBy
    else if (handle.inbox.stopRequested || outcome.interruptKilled === true) outcome.ended = { by: 'cancel', reason: 'interrupted by the client' }
    outcome.endedAt = Date.now()
    const result = toRunResult(outcome)
    handle.log.info({
      session_id: result.session_id,
      status: result.status,
      error_code: result.error_code,
      duration_s: result.execution_time,
      cost_usd: result.total_cost_usd,
      num_turns: result.num_turns
    }, 'run finished')
    // Its slot and session are free once its result is out: whoever hears of the end finds the
    // session idle, and the session's next run may start (its CLI is gone).
    handle.ticket?.release()
    const stored = this.store.markFinished(handle.id, result, outcome.endedAt)
      .catch((err: unknown) => handle.log.error({ err }, 'recording the end of the run failed'))
    this.ended.set(handle.id, stored)
    handle.finish(result)
    this.admission.spent(handle.keyName, result.total_cost_usd)
    this.emit('finished', { id: handle.id, keyName: handle.keyName, webhookUrl: handle.spec.webhookUrl }, result)
    await stored
    this.ended.delete(handle.id)
  }

  /** The run's turn: check its directory again, record the start, run the CLI. */
  private async run (handle: RunHandle, outcome: RunOutcome, ended: Promise<void>): Promise<void> {
    const spec = handle.spec
    // Checked again now, and used as checked: a directory swapped for a link since submission
    // cannot lead outside the roots.
    const cwd = await recheckWorkingDir(spec.cwd, this.settings)
    if (typeof cwd !== 'string') {
      outcome.refused = { code: 'working_directory_forbidden', message: cwd.refused }
      return
    }
    spec.cwd = cwd
    const identity = this.planner.identityOf(spec)
    if (this.cluster !== undefined) {
      // The session may have been continued elsewhere since this instance last saw it.
      const place = this.planner.placeOf(identity?.key ?? null)
      await this.cluster.transcripts.materialise(place.configDir, place.owner, spec.forkedFrom ?? spec.sessionId)
    }
    if (spec.sessionMode !== 'fork') spec.sessionMode = await this.planner.sessionsOf(identity).exists(spec.sessionId) ? 'resume' : 'new'
    if (handle.endedBy !== undefined) return
    // On a spare, the run is the spare's: its marker, its token. The spare is the run's from here.
    const warm = handle.warm
    handle.warm = undefined
    const marker = warm?.process.marker ?? randomUUID()
    const env = buildChildEnv(this.runEnv, spec.env, marker, this.settings.passEnv)
    if (identity !== undefined) Object.assign(env, identityEnv(identity))
    // The run's own token, good for this run only, instead of the operator's credential.
    const credential = warm?.credential ?? this.broker?.issue(spec.runId, identity !== undefined ? { uid: identity.uid, marker } : {})
    if (credential !== undefined) Object.assign(env, credential.env)
    // A spare's token works from the moment a run holds it, not before.
    warm?.credential?.activate()
    handle.markRunning()
    let claimed = false
    try {
      // Recorded before the spawn: if the server dies now, the next start finds and kills the tree.
      // Unrecorded (a full disk), the run does not start: it could not be found again after a crash.
      try {
        await this.store.markStarted(spec.runId, { startedAt: Date.now(), marker, sessionId: spec.sessionId, workingDirectory: cwd, owner: this.instanceId, leaseUntil: Date.now() + this.leaseMs })
      } catch (err) {
        if (err instanceof ClaimLost) {
          // Another instance has it now: this one neither runs it nor writes its end.
          handle.log.warn({ err: err.message }, 'cluster: the claim on this run lapsed before it started; left to the instance that has it')
          outcome.abandoned = true
          if (warm !== undefined) this.warm?.drop(warm)
          return
        }
        handle.log.error({ err }, 'recording the start of the run failed; it does not start')
        outcome.refused = { code: 'store_unavailable', message: `The run store could not record the start of the run (${(err as Error).message}); it did not start` }
        if (warm !== undefined) this.warm?.drop(warm)
        return
      }
      this.emit('started', { id: handle.id, keyName: handle.keyName, webhookUrl: handle.spec.webhookUrl })
      // What the run backgrounds is its own while it lives (at uid it is re-parented to init).
      if (identity !== undefined) startRun(marker, identity.uid)
      const execution = await executeRun(spec, env, marker, this.executorSettings(identity, cwd), {
        event: (type, data) => handle.push(type, data),
        inbox: handle.inbox,
        askApproval: async (toolName, input, ask) => await this.approvals.ask(handle, toolName, input, ask),
        ended,
        log: handle.log
      }, warm === undefined
        ? undefined
        : {
            spare: warm.spare,
            process: warm.process,
            outcome: (o) => {
              claimed = true
              this.emit('warm', o)
            }
          })
      // Ended before it could start on its spare: the spare goes with the run.
      if (warm !== undefined && !claimed) this.warm?.drop(warm)
      Object.assign(outcome, execution)
      if (execution.launched === true) this.launches.worked()
      else if (execution.launched === false) {
        const why = launchFailureReason(execution.stderrTail, execution.spawnError?.message)
        if (why !== null) this.launches.failed(why)
      }
      if (this.cluster !== undefined) {
        // What the SDK's mirror had not sent when the CLI ended is taken from the file, so the next
        // run of the session, on any instance, has it all.
        const place = this.planner.placeOf(identity?.key ?? null)
        await this.cluster.transcripts.copyFrom(place.configDir, place.owner, spec.sessionId)
          .catch((err: unknown) => handle.log.warn({ err }, 'cluster: copying the transcript to the database failed'))
      }
    } finally {
      endRun(marker)
      // The token dies with the run: whatever of it survives cannot use it (a spare handed back
      // keeps its own, inert again).
      if (warm === undefined || claimed) credential?.revoke()
      else credential?.deactivate()
    }
  }

  /** How the executor runs a CLI as `identity` (and in the sandbox, with `cwd` bound), or as the server. */
  private executorSettings (identity: AgentIdentity | undefined, cwd: string, chdir?: string): ExecutorSettings {
    const sb = this.sandbox
    const launch = identity !== undefined && sb !== undefined
      ? sandboxLaunch({ uid: identity.uid, gid: identity.gid, cwd, ...(chdir !== undefined ? { chdir } : {}), home: identity.home, agentsDir: sb.agentsDir, hiddenDirs: sb.hiddenDirs, hiddenFiles: sb.hiddenFiles, readOnly: sb.readOnly ?? [] }, sb.tools)
      : undefined
    return {
      cliPath: this.cliPath,
      settingSources: this.settings.settingSources,
      maxLineBytes: this.settings.maxLineBytes,
      maxOutputBytes: this.settings.maxOutputBytes,
      killGraceMs: this.settings.killGraceMs,
      ...(identity !== undefined ? { identity: { uid: identity.uid, gid: identity.gid } } : {}),
      ...(launch !== undefined ? { wrap: launch } : {})
    }
  }

  /**
   * A warm spare for a run of a new session, if one is parked for its identity and can take its
   * options (the claim sets directory, model, permission mode and appended system prompt; the rest
   * was fixed when the spare started). Taken synchronously, before admission.
   */
  private takeSpare (spec: RunSpec, request: RunRequest): WarmSpare | undefined {
    if (this.warm === undefined || request.session_id !== undefined || spec.sessionMode !== 'new') return undefined
    const claimable = Object.keys(spec.env).length === 0 && spec.systemPrompt === undefined && spec.allowedTools === undefined &&
      spec.disallowedTools === undefined && spec.maxTurns === undefined && spec.maxBudgetUsd === undefined &&
      spec.outputSchema === undefined && spec.approvals === 'deny' && !spec.includePartialMessages
    const spare = this.warm.take(spec.identity ?? '', s => claimable && (s.onlyCwd === undefined || s.onlyCwd === spec.cwd))
    if (spare === undefined) this.emit('warm', 'miss')
    return spare
  }
}

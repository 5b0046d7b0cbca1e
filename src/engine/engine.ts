import { EventEmitter, setMaxListeners } from 'node:events'
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import type { Settings } from '../config.js'
import { ShuttingDown } from '../domain/errors.js'
import { narrower } from '../domain/limits.js'
import type { ApprovalAnswer, ApprovalRecord } from '../domain/records.js'
import type { RunEvent, RunRequest, RunSpec, UserTurn } from '../domain/run.js'
import type { AgentIdentities } from '../isolation/identities.js'
import type { Workspace } from '../workspace/safe-fs.js'
import { ChangesNotRecorded, RunChanges, RunNotEnded } from '../workspace/changes.js'
import type { FileChange } from '../workspace/snapshots.js'
import { SessionCatalog } from '../sessions/catalog.js'
import type { RunStore } from '../store/store.js'
import { SessionLedger } from './session-ledger.js'
import { ApprovalDesk } from './approvals.js'
import { buildChildEnv } from './child-env.js'
import { CliProbe } from './cli-probe.js'
import { ModelCatalog } from './model-catalog.js'
import { Control } from './control.js'
import { launcherOf, type Launcher } from './launch.js'
import { LaunchHealth } from './launch-health.js'
import { closeEngine, startEngine, Upkeep, type EngineParts } from './lifecycle.js'
import { RunPlanner, storedRequest } from './planner.js'
import type { EnginePorts, Peers, QueueHost, RunQueue, SubmittedRun } from './ports.js'
import { Leftovers } from './recovery.js'
import { Retention } from './retention.js'
import { RunHandle } from './run-handle.js'
import { RunLog } from './run-log.js'
import { SessionRegistry } from './sessions.js'
import { Supervisor } from './supervisor.js'
import { WarmStart } from './warm-start.js'
import { SPARE_BYTES } from './warm-pool.js'
import { SessionKeeper } from './keep-alive.js'
import { endRun } from '../isolation/process-tree.js'
import type { EngineDeps, EngineEvents, RunSummary, SubmitOptions } from './types.js'

export { RunHandle }
export type { SubmittedRun }

/** How long a running run stays this instance's without a renewal; renewed every third of it. */
export const LEASE_MS = 30_000

/**
 * The engine, as the rest of the server uses it. It checks a request against policy (`prepare`),
 * has the run queue admit and record it (`submit`), steers runs wherever they are (`Control`),
 * lets the supervisor run each one held here, and hands what a previous process left to
 * recovery. What differs in a cluster comes through its ports; it holds no branch on cluster mode.
 */
export class Engine extends EventEmitter<EngineEvents> {
  readonly cliPath: string
  readonly probe: CliProbe
  /** The models runs may use, as the CLI lists them. */
  readonly catalog: ModelCatalog
  /** The sessions API: browse, read, rename, fork and delete sessions. */
  readonly sessions: SessionCatalog
  /** The permission requests of `approvals: ask` runs, parked until answered. */
  readonly approvals: ApprovalDesk
  /** Whether CLIs can be launched as runs launch them (`/health` → `isolation.error`). */
  readonly launches = new LaunchHealth()
  /** What runs changed in their working directories (undefined: not recorded, `RUN_CHANGES=off` or no git). */
  readonly changes: RunChanges | undefined
  private readonly settings: Settings
  private readonly log: EngineDeps['log']
  private readonly store: RunStore
  /** Who owns each session, and which are being deleted. */
  private readonly ledger = new SessionLedger()
  private readonly planner: RunPlanner
  private readonly launcher: Launcher
  private readonly runLog: RunLog
  private readonly runs: Supervisor
  /** Session keep-alive (`SESSION_KEEPALIVE_S`): CLIs kept for their sessions' next runs. */
  private readonly keeper: SessionKeeper | undefined
  private readonly queue: RunQueue
  /** What the queue may use of the engine. */
  private readonly host: QueueHost
  private readonly peers: Peers
  private readonly control: Control
  private readonly retention: Retention
  private readonly upkeep: Upkeep
  private readonly identities: AgentIdentities | undefined
  /** Warm spares (`WARM_SPARES`); absent when off. */
  private readonly warm: WarmStart | undefined
  private readonly instanceId: string
  /** This process among the lives of this instance: its spares' markers carry it. */
  private readonly bootId = randomUUID().slice(0, 8)
  /** Aborted when the server shuts down: followers of runs that stay queued end their streams. */
  private readonly shutdown = new AbortController()
  private closing = false
  /** What a previous process left, until `recover()` deals with it. */
  private readonly leftovers = new Leftovers()

  constructor (deps: EngineDeps, ports: EnginePorts) {
    super()
    const { settings } = deps
    this.settings = settings
    this.log = deps.log
    this.store = deps.store
    this.instanceId = deps.instanceId
    const leaseMs = deps.leaseMs ?? LEASE_MS
    this.launcher = launcherOf(settings, deps.broker, deps.isolation?.level === 'sandbox' ? deps.isolation.sandbox : undefined, deps.limits, deps.networks)
    this.cliPath = this.launcher.cliPath
    this.probe = new CliProbe(this.cliPath, buildChildEnv(settings.serverEnv, {}, 'probe', settings.passEnv))
    this.catalog = new ModelCatalog(this.cliPath, buildChildEnv(settings.serverEnv, {}, 'models', settings.passEnv))
    const env = settings.serverEnv
    const configDir = env.CLAUDE_CONFIG_DIR ?? join(env.HOME ?? '/', '.claude')
    const identities = deps.isolation?.level === 'none' ? undefined : deps.isolation?.identities
    this.identities = identities
    this.changes = deps.snapshots !== undefined ? new RunChanges(deps.snapshots, settings.allowedRoots) : undefined
    this.planner = new RunPlanner(settings, new SessionRegistry(configDir), identities, session => this.ledger.ownerOf(session), configDir)
    this.sessions = new SessionCatalog({
      store: deps.store,
      placeOf: owner => this.planner.placeOf(owner),
      live: session => this.queue.busy(session),
      hold: session => this.ledger.hold(session),
      letGo: async session => await this.keeper?.end(session),
      ...(ports.transcripts.shared !== undefined ? { transcripts: ports.transcripts.shared } : {}),
      adopt: (session, owner, cwd) => {
        this.ledger.adopt(session, owner)
        this.planner.sessionsOf(identities === undefined ? undefined : identities.identityFor(owner)).remember(session, cwd)
      }
    })
    this.runLog = new RunLog(deps.store, ports.bus)
    this.approvals = new ApprovalDesk(deps.store, (handle, record) => this.emit('approval', summaryOf(handle), record))
    this.retention = new Retention(deps.store, { days: settings.retentionDays, maxRuns: settings.retentionMaxRuns }, deps.log)
    if (settings.warmSpares > 0 && ports.warmSpares) {
      this.warm = new WarmStart(settings.warmSpares, {
        instanceId: this.instanceId,
        bootId: this.bootId,
        launcher: this.launcher,
        log: deps.log,
        identityOf: profile => profile === '' || identities === undefined ? undefined : identities.identityFor(profile),
        workAreaOf: identity => this.launcher.sandbox === undefined ? undefined : this.planner.workAreaOf(identity),
        perIdentity: identities !== undefined,
        memoryMax: settings.warmMemoryMax,
        // Sessions kept alive count against the same memory.
        reserved: () => this.keeper?.count ?? 0,
        launches: this.launches,
        claimed: outcome => this.emit('warm', outcome)
      })
    }
    this.keeper = settings.sessionKeepAliveS > 0 && ports.warmSpares
      ? new SessionKeeper({
        keepAliveS: settings.sessionKeepAliveS,
        // Counted like spares against WARM_MEMORY_MAX, and one at least.
        max: Math.max(1, Math.floor(settings.warmMemoryMax / SPARE_BYTES)),
        released: async k => {
          endRun(k.marker)
          k.credential?.revoke()
          await k.network?.close()
        },
        log: deps.log
      })
      : undefined
    this.runs = new Supervisor({
      ...(this.keeper !== undefined ? { keeper: this.keeper } : {}),
      store: deps.store,
      planner: this.planner,
      launcher: this.launcher,
      approvals: this.approvals,
      launches: this.launches,
      transcripts: ports.transcripts,
      warm: this.warm?.pool,
      instanceId: this.instanceId,
      leaseMs,
      shutdown: this.shutdown.signal,
      started: handle => this.emit('started', summaryOf(handle)),
      finished: (handle, result) => {
        this.queue.spent(handle.keyName, result.total_cost_usd)
        this.emit('finished', summaryOf(handle), result)
      },
      freed: () => this.queue.freed(),
      warmClaim: outcome => this.emit('warm', outcome),
      ...(deps.snapshots !== undefined ? { snapshots: deps.snapshots } : {}),
      ...(deps.execute !== undefined ? { execute: deps.execute } : {})
    })
    this.host = {
      store: deps.store,
      runLog: this.runLog,
      runs: this.runs,
      sessions: this.ledger,
      instanceId: this.instanceId,
      leaseMs,
      settings,
      log: deps.log,
      shutdown: this.shutdown.signal,
      recorded: (spec, keyName) => this.recorded(spec, keyName),
      handleOf: async r => {
        this.recorded(r.spec, r.keyName)
        const log = this.log.child({ run_id: r.id, key_name: r.keyName, ...(r.spec.requestId !== undefined ? { request_id: r.spec.requestId } : {}) })
        return new RunHandle(r.spec, r.cancelOnDisconnect, r.keyName, log, this.runLog, await this.store.lastSeq(r.id), r.createdAt)
      },
      finished: (r, result) => this.emit('finished', { id: r.id, keyName: r.keyName, webhookUrl: r.request.webhook_url }, result),
      cancel: async (runId, reason) => await this.cancel(runId, reason)
    }
    this.queue = ports.queue(this.host)
    this.peers = ports.peers
    this.control = new Control({
      runs: this.runs,
      queue: this.queue,
      peers: ports.peers,
      approvals: this.approvals,
      store: deps.store,
      queueLimits: { maxMessages: settings.maxQueuedMessages, maxBytes: settings.maxQueuedMessageBytes },
      killGraceMs: settings.killGraceMs
    })
    this.upkeep = new Upkeep({ store: deps.store, log: deps.log, instanceId: this.instanceId, leaseMs, identities, launcher: this.launcher, launches: this.launches, bootId: this.bootId })
    // Every queued run and every follower listens for the shutdown.
    setMaxListeners(0, this.shutdown.signal)
  }

  /**
   * Probe the CLI; read what the store knows (session owners, today's spending) into admission;
   * note what a previous process left (acted on by `recover()`, once the server has its port);
   * prune old runs; keep leases, probe and retention going.
   */
  async start (): Promise<void> {
    await startEngine(this.parts())
  }

  /** Whether the store answered its last ping (within a second), checked every few seconds. */
  get storeAnswers (): boolean { return this.upkeep.storeAnswers }

  /** Runs running here, and runs waiting for a slot (in a cluster, in the shared queue). */
  async stats (): Promise<{ active: number, queued: number }> {
    return await this.queue.stats()
  }

  /** A queued run's place in the queue (1-based): here, or in the cluster's. */
  async queuePosition (runId: string): Promise<number | null> {
    return await this.queue.position(runId)
  }

  /** Cluster mode: this instance's id and how many instances are alive (undefined on one machine). */
  clusterStats (): { instance_id: string, instances: number } | undefined {
    return this.peers.stats()
  }

  /** The warm spares parked now, and how many there should be (0: warm start is off). */
  warmStats (): { parked: number, target: number } {
    return { parked: this.warm?.pool.parkedCount ?? 0, target: this.warm?.pool.target ?? 0 }
  }

  get shuttingDown (): boolean { return this.closing }

  /** The live handle of a queued or running run held here. */
  get (runId: string): RunHandle | undefined {
    return this.runs.get(runId)
  }

  /**
   * Check a request against policy and resolve its directory, session and identity (see
   * `RunPlanner`); starts nothing and reserves nothing.
   */
  async prepare (req: RunRequest, keyName: string | null = null, anySession = keyName === null): Promise<RunSpec> {
    if (req.session_id !== undefined) {
      // Another instance may have made the session: its owner and directory are in the store.
      const id = req.session_id.toLowerCase()
      const s = await this.queue.sharedSession(id)
      if (s !== undefined) {
        this.ledger.adopt(id, s.keyName)
        const registry = this.planner.sessionsOf(this.identities?.identityFor(s.keyName))
        if (await registry.locate(id) === null) registry.remember(id, s.workingDirectory)
      }
    }
    return await this.planner.prepare(req, keyName, anySession)
  }

  /**
   * Accept a prepared run: the queue admits and records it (or throws why not), then it goes on
   * whether or not anyone listens. A new session starts on a warm spare when one fits.
   */
  async submit (spec: RunSpec, opts: SubmitOptions): Promise<SubmittedRun> {
    if (this.closing) throw new ShuttingDown('the server is shutting down; retry in a moment')
    if (opts.requestId !== undefined) spec.requestId = opts.requestId
    spec.limits = narrower(this.settings.runLimits, opts.key?.runLimits)
    const log = this.log.child({ run_id: spec.runId, key_name: opts.key?.name ?? null, ...(opts.requestId !== undefined ? { request_id: opts.requestId } : {}) })
    // The run takes the spare's session id.
    const warm = this.warm?.take(spec, opts.request)
    if (warm !== undefined) spec.sessionId = warm.sessionId
    return await this.queue.submit({
      spec,
      stored: storedRequest(opts.request),
      key: opts.key,
      cancelOnDisconnect: opts.cancelOnDisconnect,
      ...(opts.requestId !== undefined ? { requestId: opts.requestId } : {}),
      log,
      refused: () => { if (warm !== undefined) this.warm?.pool.giveBack(warm) },
      // Admission recorded the spare's session for this key: no other run may take it.
      unrecorded: () => { if (warm !== undefined) this.warm?.pool.drop(warm) },
      admitted: handle => { handle.warm = warm }
    })
  }

  /** Hand a follow-up message to a live run (see `Control.message`). */
  async message (runId: string, turn: UserTurn): Promise<string> {
    return await this.control.message(runId, turn)
  }

  /** Stop a run's current turn (see `Control.interrupt`). */
  async interrupt (runId: string, turn?: UserTurn): Promise<void> {
    await this.control.interrupt(runId, turn)
  }

  /** Cancel a queued or running run and wait until its end is stored; false when it is not live. */
  async cancel (runId: string, reason: string): Promise<boolean> {
    return await this.control.cancel(runId, reason)
  }

  /** Answer a pending approval where the run waits for it. */
  async answerApproval (runId: string, approvalId: string, answer: ApprovalAnswer): Promise<ApprovalRecord> {
    return await this.control.answerApproval(runId, approvalId, answer)
  }

  /**
   * Where a key's files are (`/api/files`): with agent identities, its own work area; otherwise (or
   * for an admin) every allowed root, relative paths from `DEFAULT_WORKING_DIR`, as a run's
   * `working_directory` resolves.
   */
  workspaceOf (keyName: string | null, all: boolean): Workspace {
    if (this.identities === undefined || all) return { roots: this.settings.allowedRoots, base: this.settings.defaultWorkingDir }
    const area = this.planner.workAreaOf(this.identities.identityFor(keyName))
    return { roots: [area], base: area }
  }

  /**
   * Put back what an ended run changed in its working directory, recorded as a `files_reverted`
   * event of the run. Refused while it runs, and when a later change touched the same files.
   */
  async revertChanges (runId: string): Promise<{ working_directory: string, files: FileChange[] }> {
    if (this.changes === undefined) throw new ChangesNotRecorded('this server does not record what runs change (RUN_CHANGES=off, or git is missing)')
    const run = await this.store.getRun(runId)
    if (run === undefined || run.status === 'queued' || run.status === 'running') throw new RunNotEnded(`run ${runId} has not ended: its changes can be reverted once it has`)
    const reverted = await this.changes.revert(runId)
    const seq = (await this.store.lastSeq(runId)) + 1
    const event = { files: reverted.files.length, paths: reverted.files.slice(0, 100).map(f => f.path), at: new Date().toISOString() }
    this.store.appendEvent(runId, seq, 'files_reverted', JSON.stringify(event))
    await this.store.flush()
    return reverted
  }

  /** Hand the client's output of a parked function call to its run (here); false if no such call waits. */
  answerToolCall (runId: string, callId: string, output: string): boolean {
    const answer = this.get(runId)?.toolCalls.get(callId)
    if (answer === undefined) return false
    answer(output)
    return true
  }

  /** Pending approvals of a run. */
  async pendingApprovals (runId: string): Promise<number> {
    return await this.control.pendingApprovals(runId)
  }

  /**
   * Send a run's events with `seq > after` to `write`, from the log and then live, until the
   * terminal `result` (true) or until `signal` aborts or the server shuts down (false). A slow
   * client never makes the server buffer without bound, and never misses an event.
   */
  async follow (runId: string, after: number, write: (e: RunEvent) => boolean, drained: () => Promise<void>, signal: AbortSignal): Promise<boolean> {
    return await this.runLog.follow(runId, after, { write, drained, signal: AbortSignal.any([signal, this.shutdown.signal]) }, () => this.queue.isLive(runId))
  }

  /**
   * What a previous process left, handed to recovery once the server holds its port (and
   * `DATA_DIR`'s lock), so a server that cannot start never touches another one's runs. Once only.
   */
  async recover (): Promise<void> {
    await this.leftovers.recover(this.closing, {
      store: this.store,
      log: this.log,
      maxOutputBytes: this.settings.maxOutputBytes,
      spares: `warm-${this.instanceId}-`,
      ownSpares: `warm-${this.instanceId}-${this.bootId}-`,
      // Interrupted and cancelled runs end too: their webhooks and metrics hear of it.
      finished: (r, result) => this.emit('finished', { id: r.id, keyName: r.keyName, webhookUrl: r.request.webhook_url }, result),
      requeue: async r => {
        this.queue.requeue(await this.host.handleOf({ ...r, cancelOnDisconnect: false, createdAt: Date.now() }))
      }
    })
    this.queue.freed()
  }

  /**
   * Resolves once the runs a previous process left are interrupted or queued again: until then a
   * queued run of that process is in no one's hands, and a follower, a cancel or a message would
   * find it not live. At once when nothing was left, or once `recover()` has run.
   */
  async recovered (): Promise<void> {
    await this.leftovers.recovered()
  }

  /**
   * Shut down: stop admitting, let running runs finish for `graceMs`, then cancel the rest and
   * wait until their trees are gone. Queued runs stay queued for the next start, except those
   * whose client waits on the connection that is about to close.
   */
  async close (graceMs = this.settings.shutdownGraceS * 1000): Promise<void> {
    this.closing = true
    await closeEngine(this.parts(), graceMs)
    await this.catalog.close()
  }

  /** The parts start-up and shutdown work on. */
  private parts (): EngineParts {
    return { settings: this.settings, log: this.log, store: this.store, probe: this.probe, identities: this.identities, upkeep: this.upkeep, warm: this.warm, keeper: this.keeper, queue: this.queue, peers: this.peers, control: this.control, ledger: this.ledger, retention: this.retention, leftovers: this.leftovers, runs: this.runs, runLog: this.runLog, shutdown: this.shutdown }
  }

  /** A run was recorded or taken up here: its session's owner, and the directory it lives in. */
  private recorded (spec: RunSpec, keyName: string | null): void {
    this.ledger.adopt(spec.sessionId, spec.identity ?? keyName)
    this.planner.sessionsOf(this.planner.identityOf(spec)).remember(spec.sessionId, spec.cwd)
  }
}

/** A run as webhooks and metrics hear of it. */
function summaryOf (handle: RunHandle): RunSummary {
  return { id: handle.id, keyName: handle.keyName, webhookUrl: handle.spec.webhookUrl }
}

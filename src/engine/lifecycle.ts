import type { Settings } from '../config.js'
import type { RunnerLogger } from '../domain/logger.js'
import type { AgentIdentities } from '../isolation/identities.js'
import { RUN_MARKER_VAR } from '../isolation/proc.js'
import { endStrays } from '../isolation/process-tree.js'
import type { RunStore } from '../store/store.js'
import { checkLaunch, type Launcher } from './launch.js'
import type { LaunchHealth } from './launch-health.js'
import type { SessionLedger } from './session-ledger.js'
import type { CliProbe } from './cli-probe.js'
import type { Control } from './control.js'
import type { Peers, RunQueue } from './ports.js'
import type { Leftovers } from './recovery.js'
import type { Retention } from './retention.js'
import type { RunLog } from './run-log.js'
import type { Supervisor } from './supervisor.js'
import type { WarmStart } from './warm-start.js'
import type { SessionKeeper } from './keep-alive.js'

/** How often the store is pinged for `/health` (never per request: a health check costs nothing). */
const STORE_CHECK_MS = 5_000
/** How often an identity's processes that no live run accounts for are looked for (besides each run's end). */
const STRAY_SWEEP_MS = 10_000

/** What the engine's upkeep works on. */
export interface UpkeepDeps {
  store: RunStore
  log: RunnerLogger
  instanceId: string
  bootId: string
  leaseMs: number
  identities: AgentIdentities | undefined
  launcher: Launcher
  launches: LaunchHealth
}

/**
 * What keeps the engine sound while it lives, on timers: the leases of its running runs renewed,
 * the store pinged for `/health`, and (with agent identities) the processes no run accounts for
 * ended; and, once at start, the check that a CLI can be launched as runs launch it.
 */
export class Upkeep {
  private leaseTimer: NodeJS.Timeout | undefined
  private storeTimer: NodeJS.Timeout | undefined
  private strayTimer: NodeJS.Timeout | undefined
  private storeOk = true

  constructor (private readonly d: UpkeepDeps) {}

  /** Whether the store answered its last ping (within a second). */
  get storeAnswers (): boolean { return this.storeOk }

  async start (): Promise<void> {
    await this.checkStore()
    this.leaseTimer = setInterval(() => {
      this.d.store.renewLeases(this.d.instanceId, Date.now() + this.d.leaseMs).catch(err => this.d.log.error({ err }, 'renewing run leases failed; will retry'))
    }, this.d.leaseMs / 3)
    this.leaseTimer.unref()
    this.storeTimer = setInterval(() => { void this.checkStore() }, STORE_CHECK_MS)
    this.storeTimer.unref()
    if (this.d.identities !== undefined) {
      // No run is live yet: whatever an identity still runs was left by an earlier life (waiting,
      // say, for the port). Then now and again, for what escapes a run's own end.
      await this.endStrays()
      this.strayTimer = setInterval(() => { void this.endStrays() }, STRAY_SWEEP_MS)
      this.strayTimer.unref()
    }
  }

  stop (): void {
    clearInterval(this.leaseTimer)
    clearInterval(this.storeTimer)
    clearInterval(this.strayTimer)
  }

  /**
   * Launch the CLI exactly as a run would, with `--version`: whatever keeps runs from starting
   * shows in `/health` before the first client finds it.
   */
  async selfCheck (): Promise<void> {
    const sandboxed = this.d.launcher.sandbox !== undefined
    const why = await checkLaunch(this.d.launcher, this.d.identities!.identityFor(null), `check-${this.d.instanceId}-${this.d.bootId}`)
    if (why === null) {
      this.d.launches.worked()
      this.d.log.info({ level: sandboxed ? 'sandbox' : 'uid' }, 'self-check: the CLI starts as an agent identity')
      return
    }
    const message = `the CLI cannot start as an agent identity (${sandboxed ? 'ISOLATION=sandbox' : 'ISOLATION=uid'}): ${why}`
    this.d.launches.checkFailed(message)
    this.d.log.error({ cli: this.d.launcher.cliPath }, `self-check failed: ${message}; runs will fail until it is fixed`)
  }

  /** End every process of an agent identity that no live run or spare accounts for. */
  private async endStrays (): Promise<void> {
    const ended = await endStrays(new Set(this.d.identities?.knownUids() ?? []), RUN_MARKER_VAR).catch(() => 0)
    if (ended > 0) this.d.log.warn({ killed: ended }, 'ended processes of agent identities that no run accounts for')
  }

  private async checkStore (): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    try {
      this.storeOk = await Promise.race([
        this.d.store.ping().then(() => true),
        new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), 1000) })
      ])
    } catch {
      this.storeOk = false
    } finally {
      clearTimeout(timer)
    }
  }
}

/** What start-up and shutdown work on: the engine's parts. */
export interface EngineParts {
  settings: Settings
  log: RunnerLogger
  store: RunStore
  probe: CliProbe
  identities: AgentIdentities | undefined
  upkeep: Upkeep
  warm: WarmStart | undefined
  keeper: SessionKeeper | undefined
  queue: RunQueue
  peers: Peers
  control: Control
  ledger: SessionLedger
  retention: Retention
  leftovers: Leftovers
  runs: Supervisor
  runLog: RunLog
  /** Aborted when the server shuts down: followers of runs that stay queued end their streams. */
  shutdown: AbortController
}

/**
 * Start: probe the CLI; note what a previous process left (acted on by `recover()`, once the
 * server has its port); answer other instances; read what the store knows (session owners,
 * today's spending) into admission; prune old runs; keep leases, probe and retention going; then
 * take part in the queue.
 */
export async function startEngine (p: EngineParts): Promise<void> {
  const status = await p.probe.refresh()
  if (!status.available) p.log.warn({ cli: p.probe.cli, error: status.error }, 'Claude Code CLI not available: runs will fail with cli_not_found')
  else if (status.credentials === 'missing') p.log.warn({ cli: p.probe.cli }, 'no Claude credential configured (ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN or a `claude` login): runs will fail with not_authenticated')
  p.probe.startBackground(p.settings.cliProbeIntervalS)
  // In the background: the server starts, and /health says what is wrong meanwhile.
  if (p.identities !== undefined && status.available) void p.upkeep.selfCheck()
  if (status.available) p.warm?.pool.start()
  // Read now, before any new run exists, so recovery never touches a run of this process.
  p.leftovers.note(await p.queue.open())
  p.peers.serve(async (op, args) => await p.control.answerPeer(op, args))
  p.ledger.load(await p.store.sessionOwners())
  await p.retention.start()
  await p.upkeep.start()
  // A shared queue: this instance takes its part of it from now on.
  p.queue.begin()
}

/**
 * Shut down: stop admitting, let running runs finish for `graceMs`, then cancel the rest and
 * wait until their trees are gone. Queued runs stay queued for the next start, except those
 * whose client waits on the connection that is about to close.
 */
export async function closeEngine (p: EngineParts, graceMs: number): Promise<void> {
  p.queue.stop()
  // Spares are nobody's runs: they go at once.
  const spares = p.warm?.pool.close()
  // Nor are the CLIs kept for sessions' next runs (and none is kept from here on).
  const kept = p.keeper?.close()
  p.probe.stop()
  p.retention.stop()
  p.upkeep.stop()
  const live = p.runs.all()
  for (const h of live) {
    if (h.status === 'queued' && !h.wasAdmitted && h.cancelOnDisconnect) h.cancel('server shutting down')
  }
  // Admitted runs count as running: their spawn may be a tick away, and must not outlive the store.
  const running = live.filter(h => h.status === 'running' || h.wasAdmitted || h.cancelOnDisconnect)
  if (graceMs > 0 && running.length > 0) {
    p.log.info({ running: running.length, grace_s: graceMs / 1000 }, 'waiting for running runs to finish')
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
  await kept
  // Admitted here and never started: back to a shared queue, for another instance.
  await p.queue.close(live.filter(h => !running.includes(h) && !h.isFinished()))
  // The ends of the runs just cancelled reach their followers (a client of /api/execute in a
  // cluster follows its run's events) before the followers are let go.
  await p.runLog.published()
  // Runs left queued stay so in the store; their followers end their streams now and reconnect later.
  p.shutdown.abort()
  await p.store.close()
}

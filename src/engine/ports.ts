import type { KeyLimits } from '../domain/keys.js'
import type { RunRecord, SessionRecord } from '../domain/records.js'
import type { RunRequest, RunResult, RunSpec, UserTurn } from '../domain/run.js'
import type { RunnerLogger } from '../domain/logger.js'
import type { Settings } from '../config.js'
import type { EventBus, RunStore } from '../store/store.js'
import type { SessionLedger } from './session-ledger.js'
import type { RunLog } from './run-log.js'
import type { Supervisor } from './supervisor.js'
import type { QueueLimits } from '../domain/messages.js'
import type { CatalogDeps } from '../sessions/catalog.js'
import type { RunHandle } from './run-handle.js'

// What differs between one machine and a cluster, as the engine sees it: where runs wait for a
// slot (the run queue), how to reach the instance that holds a run (peers), and where session
// transcripts are kept (transcript sync). One implementation of each for one machine
// (`local.ts`), one for a cluster (`src/cluster/`), chosen once where the engine is composed.

/** A run as the request that started it holds it: a `RunHandle` here, or one that follows it wherever it runs. */
export interface SubmittedRun {
  readonly id: string
  /** Ask the run to end, wherever it runs. Idempotent. */
  cancel: (reason: string) => void
  /** Settles once the run has ended (its `result` event is out). */
  readonly result: Promise<unknown>
  /** The result as JSON, exactly as the `result` event carries it (set once `result` settles). */
  readonly resultJson: string
}

/** A run to admit and record: what the queue is handed by `Engine.submit`. */
export interface Submission {
  spec: RunSpec
  /** The request as stored (env var values and images left out). */
  stored: RunRequest
  key: KeyLimits | null
  cancelOnDisconnect: boolean
  requestId?: string
  log: RunHandle['log']
  /** Undo what was taken for the run before admission (a warm spare): it was refused. */
  refused: (err: unknown) => void
  /** It was admitted but could not be recorded: what was taken for it must not serve another run. */
  unrecorded: () => void
  /** The local handle admission made, before it is recorded (the run's spare goes with it). */
  admitted?: (handle: RunHandle) => void
}

/** Where a run is now. */
export type RunPlace =
  | { here: RunHandle }
  /** Held by another instance (cluster mode). */
  | { elsewhere: string }
  /** Waiting in a shared queue nobody has claimed it from (cluster mode). */
  | { queued: true }
  | { ended: true }

/** Where runs wait for a slot, and how they come to run on this instance. */
export interface RunQueue {
  /**
   * Open the queue at start: read what it needs (a key's spending today; a cluster joins), and
   * return what a previous life of this instance left to recover: running runs (to end as
   * interrupted) and queued ones (to queue again here). Before any new run exists.
   */
  open: () => Promise<{ running: RunRecord[], queued: RunRecord[] }>
  /** Take part in the queue from now on (cluster: claim queued runs while slots are free). */
  begin: () => void
  /** Admit a run (throws the refusal: see `decideAdmission`) and record it; it starts when it may. */
  submit: (s: Submission) => Promise<SubmittedRun>
  /** Queue again a run a previous process accepted (no limit is checked). */
  requeue: (handle: RunHandle) => void
  /** Where a run is now: here, elsewhere, in a shared queue, or over (or unknown). */
  locate: (runId: string) => Promise<RunPlace>
  /** End a run that waits in a shared queue nobody has claimed it from; false when there is none. */
  cancelQueued: (runId: string, reason: string) => Promise<boolean>
  /** A queued run's place (1-based), null when it is not queued. */
  position: (runId: string) => Promise<number | null>
  /** Runs running here, and runs waiting for a slot (in a cluster, in the shared queue). */
  stats: () => Promise<{ active: number, queued: number }>
  /** Whether a run is queued or running, here or anywhere (for followers: read synchronously). */
  isLive: (runId: string) => boolean
  /**
   * Leave a follow-up message for a run that is not here: kept for whoever starts it when it waits
   * in a shared queue (within `limits`), else where it is held (`owner`), or nowhere (`finished`).
   */
  leaveMessage: (runId: string, id: string, turn: UserTurn, limits: QueueLimits) => Promise<{ queued: true } | { owner: string } | { finished: true }>
  /** Whether a session has a run queued or running here, or one that forks it. */
  busy: (sessionId: string) => boolean
  /** A run of `keyName` ended having cost `usd` (a key's daily budget counts it). */
  spent: (keyName: string | null, usd: number | null) => void
  /** A slot here is free again. */
  freed: () => void
  /** A session another instance may have made (cluster mode): its record, to learn its owner and directory. */
  sharedSession: (id: string) => Promise<SessionRecord | undefined>
  /** Admit and start nothing more (shutdown begins). */
  stop: () => void
  /** Shutdown: the runs admitted here that never started go back (a cluster's queue takes them). */
  close: (unstarted: RunHandle[]) => Promise<void>
}

/** What a run queue may use of the engine it serves. */
export interface QueueHost {
  store: RunStore
  runLog: RunLog
  /** The runs held here. */
  runs: Supervisor
  /** Who owns each session, and which are being deleted. */
  sessions: SessionLedger
  instanceId: string
  leaseMs: number
  settings: Pick<Settings, 'maxConcurrentRuns' | 'maxQueuedRuns' | 'maxOutputBytes'>
  log: RunnerLogger & { child: (b: object) => RunnerLogger }
  /** Aborted when the server shuts down. */
  shutdown: AbortSignal
  /** A run was recorded or taken up here: its session's owner and directory, for the runs that continue it. */
  recorded: (spec: RunSpec, keyName: string | null) => void
  /** A live handle for a stored run this instance is to run. */
  handleOf: (r: RunRecord & { spec: RunSpec }) => Promise<RunHandle>
  /** A run ended without running here (cancelled in a queue, or its instance died). */
  finished: (r: RunRecord, result: RunResult) => void
  /** Cancel a run wherever it is. */
  cancel: (runId: string, reason: string) => Promise<boolean>
}

/** What the engine answers when another instance asks about a run held here. */
export type PeerHandler = (op: string, args: any) => Promise<unknown>

/** The instances that hold runs: reached by instance id. On one machine there are none. */
export interface Peers {
  /** Ask instance `to` to do `op` for a run it holds; its answer or its error. */
  call: (to: string, op: string, args: unknown, timeoutMs?: number) => Promise<unknown>
  /** Answer the requests of other instances. */
  serve: (handler: PeerHandler) => void
  /** This instance's id and how many instances are alive; undefined on one machine. */
  stats: () => { instance_id: string, instances: number } | undefined
}

/** Where session transcripts are kept besides the CLI's own files (a cluster's database). */
export interface TranscriptSync {
  /** Before a run continues a session: bring its transcript to this instance's files. */
  materialise: (configDir: string, owner: { uid: number, gid: number } | undefined, sessionId: string) => Promise<void>
  /** After a run: what its CLI wrote, to the shared copy. */
  copyFrom: (configDir: string, owner: { uid: number, gid: number } | undefined, sessionId: string) => Promise<void>
  /** Where the sessions API reads and changes transcripts, when not this instance's files. */
  shared?: NonNullable<CatalogDeps['transcripts']>
}

/** What differs between one machine and a cluster chosen once where the engine is composed. */
export interface EnginePorts {
  queue: (host: QueueHost) => RunQueue
  peers: Peers
  transcripts: TranscriptSync
  bus: EventBus
  /** Warm spares are kept (one machine: a run starts where it was sent). */
  warmSpares: boolean
}

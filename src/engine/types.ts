import type { Snapshots } from '../workspace/snapshots.js'
import type { Settings } from '../config.js'
import type { KeyLimits } from '../domain/keys.js'
import type { RunnerLogger } from '../domain/logger.js'
import type { ApprovalRecord } from '../domain/records.js'
import type { RunRequest, RunResult } from '../domain/run.js'
import type { CredentialBroker } from '../isolation/broker.js'
import type { LimitsSetup } from '../isolation/limits.js'
import type { RunNetworks } from '../isolation/run-network.js'
import type { AgentIdentities, IsolationLevel } from '../isolation/identities.js'
import type { SandboxSettings } from './launch.js'
import type { SupervisorDeps } from './supervisor.js'
import type { ClaimOutcome } from './warm-pool.js'
import type { RunStore } from '../store/store.js'

// The engine's own vocabulary: what it is built from, how a run is asked of it, and what it tells
// the rest of the server.

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

/** What the engine tells the rest of the server (metrics, webhooks), for live and recovered runs alike. */
export interface EngineEvents {
  started: [RunSummary]
  finished: [RunSummary, RunResult]
  /** An `approvals: ask` run started waiting for an answer. */
  approval: [RunSummary, ApprovalRecord]
  /** A run of a new session started on a warm spare (`hit`), or cold (`miss`, `refused`). */
  warm: [ClaimOutcome]
}

/** What the engine is built from. */
export interface EngineDeps {
  settings: Settings
  log: RunnerLogger & { child: (b: object) => RunnerLogger }
  store: RunStore
  /** This server instance: it owns the runs it starts (see `RunStore`). */
  instanceId: string
  /** Hands each run a token of its own instead of the operator's credential (absent: not fronted). */
  broker?: CredentialBroker
  /** How long a running run stays its instance's without a renewal (default `LEASE_MS`). */
  leaseMs?: number
  /** With `uid` or `sandbox` isolation: the agent identity of each key's runs, and the sandbox. */
  isolation?: { level: IsolationLevel, identities?: AgentIdentities, sandbox?: SandboxSettings }
  /** How runs are held to their limits on this host (absent: they are not). */
  limits?: LimitsSetup
  /** Sandboxed runs' own networks (absent: the host's). */
  networks?: RunNetworks
  /** Runs a run's CLI: the real executor unless a test gives a fake one. */
  execute?: SupervisorDeps['execute']
  /** Records each run's working directory before and after it (absent: changes are not recorded). */
  snapshots?: Snapshots
}

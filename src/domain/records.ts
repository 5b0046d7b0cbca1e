import type { RunEvent, RunRequest, RunResult, RunSpec, RunStatus } from './run.js'

// What the server keeps of runs, sessions, approvals and webhooks, as every store backend records
// and returns it (see `RunStore`).

/** A run as it is first recorded (queued). */
export interface NewRun {
  id: string
  sessionId: string
  workingDirectory: string
  /** The request as the client sent it, env var values left out. */
  request: RunRequest
  /** The resolved run, to queue it again after a restart (holds env var values until it starts). */
  spec: RunSpec
  keyName: string | null
  /**
   * Who a session this run creates belongs to, when not `keyName` (the key whose agent identity
   * holds its transcript: an admin forking another key's session).
   */
  sessionOwner?: string | null
  cancelOnDisconnect: boolean
  createdAt: number
}

/** A session as it is first recorded. */
export interface NewSession {
  id: string
  /** The key it belongs to (null: made without a key). */
  keyName: string | null
  workingDirectory: string
  title: string | null
  /** What the session was first asked (shown as its title until it has one), cut short. */
  firstPrompt: string | null
  createdAt: number
}

/** A session as stored, with what the run store knows of its runs. */
export interface SessionRecord extends NewSession {
  /** Its last activity: a run submitted or ended, a rename. */
  updatedAt: number
  deletedAt: number | null
  runCount: number
  /** Its newest run (null once its runs are pruned). */
  lastRunId: string | null
  /** A run of it is queued or running. */
  busy: boolean
}

export interface SessionFilter {
  keyName?: string | null
  workingDirectory?: string
  /** The `(updatedAt, id)` of the last session of the previous page. */
  before?: { updatedAt: number, id: string }
  limit: number
}

/** A stored event: `data` is the JSON text clients receive. */
export interface StoredEvent {
  seq: number
  type: RunEvent['type']
  data: string
}

/** One attempt to deliver a run's webhook. */
export interface WebhookDelivery {
  /** The webhook's delivery id (absent on attempts recorded before there were several a run). */
  deliveryId?: string
  /** Absent: `run.finished`. */
  event?: string
  attempt: number
  attemptedAt: number
  url: string
  statusCode: number | null
  error: string | null
  durationMs: number
}

/** A tool call the agent asked permission for, and what became of it. */
export interface ApprovalRecord {
  id: string
  runId: string
  keyName: string | null
  status: 'pending' | 'allowed' | 'denied'
  toolName: string
  input: unknown
  toolUseId: string | null
  title: string | null
  description: string | null
  suggestions: unknown[] | null
  /** The subagent that asked, if one did. */
  agentId: string | null
  createdAt: number
  expiresAt: number
  resolvedAt: number | null
  decisionReason: 'answered' | 'timed_out' | 'run_ended' | null
  /** The key that answered. */
  decidedBy: string | null
  message: string | null
}

/** A webhook still to be sent: the exact body (signed when sent) and its next attempt. */
export interface PendingWebhook {
  /** Its delivery id (as in the body). */
  id: string
  runId: string
  /** `run.finished` or `approval.requested`. */
  event: string
  url: string
  body: string
  /** The number of the next attempt (1 for the first). */
  attempt: number
  dueAt: number
}

export interface RunFilter {
  status?: RunStatus
  sessionId?: string
  keyName?: string
  /** The `rowid` of the last run of the previous page. */
  before?: number
  limit: number
}

/** A run as stored. */
export interface RunRecord {
  id: string
  /** Insertion order, for stable pagination. */
  rowid: number
  status: RunStatus
  sessionId: string
  workingDirectory: string
  request: RunRequest
  spec: RunSpec | null
  keyName: string | null
  cancelOnDisconnect: boolean
  marker: string | null
  owner: string | null
  leaseUntil: number | null
  createdAt: number
  startedAt: number | null
  endedAt: number | null
  result: RunResult | null
}

/** How someone answers an approval. */
export interface ApprovalAnswer {
  decision: 'allow' | 'deny'
  message?: string
  updatedInput?: Record<string, unknown>
  /** Allow this tool for the rest of the session (the CLI's suggestion). */
  always?: boolean
  /** The key that answered. */
  by: string | null
}

import type { PermissionMode } from '../config.js'

/** One run, fully resolved and checked against policy: what the runner executes. */
export interface RunSpec {
  runId: string
  prompt: string
  /** Real path of the directory the CLI runs in. */
  cwd: string
  /** The session this run writes to (new, resumed, or the fork's new id). */
  sessionId: string
  /** `new`: `--session-id`; `resume`: `--resume`; `fork`: `--resume <forkedFrom> --fork-session --session-id`. */
  sessionMode: 'new' | 'resume' | 'fork'
  forkedFrom?: string
  timeoutS: number
  env: Record<string, string>
  model?: string
  systemPrompt?: string
  appendSystemPrompt?: string
  permissionMode: PermissionMode
  allowedTools?: string[]
  disallowedTools?: string[]
  maxTurns?: number
  maxBudgetUsd?: number
  outputSchema?: Record<string, unknown>
  includePartialMessages: boolean
}

/** The kinds of event a run's log holds, in the order clients see them. */
export type RunEventType = 'run' | 'message' | 'text' | 'result'

/**
 * An event of a run as clients receive it: `seq` increases from 1 without gaps; `data` is the
 * JSON text (for `message`, the CLI's line verbatim).
 */
export interface RunEvent {
  seq: number
  type: RunEventType
  data: string
}

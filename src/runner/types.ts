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

/** An event of a run, in the order clients see it; `seq` increases from 1. */
export type RunEvent =
  | { seq: number, type: 'run', data: { run_id: string, session_id: string, working_directory: string } }
  | { seq: number, type: 'message', data: string }
  | { seq: number, type: 'text', data: { text: string } }
  | { seq: number, type: 'result', data: import('../schemas/execute.js').ExecuteResult }

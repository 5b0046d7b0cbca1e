import type { LimitName, ResourceUsage, RunLimits } from './limits.js'
import type { McpServerRequest } from './mcp.js'
/** The permission modes Claude Code accepts for `--permission-mode`. */
export const PERMISSION_MODES = ['default', 'acceptEdits', 'plan', 'dontAsk', 'bypassPermissions'] as const
export type PermissionMode = typeof PERMISSION_MODES[number]

/** Every state of a run; the last five are final. */
export const RUN_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted'] as const
export type RunStatus = typeof RUN_STATUSES[number]

/** Why a run did not succeed. */
export const ERROR_CODES = ['timeout', 'cancelled', 'interrupted', 'api_error', 'not_authenticated', 'max_turns', 'max_budget', 'session_not_found', 'cli_not_found', 'cli_error', 'working_directory_forbidden', 'store_unavailable', 'resource_limit'] as const
export type ErrorCode = typeof ERROR_CODES[number]

/**
 * What a client asks of a run, as the engine reads it (the HTTP schema validates the same shape,
 * snake_case as on the wire, and this is how the request is stored).
 */
export interface RunRequest {
  prompt: string
  working_directory?: string
  session_id?: string
  fork_session?: boolean
  stream?: boolean
  timeout?: number
  env_vars?: Record<string, string>
  model?: string
  system_prompt?: string
  append_system_prompt?: string
  permission_mode?: PermissionMode
  allowed_tools?: string[]
  disallowed_tools?: string[]
  max_turns?: number
  max_budget_usd?: number
  output_schema?: Record<string, unknown>
  include_partial_messages?: boolean
  webhook_url?: string
  approvals?: 'deny' | 'ask'
  approval_timeout?: number
  attachments?: Attachment[]
  /** Functions the client runs itself (OpenAI's `tools`): offered to the agent, each call parked until the client answers. */
  client_tools?: ClientTool[]
  /** MCP servers for the run: the operator's by name, or remote ones inline. */
  mcp_servers?: McpServerRequest[]
  /** Subagents the agent may delegate to (its Agent tool), by name. */
  agents?: Record<string, SubagentDef>
  /** How hard the model thinks. */
  effort?: Effort
  /** The model used when the first is overloaded. */
  fallback_model?: string
}

export const EFFORTS = ['low', 'medium', 'high', 'max'] as const
export type Effort = typeof EFFORTS[number]

/** A subagent a request defines: when to use it, its system prompt, its tools and model. */
export interface SubagentDef { description: string, prompt: string, tools?: string[], model?: string }

/** A function the client runs itself: its name, what it does, its parameters (a JSON Schema). */
export interface ClientTool {
  name: string
  description?: string
  parameters?: Record<string, unknown>
}

/** An image for the model, as sent (base64). */
export interface Attachment {
  type: 'image'
  media_type: 'image/png' | 'image/jpeg' | 'image/gif' | 'image/webp'
  data: string
}

/** One user turn: its text and images. */
export interface UserTurn {
  prompt: string
  attachments?: Attachment[]
}

/** How a run ended: the object `/api/execute` answers with and the `result` event carries. */
export interface RunResult {
  success: boolean
  output: string
  error: string | null
  exit_code: number | null
  execution_time: number
  timestamp: string
  run_id: string
  session_id: string | null
  status: RunStatus
  error_code: ErrorCode | null
  api_error_status: number | null
  num_turns: number | null
  total_cost_usd: number | null
  usage: { input_tokens?: number, output_tokens?: number, cache_creation_input_tokens?: number, cache_read_input_tokens?: number, [k: string]: unknown } | null
  duration_ms: number | null
  permission_denials: Array<Record<string, unknown>>
  structured_output: unknown
  truncated: boolean
  /** With `error_code: resource_limit`: the limit the run's tree hit. */
  limit?: LimitName
  /** What the run's tree used (where the machine could tell). */
  resources?: ResourceUsage
  /** How many files the run added, modified and deleted in its working directory (where recorded). */
  changes?: { files: number, added: number, modified: number, deleted: number }
}

/** One run, fully resolved and checked against policy: what the runner executes. */
export interface RunSpec {
  runId: string
  /** Cluster mode: the HTTP request that submitted it, for the log lines of the instance that runs it. */
  requestId?: string
  /** Cluster mode: the instance it was sent to (where its client waits, for `/api/execute*`). */
  submittedBy?: string
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
  /** Where the run's summary is POSTed when it ends. */
  webhookUrl?: string
  /** With uid isolation: the key whose agent identity the run executes as. */
  identity?: string
  /** `ask`: permission requests are parked and answered over HTTP; `deny` (default): refused. */
  approvals: 'deny' | 'ask'
  /** Seconds an unanswered approval waits before it is denied. */
  approvalTimeoutS: number
  /** Images for the first prompt. */
  attachments?: Attachment[]
  /** What its process tree may hold: the server's limits, narrowed by its key's. */
  limits?: RunLimits
  /** Functions the client runs itself: calls to them are parked until the client answers. */
  clientTools?: ClientTool[]
  /** MCP servers: the operator's by name (resolved where the run executes: no operator secret is stored), and inline ones. */
  mcpServers?: McpServerRequest[]
  agents?: Record<string, SubagentDef>
  effort?: Effort
  fallbackModel?: string
}

/** The kinds of event a run's log holds, in the order clients see them. */
export type RunEventType = 'run' | 'message' | 'text' | 'approval_requested' | 'approval_resolved' | 'user_message' | 'tool_call' | 'result' | 'files_reverted'

/**
 * An event of a run as clients receive it: `seq` increases from 1 without gaps; `data` is the
 * JSON text (for `message`, the CLI's line verbatim).
 */
export interface RunEvent {
  seq: number
  type: RunEventType
  data: string
}

/** Why a run was ended before its CLI finished on its own. */
export type EndReason = { by: 'timeout' } | { by: 'cancel', reason: string }

import { Type, type Static } from '@sinclair/typebox'
import { PERMISSION_MODES } from '../domain/run.js'
import { MEDIA_TYPES } from '../domain/attachments.js'
import { LIMIT_NAMES } from '../domain/limits.js'
import { EFFORTS, ERROR_CODES, RUN_STATUSES, type RunRequest, type RunResult } from '../domain/run.js'
import { MCP_NAME } from '../domain/mcp.js'

/** Limits the request schema takes from the configuration. */
export interface RequestLimits {
  maxPromptChars: number
  maxTimeoutS: number
}

const ENV_NAME = '^[A-Za-z_][A-Za-z0-9_]{0,255}$'
/**
 * No NUL in any text of a request: the operating system cannot pass one in an argument or an
 * environment variable, and the run store cannot keep one (PostgreSQL's text and JSON refuse it),
 * so a prompt with one would run on one store and fail on the other.
 */
export const NO_NUL = '^[^\\u0000]*$'

/** Images for a prompt; checked further (base64, size, format) before anything is accepted. */
export const AttachmentsSchema = Type.Array(Type.Object({
  type: Type.Literal('image'),
  media_type: Type.Union(MEDIA_TYPES.map(m => Type.Literal(m))),
  data: Type.String({ minLength: 1, description: 'The image, base64; at most 5 MiB decoded.' })
}, { additionalProperties: false }), { maxItems: 20, description: 'Images for the prompt (PNG, JPEG, GIF, WebP; each at most 5 MiB decoded), handed to the model as image blocks.' })

/** The body of `POST /api/execute` and `/api/execute/stream`; unknown fields are refused. */
export function executeRequestSchema (limits: RequestLimits) {
  return Type.Object({
    prompt: Type.String({ minLength: 1, maxLength: limits.maxPromptChars, pattern: NO_NUL, description: 'The task for Claude (no NUL character). Sent to the CLI on stdin, never as an argument.' }),
    working_directory: Type.Optional(Type.String({ minLength: 1, description: 'Where the run executes. Must exist and lie inside an allowed root (checked after resolving symlinks). Default: the server\'s `DEFAULT_WORKING_DIR`.' })),
    session_id: Type.Optional(Type.String({ format: 'uuid', description: 'Continue this Claude session; an id not seen before starts a new session with that id.' })),
    fork_session: Type.Optional(Type.Boolean({ description: 'With `session_id`: continue from that session under a new session id.' })),
    stream: Type.Optional(Type.Boolean({ description: 'Must be false on `/api/execute` (use `/api/execute/stream` to stream) and on `POST /api/runs` (follow its `events_url`). Ignored on the stream endpoint.' })),
    timeout: Type.Optional(Type.Integer({ minimum: 1, maximum: limits.maxTimeoutS, description: 'Wall-clock limit in seconds, counted from submission; the run\'s whole process tree is killed at the limit.' })),
    env_vars: Type.Optional(Type.Record(Type.String(), Type.String({ maxLength: 32 * 1024, pattern: NO_NUL }), {
      propertyNames: { pattern: ENV_NAME },
      maxProperties: 64,
      description: 'Extra environment for the run. Names that steer credentials, routing, code loading or the sandbox (`ANTHROPIC_*`, `CLAUDE_*`, `PATH`, `HOME`, `LD_*`, `NODE_*`, `*_PROXY`, …) are refused with 403.'
    })),
    model: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL, description: 'Claude model (`--model`).' })),
    system_prompt: Type.Optional(Type.String({ maxLength: limits.maxPromptChars, pattern: NO_NUL, description: 'Replaces the system prompt. Sent in the CLI\'s initialize message, not as an argument, so it has no argument-size limit.' })),
    append_system_prompt: Type.Optional(Type.String({ maxLength: limits.maxPromptChars, pattern: NO_NUL, description: 'Appended to the default system prompt (sent like `system_prompt`).' })),
    permission_mode: Type.Optional(Type.Union(PERMISSION_MODES.map(m => Type.Literal(m)), { description: 'Claude Code permission mode; must be one the operator allows (403 otherwise).' })),
    allowed_tools: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 1000 }), { maxItems: 200, description: 'Tool rules to allow, e.g. `"Bash(git *)"`.' })),
    disallowed_tools: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 1000 }), { maxItems: 200, description: 'Tool rules to refuse.' })),
    max_turns: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })),
    max_budget_usd: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
    output_schema: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'A JSON Schema; the result then carries `structured_output`.' })),
    include_partial_messages: Type.Optional(Type.Boolean({ description: 'Stream only: add token-level `stream_event` messages and `text` deltas.' })),
    approvals: Type.Optional(Type.Union([Type.Literal('deny'), Type.Literal('ask')], { description: '`deny` (default): a tool call that needs permission is refused, as headless runs always were. `ask`: the run parks the request (event `approval_requested`) and waits for an answer over HTTP (`POST /api/runs/{id}/approvals/{approval_id}`).' })),
    approval_timeout: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400, description: 'Seconds an unanswered approval waits before it is denied (default `APPROVAL_TIMEOUT_S`, 300). The run\'s own `timeout` still bounds the whole run.' })),
    attachments: Type.Optional(AttachmentsSchema),
    mcp_servers: Type.Optional(Type.Array(Type.Union([
      Type.String({ pattern: MCP_NAME, description: 'The name of an MCP server the operator defined (`GET /api/mcp-servers`).' }),
      Type.Object({
        name: Type.String({ pattern: MCP_NAME, description: 'Its tools reach the agent as `mcp__<name>__<tool>`.' }),
        type: Type.Union([Type.Literal('http'), Type.Literal('sse')]),
        url: Type.String({ format: 'uri', pattern: '^https?://', maxLength: 2000, description: 'On a host in the operator\'s `MCP_ALLOWED_HOSTS` (403 otherwise).' }),
        headers: Type.Optional(Type.Record(Type.String(), Type.String({ maxLength: 8192, pattern: NO_NUL }), { maxProperties: 32, description: 'Sent with each request to the server (e.g. `Authorization`); never shown back (stored redacted).' }))
      }, { additionalProperties: false, description: 'A remote MCP server of the client\'s own.' })
    ]), { maxItems: 16, description: 'MCP servers the run may use, beside its own tools; nothing is attached unasked. Their tools follow `allowed_tools`, the permission mode and approvals like any tool.' })),
    agents: Type.Optional(Type.Record(Type.String({ pattern: MCP_NAME }), Type.Object({
      description: Type.String({ minLength: 1, maxLength: 4000, pattern: NO_NUL, description: 'When the agent should delegate to it.' }),
      prompt: Type.String({ minLength: 1, maxLength: limits.maxPromptChars, pattern: NO_NUL, description: 'Its system prompt.' }),
      tools: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 1000 }), { maxItems: 200, description: 'The tools it may use (default: the agent\'s).' })),
      model: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL, description: 'Its model (`inherit`, an alias, or an id).' }))
    }, { additionalProperties: false }), { propertyNames: { pattern: MCP_NAME }, maxProperties: 32, description: 'Subagents the agent may delegate to through its Agent tool, by name.' })),
    effort: Type.Optional(Type.Union(EFFORTS.map(e => Type.Literal(e)), { description: 'How hard the model thinks.' })),
    fallback_model: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL, description: 'The model used when the first one is overloaded.' })),
    webhook_url: Type.Optional(Type.String({ format: 'uri', pattern: '^https?://', maxLength: 2000, description: 'When the run ends, its summary is POSTed here, signed (`X-Signature-256: sha256=HMAC(WEBHOOK_SECRET, body)`; the body carries a `timestamp`), retried with backoff. The host must be in the operator\'s `WEBHOOK_ALLOWED_HOSTS` (403 otherwise).' }))
  }, {
    additionalProperties: false,
    title: 'ExecuteRequest',
    // The one example Swagger UI's "Try it out" fills in: it must work as it is on a fresh server.
    examples: [{ prompt: 'Say hello in one short sentence.' }]
  })
}
export type ExecuteRequest = Static<ReturnType<typeof executeRequestSchema>>
export { RUN_STATUSES }

const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()])

/** What `/api/execute` answers and the stream's `result` event carries. */
export const ExecuteResultSchema = Type.Object({
  success: Type.Boolean({ description: 'The CLI exited 0 and its result is not an error.' }),
  output: Type.String({ description: 'The final result text, capped at `MAX_OUTPUT_BYTES` (see `truncated`).' }),
  error: Nullable(Type.String({ description: 'One human sentence when not successful.' })),
  exit_code: Type.Union([Type.Integer(), Type.Null()], { description: 'The CLI\'s exit code; null when it never started or was killed by a signal.' }),
  execution_time: Type.Number({ description: 'Seconds from submission to the end of the run.' }),
  timestamp: Type.String({ format: 'date-time' }),
  run_id: Type.String(),
  session_id: Nullable(Type.String({ description: 'The Claude session this run wrote to; pass it back to continue.' })),
  status: Type.Union(RUN_STATUSES.map(s => Type.Literal(s))),
  error_code: Type.Union([...ERROR_CODES.map(c => Type.Literal(c)), Type.Null()]),
  api_error_status: Type.Union([Type.Integer(), Type.Null()], { description: 'With `api_error`: the HTTP status the model API answered.' }),
  num_turns: Type.Union([Type.Integer(), Type.Null()]),
  total_cost_usd: Type.Union([Type.Number(), Type.Null()]),
  usage: Type.Union([Type.Object({
    input_tokens: Type.Optional(Type.Integer()),
    output_tokens: Type.Optional(Type.Integer()),
    cache_creation_input_tokens: Type.Optional(Type.Integer()),
    cache_read_input_tokens: Type.Optional(Type.Integer())
  }, { additionalProperties: true }), Type.Null()]),
  duration_ms: Type.Union([Type.Integer(), Type.Null()], { description: 'The CLI\'s own duration.' }),
  permission_denials: Type.Array(Type.Object({}, { additionalProperties: true }), { description: 'Tool uses the permission mode refused.' }),
  structured_output: Type.Union([Type.Unknown(), Type.Null()], { description: 'With `output_schema`: the validated structured result.' }),
  truncated: Type.Boolean({ description: '`output` was cut at `MAX_OUTPUT_BYTES`.' }),
  limit: Type.Optional(Type.Union(LIMIT_NAMES.map(l => Type.Literal(l)), { description: 'With `error_code: resource_limit`: the limit the run\'s process tree hit.' })),
  resources: Type.Optional(Type.Object({
    peak_memory_bytes: Type.Union([Type.Integer(), Type.Null()], { description: 'The most memory the run\'s tree held at once.' }),
    cpu_seconds: Type.Union([Type.Number(), Type.Null()], { description: 'CPU time the run\'s tree used.' })
  }, { description: 'What the run\'s process tree used, where the server holds runs in control groups.' })),
  changes: Type.Optional(Type.Object({
    files: Type.Integer(),
    added: Type.Integer(),
    modified: Type.Integer(),
    deleted: Type.Integer()
  }, { description: 'How many files the run changed in its working directory (where recorded): the list and diff at `/api/runs/{id}/changes`.' }))
}, { $id: 'ExecuteResult', title: 'ExecuteResult' })
export type ExecuteResult = Static<typeof ExecuteResultSchema>

// The wire schemas and the domain's types describe the same objects: a change to one that the
// other does not follow fails the type-check here.
const requestMatchesDomain = (r: ExecuteRequest): RunRequest => r
const resultMatchesDomain = (r: ExecuteResult): RunResult => r
const domainMatchesResult = (r: RunResult): ExecuteResult => r
void requestMatchesDomain
void resultMatchesDomain
void domainMatchesResult

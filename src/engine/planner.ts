import { randomUUID } from 'node:crypto'
import { chownSync, existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Settings } from '../config.js'
import { SessionDirectoryMismatch, SessionForbidden, WorkingDirectoryForbidden, WorkingDirectoryNotWritable } from '../domain/errors.js'
import { handOverDirectory, writableBy, type AgentIdentities, type AgentIdentity } from '../isolation/identities.js'
import { checkAttachments, describeAttachments } from '../domain/attachments.js'
import { checkEnvVars, checkOutputSchema, checkPermissionMode, isInside, resolveWorkingDir } from './policy.js'
import { SessionRegistry } from './sessions.js'
import type { RunRequest, RunSpec } from '../domain/run.js'

/**
 * From a request to a run: policy (permission mode, environment, directory), the session it
 * continues and where that lives, and, with agent identities, whose identity it runs as and where
 * (its own work area by default). Reads; reserves nothing (that is admission's).
 */
export class RunPlanner {
  private readonly registries = new Map<string, SessionRegistry>()

  constructor (
    private readonly settings: Settings,
    /** The sessions of runs without an identity (the server's own Claude config). */
    private readonly sessions: SessionRegistry,
    private readonly identities: AgentIdentities | undefined,
    /** The key that owns a session (admission knows). */
    private readonly ownerOf: (sessionId: string) => string | null | undefined,
    /** The server's own Claude config directory. */
    private readonly serverConfigDir: string
  ) {}

  /**
   * Check a request against policy and resolve its directory and session. Throws the domain's
   * errors (invalid or forbidden directory, env var, permission mode, session elsewhere); starts
   * nothing and reserves nothing.
   */
  async prepare (req: RunRequest, keyName: string | null, anySession: boolean): Promise<RunSpec> {
    const s = this.settings
    const permissionMode = checkPermissionMode(req.permission_mode, s)
    const env = checkEnvVars(req.env_vars)
    checkOutputSchema(req.output_schema)
    const attachments = checkAttachments(req.attachments)
    // A session lives with the identity of the key that created it: resumes run as that identity.
    const owner = req.session_id === undefined ? undefined : this.ownerOf(req.session_id.toLowerCase())
    // Another key's session: refused before anything about it (its directory, its identity) is looked at.
    if (owner !== undefined && owner !== keyName && !anySession) throw new SessionForbidden(`session ${req.session_id ?? ''} belongs to another key`)
    const identity = this.identities?.identityFor(owner ?? keyName)
    let cwd = identity !== undefined && req.working_directory === undefined
      ? this.workAreaOf(identity)
      : await resolveWorkingDir(req.working_directory, s)
    let sessionId: string = randomUUID()
    let sessionMode: RunSpec['sessionMode'] = 'new'
    let forkedFrom: string | undefined
    if (req.session_id !== undefined) {
      const id = req.session_id.toLowerCase()
      const home = await this.sessionsOf(identity).locate(id)
      if (home !== null) {
        if (req.working_directory !== undefined && home !== cwd) {
          throw new SessionDirectoryMismatch(`session ${id} belongs to working_directory ${home}; omit working_directory or name that one`)
        }
        if (!s.allowedRoots.some(root => isInside(root, home))) {
          throw new WorkingDirectoryForbidden(`session ${id} lives in ${home}, which is outside the allowed roots: ${s.allowedRoots.join(', ')}`)
        }
        cwd = home
      }
      if (req.fork_session === true) {
        sessionMode = 'fork'
        forkedFrom = id
      } else {
        // Whether to create or resume is settled when the run starts: an earlier queued run may create it.
        sessionId = id
      }
    }
    if (identity !== undefined && !writableBy(cwd, identity.uid, identity.gid)) {
      // A project the operator made (as root, say: the README's quick start) is the first key's to use it.
      if (req.working_directory === undefined) {
        // The key's own area, made for another uid (a registry reset, a copied tree): the operator's to settle.
        throw new WorkingDirectoryNotWritable(`the key's own work area ${cwd} is not writable by its agent identity (uid ${identity.uid}): make it that uid's (chown -R ${identity.uid}:${identity.gid} ${cwd})`)
      }
      const why = handOverDirectory(cwd, s.defaultWorkingDir, identity.uid, identity.gid)
      if (why !== null) {
        throw new WorkingDirectoryNotWritable(`working_directory ${cwd} is not writable by this key's agent identity (uid ${identity.uid}), and the server does not hand it over (${why}): make it writable by that uid (e.g. chown -R ${identity.uid} ${cwd}), or leave working_directory out to run in the key's own work area`)
      }
    }
    const spec: RunSpec = {
      runId: randomUUID(),
      prompt: req.prompt,
      cwd,
      sessionId,
      sessionMode,
      timeoutS: req.timeout ?? s.defaultTimeoutS,
      env,
      permissionMode,
      includePartialMessages: req.include_partial_messages === true,
      approvals: req.approvals ?? 'deny',
      approvalTimeoutS: req.approval_timeout ?? s.approvalTimeoutS
    }
    if (attachments !== undefined && attachments.length > 0) spec.attachments = attachments
    if (forkedFrom !== undefined) spec.forkedFrom = forkedFrom
    if (req.model !== undefined) spec.model = req.model
    if (req.system_prompt !== undefined) spec.systemPrompt = req.system_prompt
    if (req.append_system_prompt !== undefined) spec.appendSystemPrompt = req.append_system_prompt
    if (req.allowed_tools !== undefined) spec.allowedTools = req.allowed_tools
    if (req.client_tools !== undefined && req.client_tools.length > 0) spec.clientTools = req.client_tools
    if (req.mcp_servers !== undefined && req.mcp_servers.length > 0) spec.mcpServers = req.mcp_servers
    if (req.agents !== undefined && Object.keys(req.agents).length > 0) spec.agents = req.agents
    if (req.effort !== undefined) spec.effort = req.effort
    if (req.fallback_model !== undefined) spec.fallbackModel = req.fallback_model
    if (req.disallowed_tools !== undefined) spec.disallowedTools = req.disallowed_tools
    if (req.max_turns !== undefined) spec.maxTurns = req.max_turns
    if (req.max_budget_usd !== undefined) spec.maxBudgetUsd = req.max_budget_usd
    if (req.output_schema !== undefined) spec.outputSchema = req.output_schema
    if (req.webhook_url !== undefined) spec.webhookUrl = req.webhook_url
    if (identity !== undefined) spec.identity = identity.key
    return spec
  }

  /** The work area of a key's identity: `DEFAULT_WORKING_DIR/<key>`, its own, made on first use. */
  workAreaOf (identity: AgentIdentity): string {
    const dir = join(this.settings.defaultWorkingDir, identity.key)
    if (!existsSync(dir)) {
      mkdirSync(dir, { mode: 0o700 })
      chownSync(dir, identity.uid, identity.gid)
    }
    return dir
  }

  /** Where a run's sessions are: its identity's Claude config directory, or the server's. */
  sessionsOf (identity: AgentIdentity | undefined): SessionRegistry {
    if (identity === undefined) return this.sessions
    let registry = this.registries.get(identity.key)
    if (registry === undefined) {
      registry = new SessionRegistry(identity.configDir)
      this.registries.set(identity.key, registry)
    }
    return registry
  }

  /** Where the sessions of a key are kept: its identity's config directory, or the server's. */
  placeOf (owner: string | null): { configDir: string, owner?: { uid: number, gid: number } } {
    if (this.identities === undefined) return { configDir: this.serverConfigDir }
    const identity = this.identities.identityFor(owner)
    return { configDir: identity.configDir, owner: { uid: identity.uid, gid: identity.gid } }
  }

  /** The agent identity a run executes as, from the key its spec names (none without identities). */
  identityOf (spec: RunSpec): AgentIdentity | undefined {
    return this.identities === undefined || spec.identity === undefined ? undefined : this.identities.identityFor(spec.identity)
  }
}

/** A request as stored: everything but the values of its env vars. */
export function storedRequest (req: RunRequest): RunRequest {
  const copy: RunRequest = { ...req }
  if (req.env_vars !== undefined) copy.env_vars = Object.fromEntries(Object.keys(req.env_vars).map(k => [k, '[redacted]']))
  // An inline MCP server's headers carry its credentials: their names are kept, never their values.
  if (req.mcp_servers !== undefined) {
    copy.mcp_servers = req.mcp_servers.map(m => typeof m === 'string' || m.headers === undefined ? m : { ...m, headers: Object.fromEntries(Object.keys(m.headers).map(k => [k, '[redacted]'])) })
  }
  // Images are kept in the spec (to queue the run again after a restart), not in the request shown.
  if (req.attachments !== undefined) (copy as unknown as Record<string, unknown>).attachments = describeAttachments(req.attachments)
  return copy
}

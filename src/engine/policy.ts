import { realpath, stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import { isInside, type Settings } from '../config.js'
import { type PermissionMode } from '../domain/run.js'
import type { McpServerDef, McpServerRequest } from '../domain/mcp.js'
import { EnvVarForbidden, InvalidRequest, McpServerForbidden, PermissionModeForbidden, WebhookHostForbidden, WorkingDirectoryForbidden, WorkingDirectoryNotFound, withProblem } from '../domain/errors.js'
import { refusedEnvName } from './child-env.js'

export { isInside }

/**
 * Resolve a requested working directory to its real path and check it lies inside an allowed
 * root. Resolving first means neither `..` nor a symlink can lead outside.
 */
export async function resolveWorkingDir (requested: string | undefined, settings: Settings): Promise<string> {
  if (requested === undefined) return settings.defaultWorkingDir
  const absolute = resolve(settings.defaultWorkingDir, requested)
  const outside = () => new WorkingDirectoryForbidden(`working_directory ${requested} is outside the allowed roots: ${settings.allowedRoots.join(', ')}`)
  let real: string
  try {
    real = await realpath(absolute)
  } catch {
    // Say "outside" before "missing", so a 400 never tells what exists outside the roots.
    if (!settings.allowedRoots.some(root => isInside(root, absolute))) throw outside()
    throw withProblem(new WorkingDirectoryNotFound(`working_directory ${requested} does not exist`), { problem: { errors: [{ path: '/working_directory', message: 'does not exist' }] } })
  }
  if (!settings.allowedRoots.some(root => isInside(root, real))) throw outside()
  if (!(await stat(real)).isDirectory()) {
    throw withProblem(new WorkingDirectoryNotFound(`working_directory ${requested} is not a directory`), { problem: { errors: [{ path: '/working_directory', message: 'is not a directory' }] } })
  }
  return real
}

/** All of a run's extra environment together: a process's environment and arguments share ~2 MiB. */
export const MAX_ENV_BYTES = 256 * 1024
/** The JSON Schema of `output_schema` travels as one argument (≤ 128 KiB on Linux). */
export const MAX_OUTPUT_SCHEMA_BYTES = 64 * 1024
const MAX_OUTPUT_SCHEMA_DEPTH = 64

/** Refuse (403) any request variable that could steer credentials, routing, loading or the sandbox. */
export function checkEnvVars (vars: Record<string, string> | undefined): Record<string, string> {
  if (vars === undefined) return {}
  const bytes = Object.entries(vars).reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v) + 2, 0)
  if (bytes > MAX_ENV_BYTES) {
    throw withProblem(new InvalidRequest(`env_vars hold ${bytes} bytes in all; at most ${MAX_ENV_BYTES} fit a process's environment`), { problem: { errors: [{ path: '/env_vars', message: `more than ${MAX_ENV_BYTES} bytes in all` }] } })
  }
  const refused = Object.keys(vars).map(name => ({ name, why: refusedEnvName(name) })).filter(r => r.why !== null)
  if (refused.length > 0) {
    throw withProblem(new EnvVarForbidden(`env_vars not allowed: ${refused.map(r => r.why).join('; ')}`), {
      problem: { errors: refused.map(r => ({ path: `/env_vars/${r.name}`, message: r.why })) }
    })
  }
  return vars
}

/** The permission mode for a run: the request's, if the operator allows it (403 otherwise). */
export function checkPermissionMode (mode: PermissionMode | undefined, settings: Settings): PermissionMode {
  const chosen = mode ?? settings.defaultPermissionMode
  if (!settings.allowedPermissionModes.includes(chosen)) {
    throw new PermissionModeForbidden(`permission_mode ${chosen} is not allowed; allowed: ${settings.allowedPermissionModes.join(', ')}`)
  }
  return chosen
}

/**
 * A queued run's directory, checked again when it starts: its real path now, if that still lies
 * inside an allowed root and is a directory; else why not. The run then executes in this path.
 */
export async function recheckWorkingDir (cwd: string, settings: Settings): Promise<string | { refused: string }> {
  let real: string
  try {
    real = await realpath(cwd)
  } catch {
    return { refused: `working_directory ${cwd} no longer exists` }
  }
  if (!settings.allowedRoots.some(root => isInside(root, real))) {
    return { refused: `working_directory ${cwd} now resolves to ${real}, outside the allowed roots: ${settings.allowedRoots.join(', ')}` }
  }
  if (!(await stat(real)).isDirectory()) return { refused: `working_directory ${cwd} is no longer a directory` }
  return real
}

/**
 * A run's `webhook_url` must be a valid URL without credentials, to a host the operator allows:
 * `host:port` entries allow that port, bare `host` entries only the scheme's default port.
 */
export function checkWebhookUrl (webhookUrl: string | undefined, allowedHosts: readonly string[]): void {
  if (webhookUrl === undefined) return
  let url: URL
  try {
    url = new URL(webhookUrl)
  } catch {
    throw withProblem(new InvalidRequest('webhook_url is not a valid URL'), { problem: { errors: [{ path: '/webhook_url', message: 'is not a valid URL' }] } })
  }
  const host = url.host.toLowerCase()
  const hostname = url.hostname.toLowerCase()
  // An entry with a port allows that port; an entry without one, only the scheme's default port.
  const allowed = allowedHosts.includes(host) || (url.port === '' && allowedHosts.includes(hostname))
  if (!allowed) {
    throw withProblem(new WebhookHostForbidden(allowedHosts.length === 0
      ? 'webhooks are not enabled on this server (WEBHOOK_ALLOWED_HOSTS is empty)'
      : `webhook_url host ${host} is not allowed; allowed: ${allowedHosts.join(', ')}`), {
      problem: { errors: [{ path: '/webhook_url', message: 'host not allowed' }] }
    })
  }
  if (url.username !== '' || url.password !== '') {
    throw withProblem(new InvalidRequest('webhook_url must not carry credentials (user:password@); the signature authenticates the server'), { problem: { errors: [{ path: '/webhook_url', message: 'has credentials' }] } })
  }
}

/**
 * The MCP servers a request names: the operator's by name (400 when unknown, 403 when the key may
 * not use it), or inline remote ones on a host the operator allows (`MCP_ALLOWED_HOSTS`, checked
 * as webhook hosts are: normalised, port-aware, no credentials in the URL). Names are unique.
 */
export function checkMcpServers (requested: readonly McpServerRequest[] | undefined, operator: Readonly<Record<string, McpServerDef>>, allowedHosts: readonly string[], keyMay: readonly string[] | undefined): void {
  if (requested === undefined) return
  const seen = new Set<string>()
  requested.forEach((r, i) => {
    const name = typeof r === 'string' ? r : r.name
    const path = typeof r === 'string' ? `/mcp_servers/${i}` : `/mcp_servers/${i}/name`
    if (seen.has(name)) throw withProblem(new InvalidRequest(`mcp_servers: ${name} is named twice`), { problem: { errors: [{ path, message: 'named twice' }] } })
    seen.add(name)
    if (name === 'client') throw withProblem(new InvalidRequest('mcp_servers: the name client is the server\'s own (client-side functions)'), { problem: { errors: [{ path, message: 'reserved name' }] } })
    if (typeof r === 'string') {
      const known = Object.keys(operator)
      if (operator[r] === undefined) throw withProblem(new InvalidRequest(`mcp_servers: no MCP server ${r} on this server${known.length > 0 ? ` (there are: ${known.join(', ')})` : ' (MCP_CONFIG_FILE names none)'}`), { problem: { errors: [{ path, message: 'unknown MCP server' }] } })
      if (keyMay !== undefined && !keyMay.includes(r)) throw withProblem(new McpServerForbidden(`this key may not use the MCP server ${r}${keyMay.length > 0 ? ` (it may use: ${keyMay.join(', ')})` : ' (it may use none)'}`), { problem: { errors: [{ path, message: 'not allowed for this key' }] } })
      return
    }
    if (operator[name] !== undefined) throw withProblem(new InvalidRequest(`mcp_servers: ${name} is the name of one of the operator's servers; give yours another`), { problem: { errors: [{ path, message: 'name taken' }] } })
    let url: URL
    try {
      url = new URL(r.url)
    } catch {
      throw withProblem(new InvalidRequest(`mcp_servers[${i}].url is not a valid URL`), { problem: { errors: [{ path: `/mcp_servers/${i}/url`, message: 'is not a valid URL' }] } })
    }
    if (url.username !== '' || url.password !== '') throw withProblem(new InvalidRequest(`mcp_servers[${i}].url must not carry credentials (user:password@): put them in headers`), { problem: { errors: [{ path: `/mcp_servers/${i}/url`, message: 'has credentials' }] } })
    const host = url.host.toLowerCase()
    const allowed = allowedHosts.includes(host) || (url.port === '' && allowedHosts.includes(url.hostname.toLowerCase()))
    if (!allowed) {
      throw withProblem(new McpServerForbidden(allowedHosts.length === 0
        ? 'inline MCP servers are not enabled on this server (MCP_ALLOWED_HOSTS is empty)'
        : `mcp_servers[${i}]: host ${host} is not allowed; allowed: ${allowedHosts.join(', ')}`), { problem: { errors: [{ path: `/mcp_servers/${i}/url`, message: 'host not allowed' }] } })
    }
  })
}

/**
 * `output_schema` must fit the CLI's command line: at most 64 nesting levels (checked without
 * recursion) and 64 KiB of JSON. Refused (400) here rather than failing at spawn.
 */
export function checkOutputSchema (schema: Record<string, unknown> | undefined): void {
  if (schema === undefined) return
  const refuse = (message: string): never => {
    throw withProblem(new InvalidRequest(`output_schema ${message}`), { problem: { errors: [{ path: '/output_schema', message }] } })
  }
  const stack: Array<{ v: unknown, depth: number }> = [{ v: schema, depth: 1 }]
  while (stack.length > 0) {
    const { v, depth } = stack.pop()!
    if (depth > MAX_OUTPUT_SCHEMA_DEPTH) refuse(`is nested more than ${MAX_OUTPUT_SCHEMA_DEPTH} levels deep`)
    if (v !== null && typeof v === 'object') for (const child of Object.values(v)) stack.push({ v: child, depth: depth + 1 })
  }
  if (Buffer.byteLength(JSON.stringify(schema)) > MAX_OUTPUT_SCHEMA_BYTES) refuse(`is larger than ${MAX_OUTPUT_SCHEMA_BYTES} bytes of JSON`)
}

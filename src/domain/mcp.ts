// MCP servers for runs: the operator's, by name (`MCP_CONFIG_FILE`, in the `.mcp.json` format the
// CLI itself reads), and remote ones a request gives inline. Nothing is attached unasked.

/** An MCP server the operator defined: a process of the run (stdio), or a remote one. */
export type McpServerDef =
  | { type: 'stdio', command: string, args: string[], env: Record<string, string> }
  | { type: 'http' | 'sse', url: string, headers: Record<string, string> }

/** A remote MCP server a request gives inline (its host must be one the operator allows). */
export interface InlineMcpServer { name: string, type: 'http' | 'sse', url: string, headers?: Record<string, string> }

/** What a request names: an operator's server by name, or an inline remote one. */
export type McpServerRequest = string | InlineMcpServer

/** A server name: what its tools are called by (`mcp__<name>__<tool>`). */
export const MCP_NAME = '^[A-Za-z0-9_-]{1,64}$'

const isStrings = (v: unknown): v is Record<string, string> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every(x => typeof x === 'string')

/**
 * The servers of an `.mcp.json` document (`{ "mcpServers": { name: { command, args, env } | { type:
 * "http" | "sse", url, headers } } }`); throws a sentence naming what is wrong and where.
 */
export function parseMcpConfig (doc: unknown): Record<string, McpServerDef> {
  const servers = (doc as { mcpServers?: unknown } | null)?.mcpServers
  if (typeof servers !== 'object' || servers === null || Array.isArray(servers)) throw new Error('/mcpServers: an object of servers by name is required')
  const out: Record<string, McpServerDef> = {}
  for (const [name, raw] of Object.entries(servers as Record<string, unknown>)) {
    const at = `/mcpServers/${name}`
    if (!new RegExp(MCP_NAME).test(name)) throw new Error(`${at}: a name of letters, digits, _ or - (at most 64) is required`)
    const s = raw as Record<string, unknown> | null
    if (typeof s !== 'object' || s === null) throw new Error(`${at}: a server definition (an object) is required`)
    const type = s.type ?? 'stdio'
    if (type === 'stdio') {
      if (typeof s.command !== 'string' || s.command === '') throw new Error(`${at}/command: a command is required`)
      if (s.args !== undefined && !(Array.isArray(s.args) && s.args.every(a => typeof a === 'string'))) throw new Error(`${at}/args: a list of strings is required`)
      if (s.env !== undefined && !isStrings(s.env)) throw new Error(`${at}/env: an object of strings is required`)
      out[name] = { type: 'stdio', command: s.command, args: (s.args as string[] | undefined) ?? [], env: (s.env as Record<string, string> | undefined) ?? {} }
    } else if (type === 'http' || type === 'sse') {
      if (typeof s.url !== 'string' || !/^https?:\/\//.test(s.url)) throw new Error(`${at}/url: an http(s) URL is required`)
      if (s.headers !== undefined && !isStrings(s.headers)) throw new Error(`${at}/headers: an object of strings is required`)
      out[name] = { type, url: s.url, headers: (s.headers as Record<string, string> | undefined) ?? {} }
    } else throw new Error(`${at}/type: stdio, http or sse (got ${JSON.stringify(type)})`)
  }
  return out
}

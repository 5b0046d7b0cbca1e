import type { McpServerConfig, Options } from '@anthropic-ai/claude-agent-sdk'
import type { McpServerDef } from '../domain/mcp.js'
import type { RunSpec } from '../domain/run.js'

/** Every setting source the CLI knows: what an empty `CLAUDE_SETTING_SOURCES` means. */
const ALL_SOURCES = ['user', 'project', 'local'] as const
type SettingSource = typeof ALL_SOURCES[number]

/** `CLAUDE_SETTING_SOURCES` as the SDK takes it: comma-separated, empty for all of them. */
export function settingSourcesOf (value: string): SettingSource[] {
  const listed = value.split(',').map(s => s.trim()).filter(s => s !== '')
  return listed.length === 0 ? [...ALL_SOURCES] : listed.filter((s): s is SettingSource => (ALL_SOURCES as readonly string[]).includes(s))
}

/**
 * The Agent SDK's options for a run: what the CLI is told through its flags. The prompt is not
 * among them: it goes on stdin as the first user message, so it cannot be read as a flag, leak
 * through `ps`, or hit the argument size limit. The process itself (`spawnClaudeCodeProcess`),
 * its environment and its executable are the executor's to add.
 */
export function sdkOptions (spec: RunSpec, settingSources: string): Options {
  const options: Options = {
    cwd: spec.cwd,
    permissionMode: spec.permissionMode,
    settingSources: settingSourcesOf(settingSources),
    // Never start MCP servers a work directory's .mcp.json names.
    strictMcpConfig: true,
    includePartialMessages: spec.includePartialMessages
  }
  if (spec.permissionMode === 'bypassPermissions') options.allowDangerouslySkipPermissions = true
  switch (spec.sessionMode) {
    case 'new':
      options.sessionId = spec.sessionId
      break
    case 'resume':
      options.resume = spec.sessionId
      break
    case 'fork':
      options.resume = spec.forkedFrom!
      options.forkSession = true
      options.sessionId = spec.sessionId
      break
  }
  if (spec.model !== undefined) options.model = spec.model
  if (spec.systemPrompt !== undefined) options.systemPrompt = spec.systemPrompt
  else if (spec.appendSystemPrompt !== undefined) options.systemPrompt = { type: 'preset', preset: 'claude_code', append: spec.appendSystemPrompt }
  if (spec.allowedTools !== undefined) options.allowedTools = spec.allowedTools
  if (spec.disallowedTools !== undefined) options.disallowedTools = spec.disallowedTools
  if (spec.maxTurns !== undefined) options.maxTurns = spec.maxTurns
  if (spec.maxBudgetUsd !== undefined) options.maxBudgetUsd = spec.maxBudgetUsd
  if (spec.outputSchema !== undefined) options.outputFormat = { type: 'json_schema', schema: spec.outputSchema }
  if (spec.agents !== undefined) options.agents = spec.agents
  if (spec.effort !== undefined) options.effort = spec.effort
  if (spec.fallbackModel !== undefined) options.fallbackModel = spec.fallbackModel
  return options
}

/**
 * The MCP servers a run named, as the SDK takes them: the operator's resolved by name (their
 * commands run as processes of the run: inside its sandbox, identity and limits, ending with it),
 * and inline remote ones. Each loads its tools before the first turn (`alwaysLoad`): they are
 * offered to the model directly rather than behind the CLI's tool search, so a run that names a
 * server can use it from its first turn, and `allowed_tools` names its tools as they are.
 */
export function mcpServersOf (spec: RunSpec, operator: Readonly<Record<string, McpServerDef>>): Record<string, McpServerConfig> {
  const out: Record<string, McpServerConfig> = {}
  for (const m of spec.mcpServers ?? []) {
    if (typeof m !== 'string') {
      out[m.name] = { type: m.type, url: m.url, ...(m.headers !== undefined ? { headers: m.headers } : {}), alwaysLoad: true }
      continue
    }
    const def = operator[m]
    // Named at submission, gone from this server's file since (or another instance's): left out, the run goes on.
    if (def === undefined) continue
    out[m] = def.type === 'stdio'
      ? { type: 'stdio', command: def.command, args: def.args, env: def.env, alwaysLoad: true }
      : { type: def.type, url: def.url, headers: def.headers, alwaysLoad: true }
  }
  return out
}

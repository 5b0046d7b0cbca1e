import type { RunSpec } from './types.js'

/**
 * The CLI's arguments for a run. The prompt is not among them: it goes on stdin, so it cannot be
 * read as a flag, leak through `ps`, or hit the argument size limit. Every value is passed as
 * `--flag=value`, so a value starting with `-` is never taken for an option.
 */
export function buildCliArgs (spec: RunSpec, settingSources: string): string[] {
  const args = [
    '-p',
    '--output-format=stream-json',
    '--verbose',
    // Never start MCP servers a work directory's .mcp.json names.
    '--strict-mcp-config',
    `--permission-mode=${spec.permissionMode}`
  ]
  if (settingSources !== '') args.push(`--setting-sources=${settingSources}`)
  switch (spec.sessionMode) {
    case 'new':
      args.push(`--session-id=${spec.sessionId}`)
      break
    case 'resume':
      args.push(`--resume=${spec.sessionId}`)
      break
    case 'fork':
      args.push(`--resume=${spec.forkedFrom!}`, '--fork-session', `--session-id=${spec.sessionId}`)
      break
  }
  if (spec.model !== undefined) args.push(`--model=${spec.model}`)
  if (spec.systemPrompt !== undefined) args.push(`--system-prompt=${spec.systemPrompt}`)
  if (spec.appendSystemPrompt !== undefined) args.push(`--append-system-prompt=${spec.appendSystemPrompt}`)
  for (const rule of spec.allowedTools ?? []) args.push(`--allowedTools=${rule}`)
  for (const rule of spec.disallowedTools ?? []) args.push(`--disallowedTools=${rule}`)
  if (spec.maxTurns !== undefined) args.push(`--max-turns=${spec.maxTurns}`)
  if (spec.maxBudgetUsd !== undefined) args.push(`--max-budget-usd=${spec.maxBudgetUsd}`)
  if (spec.outputSchema !== undefined) args.push(`--json-schema=${JSON.stringify(spec.outputSchema)}`)
  if (spec.includePartialMessages) args.push('--include-partial-messages')
  return args
}

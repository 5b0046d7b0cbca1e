import { test } from 'tap'
import { mcpServersOf, sdkOptions, settingSourcesOf } from '../../src/engine/cli-options.js'
import type { RunSpec } from '../../src/domain/run.js'

const NEW_ID = 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee'
const OLD_ID = '11111111-2222-4333-8444-555555555555'

function spec (over: Partial<RunSpec> = {}): RunSpec {
  return {
    runId: 'run-1',
    approvals: 'deny',
    approvalTimeoutS: 300,
    prompt: '--dangerously-skip-permissions please list the files',
    cwd: '/srv/work',
    sessionId: NEW_ID,
    sessionMode: 'new',
    timeoutS: 300,
    env: {},
    permissionMode: 'acceptEdits',
    includePartialMessages: false,
    ...over
  }
}

test('the prompt is not an option: it goes on stdin as the first user message', async t => {
  const text = JSON.stringify(sdkOptions(spec({ systemPrompt: 'sys', model: 'm' }), 'user'))
  t.notOk(text.includes('please list the files'))
})

test('the fixed options: cwd, strict MCP, user settings, permission mode, no partial messages', async t => {
  const o = sdkOptions(spec(), 'user')
  t.equal(o.cwd, '/srv/work')
  t.equal(o.strictMcpConfig, true, 'a work directory\'s .mcp.json starts nothing')
  t.same(o.settingSources, ['user'], 'project settings (and their hooks) are off by default')
  t.equal(o.permissionMode, 'acceptEdits')
  t.equal(o.includePartialMessages, false)
  t.equal(o.allowDangerouslySkipPermissions, undefined)
  t.equal(sdkOptions(spec({ permissionMode: 'bypassPermissions' }), 'user').allowDangerouslySkipPermissions, true, 'bypass only when the operator allowed the mode')
})

test('CLAUDE_SETTING_SOURCES: a list, or empty for every source', async t => {
  t.same(settingSourcesOf('user,project'), ['user', 'project'])
  t.same(settingSourcesOf(' user , local '), ['user', 'local'])
  t.same(settingSourcesOf(''), ['user', 'project', 'local'])
})

test('sessions: new with its id, resume, fork to a new id', async t => {
  const n = sdkOptions(spec(), 'user')
  t.equal(n.sessionId, NEW_ID)
  t.equal(n.resume, undefined)
  const r = sdkOptions(spec({ sessionMode: 'resume', sessionId: OLD_ID }), 'user')
  t.equal(r.resume, OLD_ID)
  t.equal(r.sessionId, undefined)
  const f = sdkOptions(spec({ sessionMode: 'fork', forkedFrom: OLD_ID }), 'user')
  t.equal(f.resume, OLD_ID)
  t.equal(f.forkSession, true)
  t.equal(f.sessionId, NEW_ID)
})

test('request options map one to one', async t => {
  const o = sdkOptions(spec({
    model: 'claude-x',
    appendSystemPrompt: 'be brief',
    allowedTools: ['Bash(git *)'],
    disallowedTools: ['Write'],
    maxTurns: 3,
    maxBudgetUsd: 0.5,
    outputSchema: { type: 'object' },
    includePartialMessages: true
  }), 'user')
  t.equal(o.model, 'claude-x')
  t.same(o.systemPrompt, { type: 'preset', preset: 'claude_code', append: 'be brief' }, 'appended to the Claude Code prompt')
  t.same(o.allowedTools, ['Bash(git *)'])
  t.same(o.disallowedTools, ['Write'])
  t.equal(o.maxTurns, 3)
  t.equal(o.maxBudgetUsd, 0.5)
  t.same(o.outputFormat, { type: 'json_schema', schema: { type: 'object' } })
  t.equal(o.includePartialMessages, true)
  t.equal(sdkOptions(spec({ systemPrompt: 'only this' }), 'user').systemPrompt, 'only this', 'a system prompt replaces the default')
})

test('tools for runs: subagents, effort and fallback model as the SDK takes them; MCP servers resolved by name, inline ones as given', async t => {
  const o = sdkOptions(spec({ agents: { reviewer: { description: 'd', prompt: 'p', tools: ['Read'] } }, effort: 'high', fallbackModel: 'sonnet' }), 'user')
  t.same(o.agents, { reviewer: { description: 'd', prompt: 'p', tools: ['Read'] } })
  t.equal(o.effort, 'high')
  t.equal(o.fallbackModel, 'sonnet')
  t.equal(sdkOptions(spec(), 'user').mcpServers, undefined, 'nothing attached unasked')
  const operator = {
    calc: { type: 'stdio' as const, command: '/usr/bin/calc', args: ['--x'], env: { A: '1' } },
    remote: { type: 'http' as const, url: 'https://mcp.example/mcp', headers: { Authorization: 'Bearer s' } },
    unused: { type: 'stdio' as const, command: '/bin/false', args: [], env: {} }
  }
  const servers = mcpServersOf(spec({ mcpServers: ['calc', 'remote', { name: 'mine', type: 'sse', url: 'https://mine.example/sse', headers: { K: 'v' } }, 'gone'] }), operator)
  t.same(servers, {
    calc: { type: 'stdio', command: '/usr/bin/calc', args: ['--x'], env: { A: '1' }, alwaysLoad: true },
    remote: { type: 'http', url: 'https://mcp.example/mcp', headers: { Authorization: 'Bearer s' }, alwaysLoad: true },
    mine: { type: 'sse', url: 'https://mine.example/sse', headers: { K: 'v' }, alwaysLoad: true }
  }, 'only those named; one gone from the file since is left out')
})

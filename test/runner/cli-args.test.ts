import { test } from 'tap'
import { buildCliArgs } from '../../src/runner/cli-args.js'
import type { RunSpec } from '../../src/runner/types.js'

const NEW_ID = 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee'
const OLD_ID = '11111111-2222-4333-8444-555555555555'

function spec (over: Partial<RunSpec> = {}): RunSpec {
  return {
    runId: 'run-1',
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

test('the prompt never appears in argv', async t => {
  const s = spec({ systemPrompt: 'sys', model: 'm' })
  const args = buildCliArgs(s, 'user')
  t.notOk(args.some(a => a.includes('please list the files')), 'not as an argument or inside one')
  t.notOk(args.includes('--dangerously-skip-permissions'), 'a prompt that looks like a flag is not one')
})

test('the fixed flags: print mode, stream-json, verbose, strict MCP, user settings, permission mode', async t => {
  const args = buildCliArgs(spec(), 'user')
  for (const flag of ['-p', '--output-format=stream-json', '--verbose', '--strict-mcp-config', '--setting-sources=user', '--permission-mode=acceptEdits']) {
    t.ok(args.includes(flag), `${flag} is passed`)
  }
  t.notOk(args.includes('--include-partial-messages'))
  t.notOk(args.some(a => a.startsWith('--model')), 'no model unless asked')
})

test('an empty CLAUDE_SETTING_SOURCES leaves the flag out', async t => {
  t.notOk(buildCliArgs(spec(), '').some(a => a.startsWith('--setting-sources')))
})

test('session modes map to --session-id, --resume, and --resume --fork-session --session-id', async t => {
  const created = buildCliArgs(spec({ sessionMode: 'new' }), 'user')
  t.ok(created.includes(`--session-id=${NEW_ID}`))
  t.notOk(created.some(a => a.startsWith('--resume') || a === '--fork-session'))

  const resumed = buildCliArgs(spec({ sessionMode: 'resume', sessionId: OLD_ID }), 'user')
  t.ok(resumed.includes(`--resume=${OLD_ID}`))
  t.notOk(resumed.some(a => a.startsWith('--session-id') || a === '--fork-session'))

  const forked = buildCliArgs(spec({ sessionMode: 'fork', sessionId: NEW_ID, forkedFrom: OLD_ID }), 'user')
  const at = forked.indexOf(`--resume=${OLD_ID}`)
  t.not(at, -1, 'resumes the old session')
  t.same(forked.slice(at, at + 3), [`--resume=${OLD_ID}`, '--fork-session', `--session-id=${NEW_ID}`])
})

test('values starting with "-" stay inside one --flag=value argument', async t => {
  const args = buildCliArgs(spec({ model: '--evil', systemPrompt: '-p be bad', appendSystemPrompt: '--verbose no' }), 'user')
  t.ok(args.includes('--model=--evil'))
  t.ok(args.includes('--system-prompt=-p be bad'))
  t.ok(args.includes('--append-system-prompt=--verbose no'))
  t.notOk(args.includes('--evil'))
  t.equal(args.filter(a => a === '-p').length, 1, 'only the real -p')
})

test('allowed and disallowed tools are repeated, one rule per argument', async t => {
  const args = buildCliArgs(spec({ allowedTools: ['Bash(git *)', 'Read'], disallowedTools: ['Write', 'Bash(rm -rf *)'] }), 'user')
  t.same(args.filter(a => a.startsWith('--allowedTools=')), ['--allowedTools=Bash(git *)', '--allowedTools=Read'])
  t.same(args.filter(a => a.startsWith('--disallowedTools=')), ['--disallowedTools=Write', '--disallowedTools=Bash(rm -rf *)'])
})

test('limits, output schema and partial messages', async t => {
  const schema = { type: 'object', properties: { answer: { type: 'string', description: 'a, b -- c' } }, required: ['answer'] }
  const args = buildCliArgs(spec({ maxTurns: 3, maxBudgetUsd: 0.5, outputSchema: schema, includePartialMessages: true }), 'user')
  t.ok(args.includes('--max-turns=3'))
  t.ok(args.includes('--max-budget-usd=0.5'))
  t.ok(args.includes('--include-partial-messages'))
  const js = args.filter(a => a.startsWith('--json-schema='))
  t.equal(js.length, 1)
  t.same(JSON.parse(js[0]!.slice('--json-schema='.length)), schema, 'the schema round-trips as JSON')
})

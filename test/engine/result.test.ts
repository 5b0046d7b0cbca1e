import { test } from 'tap'
import { capUtf8, toRunResult, type CliResultLine, type RunOutcome } from '../../src/engine/result.js'

const SESSION = '11111111-2222-4333-8444-555555555555'

/** A finished run; each test changes what it is about. */
function outcome (over: Partial<RunOutcome> = {}): RunOutcome {
  return {
    runId: 'run-1',
    sessionId: SESSION,
    timeoutS: 300,
    exitCode: 0,
    stderrTail: '',
    oversizeLines: 0,
    startedAt: 1_700_000_000_000,
    endedAt: 1_700_000_002_340,
    maxOutputBytes: 1024 * 1024,
    ...over
  }
}

function line (over: Partial<CliResultLine> = {}): CliResultLine {
  return {
    type: 'result',
    subtype: 'success',
    is_error: false,
    api_error_status: null,
    duration_ms: 145,
    num_turns: 2,
    result: 'Done!',
    session_id: SESSION,
    total_cost_usd: 0.0006,
    usage: { input_tokens: 20, output_tokens: 22 },
    permission_denials: [],
    ...over
  }
}

test('a clean run succeeds and carries the CLI\'s figures', async t => {
  const r = toRunResult(outcome({ resultLine: line() }))
  t.match(r, {
    success: true,
    output: 'Done!',
    error: null,
    exit_code: 0,
    status: 'succeeded',
    error_code: null,
    api_error_status: null,
    run_id: 'run-1',
    session_id: SESSION,
    num_turns: 2,
    total_cost_usd: 0.0006,
    usage: { input_tokens: 20, output_tokens: 22 },
    duration_ms: 145,
    permission_denials: [],
    structured_output: null,
    truncated: false
  })
  t.equal(r.execution_time, 2.34)
  t.equal(r.timestamp, new Date(1_700_000_002_340).toISOString())
})

test('an API failure reported as subtype success with is_error true is a failed api_error', async t => {
  const r = toRunResult(outcome({
    exitCode: 1,
    resultLine: line({ is_error: true, api_error_status: 529, result: 'API Error: 529 {"type":"error","error":{"type":"overloaded_error"}}' })
  }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
  t.equal(r.error_code, 'api_error')
  t.equal(r.api_error_status, 529)
  t.match(r.error, /API Error: 529/)
  t.equal(r.exit_code, 1)
})

test('"Not logged in" is not_authenticated and says how to fix it', async t => {
  const r = toRunResult(outcome({ exitCode: 1, resultLine: line({ is_error: true, result: 'Not logged in · Please run /login' }) }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
  t.equal(r.error_code, 'not_authenticated')
  t.equal(r.api_error_status, null)
  t.match(r.error, /Not logged in/)
  t.match(r.error, /ANTHROPIC_API_KEY/)
})

test('error_max_turns is max_turns', async t => {
  const r = toRunResult(outcome({ exitCode: 1, resultLine: line({ subtype: 'error_max_turns', is_error: true, result: undefined, errors: ['Reached maximum number of turns (1)'] }) }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
  t.equal(r.error_code, 'max_turns')
  t.match(r.error, /maximum number of turns/)
  t.equal(r.output, '')
})

test('error_max_budget_usd is max_budget', async t => {
  const r = toRunResult(outcome({ exitCode: 1, resultLine: line({ subtype: 'error_max_budget_usd', is_error: true, result: undefined, errors: [] }) }))
  t.equal(r.error_code, 'max_budget')
  t.equal(r.status, 'failed')
  t.type(r.error, 'string')
  t.not(r.error, '')
})

test('resuming an unknown session is session_not_found', async t => {
  const r = toRunResult(outcome({
    exitCode: 1,
    resultLine: line({ subtype: 'error_during_execution', is_error: true, result: undefined, errors: ['No conversation found with session ID: x'] })
  }))
  t.equal(r.success, false)
  t.equal(r.error_code, 'session_not_found')
  t.match(r.error, /No conversation found with session ID: x/)
})

test('other error_during_execution is cli_error', async t => {
  const r = toRunResult(outcome({
    exitCode: 1,
    resultLine: line({ subtype: 'error_during_execution', is_error: true, result: undefined, errors: ['tool crashed'] })
  }))
  t.equal(r.error_code, 'cli_error')
  t.match(r.error, /tool crashed/)
})

test('no result line and exit 143 is cli_error with the stderr tail', async t => {
  const r = toRunResult(outcome({ exitCode: 143, stderrTail: 'some noise\nFATAL: segfault in worker\n' }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
  t.equal(r.error_code, 'cli_error')
  t.equal(r.exit_code, 143)
  t.match(r.error, /143/)
  t.match(r.error, /FATAL: segfault in worker/)
  t.equal(r.output, '')
  t.equal(r.session_id, SESSION, 'the session the run was given')
  t.equal(r.num_turns, null)
})

test('dropped oversize lines are mentioned when no result arrived', async t => {
  const r = toRunResult(outcome({ exitCode: 0, oversizeLines: 2 }))
  t.equal(r.error_code, 'cli_error')
  t.match(r.error, /2 output line/)
})

test('a timeout is timed_out with the seed\'s wording, whatever the CLI said', async t => {
  const r = toRunResult(outcome({ exitCode: null, ended: { by: 'timeout' }, resultLine: line() }))
  t.equal(r.success, false)
  t.equal(r.status, 'timed_out')
  t.equal(r.error_code, 'timeout')
  t.equal(r.error, 'Execution timed out after 300 seconds')
  const short = toRunResult(outcome({ exitCode: null, timeoutS: 7, ended: { by: 'timeout' } }))
  t.equal(short.error, 'Execution timed out after 7 seconds')
})

test('a cancel is cancelled with its reason', async t => {
  const r = toRunResult(outcome({ exitCode: null, ended: { by: 'cancel', reason: 'client disconnected' } }))
  t.equal(r.success, false)
  t.equal(r.status, 'cancelled')
  t.equal(r.error_code, 'cancelled')
  t.match(r.error, /client disconnected/)
})

test('a CLI that cannot be spawned (ENOENT) is cli_not_found', async t => {
  const r = toRunResult(outcome({ exitCode: null, spawnError: { code: 'ENOENT', message: 'spawn /opt/claude ENOENT' } }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
  t.equal(r.error_code, 'cli_not_found')
  t.match(r.error, /\/opt\/claude/)
})

test('exit 0 with is_error true is not a success', async t => {
  const r = toRunResult(outcome({ exitCode: 0, resultLine: line({ is_error: true, result: 'something went wrong' }) }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
  t.not(r.error_code, null)
  t.match(r.error, /something went wrong/)
})

test('exit 1 with is_error false is not a success either', async t => {
  const r = toRunResult(outcome({ exitCode: 1, resultLine: line() }))
  t.equal(r.success, false)
  t.equal(r.status, 'failed')
})

test('output over maxOutputBytes is capped, flagged, and stays valid UTF-8', async t => {
  const text = 'ü'.repeat(3000) // 6000 bytes
  const r = toRunResult(outcome({ maxOutputBytes: 1001, resultLine: line({ result: text }) }))
  t.equal(r.truncated, true)
  t.ok(Buffer.byteLength(r.output) <= 1001)
  t.ok(Buffer.byteLength(r.output) >= 998, 'cut near the cap, not far below it')
  t.notOk(r.output.includes('\uFFFD'), 'no broken character')
  t.ok(text.startsWith(r.output), 'a prefix of the real output')
  t.equal(r.success, true, 'truncation alone does not fail the run')
})

test('capUtf8 never splits a character and leaves short strings alone', async t => {
  t.same(capUtf8('hello', 10), { text: 'hello', truncated: false })
  t.same(capUtf8('hello', 5), { text: 'hello', truncated: false })
  t.same(capUtf8('hello world', 5), { text: 'hello', truncated: true })
  for (const s of ['€€€€€€', '😀😀😀😀', 'aé😀€b'.repeat(5)]) {
    for (let max = 1; max < Buffer.byteLength(s); max++) {
      const { text, truncated } = capUtf8(s, max)
      t.equal(truncated, true)
      if (Buffer.byteLength(text) > max || text.includes('\uFFFD') || !s.startsWith(text)) {
        t.fail(`capUtf8(${JSON.stringify(s)}, ${max}) gave ${JSON.stringify(text)}`)
      }
    }
  }
  t.same(capUtf8('😀😀😀😀', 4).truncated, true)
})

test('capUtf8 keeps a multi-byte character that ends exactly at the cap', async t => {
  t.same(capUtf8('ééé', 4), { text: 'éé', truncated: true })
  t.same(capUtf8('😀😀😀', 8), { text: '😀😀', truncated: true })
  t.same(capUtf8('ab€€', 5), { text: 'ab€', truncated: true })
})

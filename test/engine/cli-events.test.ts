import { test } from 'tap'
import { mapCliLine, sdkNeeds } from '../../src/engine/cli-events.js'

const line = (o: object): [object, string] => [o, JSON.stringify(o)]

test('every CLI line is a message event, shown verbatim', async t => {
  const [msg, raw] = line({ type: 'system', subtype: 'init', session_id: 's' })
  t.same(mapCliLine(msg, raw, false), [{ kind: 'message', data: raw }])
  const [unknown, rawUnknown] = line({ type: 'something_new', x: 1 })
  t.same(mapCliLine(unknown, rawUnknown, false), [{ kind: 'message', data: rawUnknown }], 'unknown types pass through')
})

test('the SDK\'s control traffic and host-only lines are not the run\'s events', async t => {
  for (const o of [
    { type: 'control_response', response: { subtype: 'success', request_id: '1' } },
    { type: 'control_request', request_id: '2', request: { subtype: 'can_use_tool' } },
    { type: 'control_cancel_request', request_id: '3' },
    { type: 'keep_alive' },
    { type: 'system', subtype: 'session_state_changed', sdk_host_only: true }
  ]) {
    const [msg, raw] = line(o)
    t.same(mapCliLine(msg, raw, false), [], raw)
  }
  t.same(mapCliLine([1, 2], '[1,2]', false), [], 'not an object')
  t.same(mapCliLine(null, 'null', false), [])
})

test('assistant text blocks become text events, one per block; tool blocks none', async t => {
  const [msg, raw] = line({ type: 'assistant', message: { content: [{ type: 'text', text: 'one' }, { type: 'tool_use', id: 't', name: 'Bash', input: {} }, { type: 'text', text: '' }, { type: 'text', text: 'two' }] } })
  t.same(mapCliLine(msg, raw, false), [
    { kind: 'message', data: raw },
    { kind: 'text', text: 'one', block: true },
    { kind: 'text', text: 'two', block: true }
  ])
  t.same(mapCliLine(msg, raw, true), [{ kind: 'message', data: raw }], 'with partial messages the deltas carry the text instead')
})

test('partial messages: a text block start marks a block, text deltas are text', async t => {
  const [start, rawStart] = line({ type: 'stream_event', event: { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } } })
  t.same(mapCliLine(start, rawStart, true), [{ kind: 'message', data: rawStart }, { kind: 'block' }])
  const [delta, rawDelta] = line({ type: 'stream_event', event: { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hel' } } })
  t.same(mapCliLine(delta, rawDelta, true), [{ kind: 'message', data: rawDelta }, { kind: 'text', text: 'Hel', block: false }])
  const [json, rawJson] = line({ type: 'stream_event', event: { type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json: '{' } } })
  t.same(mapCliLine(json, rawJson, true), [{ kind: 'message', data: rawJson }], 'tool input deltas are not text')
})

test('the result line is recognised; an oversized line is shown as its preview', async t => {
  const result = { type: 'result', subtype: 'success', is_error: false, result: 'x'.repeat(10) }
  const effects = mapCliLine(result, 'preview', false)
  t.same(effects, [{ kind: 'message', data: 'preview' }, { kind: 'result', line: result }])
})

test('the SDK gets its protocol, system lines and the result, not the run\'s content', async t => {
  for (const type of ['control_request', 'control_response', 'control_cancel_request', 'keep_alive', 'system', 'result']) t.ok(sdkNeeds({ type }), type)
  for (const type of ['assistant', 'user', 'stream_event', 'something_new']) t.notOk(sdkNeeds({ type }), type)
  t.notOk(sdkNeeds(null))
})

import { test } from 'tap'
import { ConversationIndex } from '../../src/openai/conversations.js'
import { clientToolsOf, ParkedCalls } from '../../src/openai/functions.js'
import { fingerprint, promptWithHistory, readMessages, type Turn } from '../../src/openai/messages.js'
import { modelIds, runModel } from '../../src/openai/models.js'

/** Which session a conversation continues, without a server: the rules of `/v1`'s conversations. */

/** The `param` a 400 names, of what `fn` throws (null: it did not throw one). */
function paramOf (fn: () => unknown): string | null {
  try {
    fn()
    return null
  } catch (err) {
    return (err as { problem?: { param?: string } }).problem?.param ?? null
  }
}

const u = (text: string): Turn => ({ role: 'user', text, images: [] })
const a = (text: string): Turn => ({ role: 'assistant', text, images: [] })

test('a conversation answered here continues its session with only the new turns; a branch does not', async t => {
  const index = new ConversationIndex()
  const first = [u('hi')]
  t.same(index.continuation('k', undefined, first), { earlier: [], next: first }, 'a new conversation: all of it is new')
  index.answered('k', undefined, first, a('hello'), 's1', '/w', 'r1')
  const second = [u('hi'), a('hello'), u('more')]
  t.same(index.continuation('k', undefined, second), { resume: { sessionId: 's1', workingDirectory: '/w' }, earlier: [u('hi'), a('hello')], next: [u('more')] })
  t.same(index.continuation('other-key', undefined, second).resume, undefined, 'another key\'s conversation is never continued')
  t.same(index.continuation('k', 'a new system prompt', second).resume, undefined, 'nor one whose system text changed')
  index.answered('k', undefined, second, a('sure'), 's1', '/w', 'r2')
  // The first answer's session has gone on: a second branch from it forks it where the first answer left it.
  const branch = [u('hi'), a('hello'), u('something else')]
  const c = index.continuation('k', undefined, branch)
  t.equal(c.resume, undefined)
  t.same(c.branched, { sessionId: 's1', workingDirectory: '/w', runId: 'r1' }, 'the run whose answer is the branch point')
  t.same(c.next, [u('something else')])
  t.match(promptWithHistory(c.earlier, c.next), /earlier turns were:\n\nUser: hi\n\nAssistant: hello\n\nThe user now says:\n\nsomething else/)
  const third = [...second, a('sure'), u('and then')]
  t.equal(index.continuation('k', undefined, third).resume?.sessionId, 's1', 'the latest turn goes on in the session')
})

test('the index is bounded: the oldest conversations go first', async t => {
  const index = new ConversationIndex(2)
  for (const n of [1, 2, 3]) index.answered('k', undefined, [u(`q${n}`)], a(`a${n}`), `s${n}`, '/w', `r${n}`)
  t.equal(index.continuation('k', undefined, [u('q1'), a('a1'), u('x')]).resume, undefined, 'forgotten')
  t.equal(index.continuation('k', undefined, [u('q3'), a('a3'), u('x')]).resume?.sessionId, 's3')
})

test('messages: roles, system text, images by data URL only; fingerprints by content, not format', async t => {
  const png = 'iVBORw0KGgo='
  const read = readMessages([
    { role: 'developer', content: 'rules' },
    { role: 'user', content: [{ type: 'text', text: 'look' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${png}` } }] }
  ])
  t.equal(read.system, 'rules')
  t.same(read.turns[0]?.images, [{ type: 'image', media_type: 'image/png', data: png }])
  t.equal(paramOf(() => readMessages([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }])), 'messages[0].content[0].image_url')
  t.throws(() => readMessages([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/svg+xml;base64,AAAA' } }] }]), /not an image type/)
  t.equal(paramOf(() => readMessages([{ role: 'system', content: 'only rules' }])), 'messages')
  t.equal(paramOf(() => readMessages([{ role: 'tool', content: 'x' }])), 'messages[0].tool_call_id')
  t.equal(fingerprint(undefined, [u('a  ')]), fingerprint(undefined, [u('a')]), 'trailing space is not a new conversation')
  t.not(fingerprint(undefined, [u('a')]), fingerprint(undefined, [a('a')]), 'who said it is')
})

test('models: claude-code and the CLI\'s aliases and ids; anything else is model_not_found', async t => {
  const listed = [{ id: 'default', resolved: 'claude-opus-5-5' }, { id: 'sonnet', resolved: 'claude-sonnet-5-5' }]
  t.same(modelIds(listed), ['claude-code', 'claude-opus-5-5', 'sonnet', 'claude-sonnet-5-5'])
  t.equal(runModel(listed, 'claude-code'), undefined)
  t.equal(runModel(listed, 'sonnet'), 'sonnet')
  t.equal(runModel(listed, 'claude-sonnet-5-5'), 'claude-sonnet-5-5')
  t.equal(runModel(listed, 'claude-opus-5-5'), undefined, 'the default\'s own id is the default')
  t.throws(() => runModel(listed, 'gpt-4o'), { code: 'model_not_found' })
  t.equal(paramOf(() => runModel(listed, 'gpt-4o')), 'model')
})

test('parked calls: the outputs of one run\'s calls, by the key that got them, once', async t => {
  const parked = new ParkedCalls(3)
  parked.park('k', 'run1', [{ call_id: 'c1', name: 'f', arguments: '{}' }, { call_id: 'c2', name: 'g', arguments: '{}' }], 7)
  parked.park('k', 'run2', [{ call_id: 'c3', name: 'f', arguments: '{}' }], 4)
  t.equal(parked.take('other', ['c1']), undefined, 'another key\'s outputs do not reach the run')
  t.equal(parked.take('k', ['c1', 'c3']), undefined, 'outputs of two runs are not one answer')
  t.equal(parked.take('k', []), undefined)
  t.same(parked.take('k', ['c1', 'c2']), { runId: 'run1', after: 7 })
  t.equal(parked.take('k', ['c1']), undefined, 'taken once')
  parked.park('k', 'run3', [{ call_id: 'c4', name: 'f', arguments: '{}' }, { call_id: 'c5', name: 'f', arguments: '{}' }, { call_id: 'c6', name: 'f', arguments: '{}' }], 9)
  t.equal(parked.take('k', ['c3']), undefined, 'bounded: the oldest forgotten')
})

test('function tools: chat\'s nested functions, the Responses API\'s flat ones; names checked', async t => {
  const fn = { name: 'get_weather', description: 'd', parameters: { type: 'object' } }
  t.same(clientToolsOf([{ type: 'function', function: fn }], 'auto', 'chat'), [fn])
  t.same(clientToolsOf([{ type: 'function', ...fn }, { type: 'web_search' }], undefined, 'responses'), [fn], 'hosted tools are the agent\'s own')
  t.same(clientToolsOf([{ type: 'function', function: fn }], 'none', 'chat'), [], 'tool_choice none offers none')
  t.equal(paramOf(() => clientToolsOf([{ type: 'web_search' }], undefined, 'chat')), 'tools[0].type')
  t.equal(paramOf(() => clientToolsOf([{ type: 'function', function: { name: 'has space' } }], undefined, 'chat')), 'tools[0].function.name')
  t.equal(paramOf(() => clientToolsOf([{ type: 'function', name: 'f' }, { type: 'function', name: 'f' }], undefined, 'responses')), 'tools[1].name')
})

import { test } from 'tap'
import { ConversationIndex } from '../../src/openai/conversations.js'
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
  index.answered('k', undefined, first, a('hello'), 's1', '/w')
  const second = [u('hi'), a('hello'), u('more')]
  t.same(index.continuation('k', undefined, second), { resume: { sessionId: 's1', workingDirectory: '/w' }, earlier: [u('hi'), a('hello')], next: [u('more')] })
  t.same(index.continuation('other-key', undefined, second).resume, undefined, 'another key\'s conversation is never continued')
  t.same(index.continuation('k', 'a new system prompt', second).resume, undefined, 'nor one whose system text changed')
  index.answered('k', undefined, second, a('sure'), 's1', '/w')
  // The first answer's session has gone on: a second branch from it starts anew.
  const branch = [u('hi'), a('hello'), u('something else')]
  const c = index.continuation('k', undefined, branch)
  t.equal(c.resume, undefined)
  t.equal(c.branched, true)
  t.same(c.next, [u('something else')])
  t.match(promptWithHistory(c.earlier, c.next), /earlier turns were:\n\nUser: hi\n\nAssistant: hello\n\nThe user now says:\n\nsomething else/)
  const third = [...second, a('sure'), u('and then')]
  t.equal(index.continuation('k', undefined, third).resume?.sessionId, 's1', 'the latest turn goes on in the session')
})

test('the index is bounded: the oldest conversations go first', async t => {
  const index = new ConversationIndex(2)
  for (const n of [1, 2, 3]) index.answered('k', undefined, [u(`q${n}`)], a(`a${n}`), `s${n}`, '/w')
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

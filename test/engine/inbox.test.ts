import { test } from 'tap'
import type { DomainError } from '../../src/domain/errors.js'
import { Inbox } from '../../src/engine/inbox.js'

const limits = { maxMessages: 3, maxBytes: 1000 }
const text = (n: number): string => 'x'.repeat(n)

test('a run\'s inbox holds at most maxMessages waiting turns; a taken turn frees its place', async t => {
  const inbox = new Inbox()
  for (let i = 0; i < 3; i++) t.type(inbox.post({ prompt: `m${i}` }, undefined, limits), 'string', `message ${i} accepted`)
  let full: DomainError | undefined
  try {
    inbox.post({ prompt: 'm3' }, undefined, limits)
  } catch (err) {
    full = err as DomainError
  }
  t.equal(full?.code, 'message_queue_full', 'a fourth is refused')
  t.ok((full?.retryAfter ?? 0) > 0, 'with a Retry-After')
  t.match(full?.message, /MAX_QUEUED_MESSAGES=3/, 'naming the limit')
  t.throws(() => inbox.interrupt({ prompt: 'steer' }, limits), { code: 'message_queue_full' }, 'an interrupt\'s prompt waits too, and is refused the same')
  t.same(inbox.waiting, { messages: 3, bytes: 6 }, 'nothing of the refused ones is kept')
  t.equal(inbox.takeOrClose()?.prompt, 'm0')
  t.same(inbox.waiting, { messages: 2, bytes: 4 }, 'the taken turn left the queue')
  t.type(inbox.post({ prompt: 'm3' }, undefined, limits), 'string', 'its place is free again')
  t.same(inbox.post({ prompt: 'claimed' }, 'id-1'), 'id-1', 'without limits (what waited in a cluster\'s queue, capped there) it is taken')
})

test('the waiting turns\' bytes are capped: text and base64 images count; one turn always fits an empty queue', async t => {
  const inbox = new Inbox()
  const image = { type: 'image' as const, media_type: 'image/png' as const, data: text(600) }
  inbox.post({ prompt: 'look', attachments: [image] }, undefined, limits)
  t.same(inbox.waiting, { messages: 1, bytes: 604 })
  t.throws(() => inbox.post({ prompt: text(400) }, undefined, limits), { code: 'message_queue_full', message: /MAX_QUEUED_MESSAGE_BYTES=1000/ }, '604 + 400 bytes: over')
  t.type(inbox.post({ prompt: text(396) }, undefined, limits), 'string', '604 + 396 bytes: just fits')
  t.same(inbox.waiting, { messages: 2, bytes: 1000 })
  t.equal(inbox.takeOrClose()?.prompt, 'look')
  t.equal(inbox.takeOrClose()?.prompt.length, 396)
  t.same(inbox.waiting, { messages: 0, bytes: 0 })
  t.type(inbox.post({ prompt: text(5000) }, undefined, limits), 'string', 'a turn over the cap alone is taken when nothing waits')
  t.throws(() => inbox.post({ prompt: 'x' }, undefined, limits), { code: 'message_queue_full' }, 'and nothing more beside it')
})

test('a closed inbox keeps nothing of what waited', async t => {
  const inbox = new Inbox()
  inbox.post({ prompt: text(500) }, undefined, limits)
  inbox.close()
  t.same(inbox.waiting, { messages: 0, bytes: 0 })
  t.equal(inbox.post({ prompt: 'late' }, undefined, limits), undefined, 'and takes no more')
  t.equal(inbox.takeOrClose(), undefined)
})

import { test } from 'tap'
import { Admission, type Ticket } from '../../src/runner/admission.js'
import type { ProblemError } from '../../src/errors.js'

/** Record the order in which tickets become ready. */
function track (tickets: Ticket[], started: number[]): void {
  tickets.forEach((tk, i) => { void tk.ready.then(() => started.push(i)) })
}

const tick = () => new Promise(resolve => setImmediate(resolve))

test('up to maxConcurrent run at once; the rest queue and start in FIFO order', async t => {
  const adm = new Admission(2, 10)
  const tickets = [adm.enter(), adm.enter(), adm.enter(), adm.enter(), adm.enter()]
  const started: number[] = []
  track(tickets, started)
  await tick()
  t.same(started, [0, 1], 'two start at once')
  t.equal(adm.running, 2)
  t.equal(adm.queued, 3)
  t.same(tickets.map(tk => tk.position()), [0, 0, 1, 2, 3])

  tickets[1]!.release()
  await tick()
  t.same(started, [0, 1, 2], 'the oldest queued run takes the slot')
  t.same(tickets.map(tk => tk.position()), [0, 0, 0, 1, 2])
  t.equal(adm.running, 2)

  tickets[0]!.release()
  await tick()
  t.same(started, [0, 1, 2, 3])
  tickets[2]!.release()
  tickets[3]!.release()
  await tick()
  t.same(started, [0, 1, 2, 3, 4])
  t.equal(adm.running, 1)
  t.equal(adm.queued, 0)
  tickets[4]!.release()
  t.equal(adm.running, 0)
})

test('releasing a queued ticket removes it from the queue without starting it', async t => {
  const adm = new Admission(1, 5)
  const tickets = [adm.enter(), adm.enter(), adm.enter()]
  const started: number[] = []
  track(tickets, started)
  tickets[1]!.release()
  t.equal(adm.queued, 1)
  t.equal(tickets[2]!.position(), 1, 'the one behind moves up')
  t.equal(adm.running, 1, 'leaving the queue frees no slot')
  tickets[0]!.release()
  await tick()
  t.same(started, [0, 2], 'the released ticket never starts')
  t.equal(adm.running, 1)
})

test('releasing twice is harmless', async t => {
  const adm = new Admission(1, 5)
  const a = adm.enter()
  const b = adm.enter()
  const c = adm.enter()
  a.release()
  a.release()
  await b.ready
  t.equal(adm.running, 1, 'a second release does not free another slot')
  t.equal(adm.queued, 1)
  t.equal(c.position(), 1, 'c is still waiting')
  b.release()
  await c.ready
  c.release()
  c.release()
  t.equal(adm.running, 0, 'never negative')
  const d = adm.enter()
  const e = adm.enter()
  t.equal(d.position(), 0)
  t.equal(e.position(), 1, 'the limit still holds after double releases')
})

test('a full queue answers 429 capacity_exceeded with a Retry-After', async t => {
  const adm = new Admission(2, 1)
  adm.enter()
  adm.enter()
  adm.enter()
  const err = t.throws(() => adm.enter()) as ProblemError
  t.equal(err.statusCode, 429)
  t.equal(err.code.toLowerCase(), 'capacity_exceeded', 'the problem code (the body carries it lower-case)')
  t.type(err.retryAfter, 'number')
  t.ok(err.retryAfter! >= 1, `retryAfter ${err.retryAfter} >= 1`)
  t.ok(Number.isInteger(err.retryAfter), 'whole seconds')
  t.equal(adm.running, 2)
  t.equal(adm.queued, 1, 'a refused request takes no place')
})

test('maxQueued 0 means no queue: the first request over the limit is refused', async t => {
  const adm = new Admission(1, 0)
  const a = adm.enter()
  t.equal(a.position(), 0)
  const err = t.throws(() => adm.enter()) as ProblemError
  t.equal(err.statusCode, 429)
  t.equal(err.code.toLowerCase(), 'capacity_exceeded', 'the problem code (the body carries it lower-case)')
  t.ok(err.retryAfter! >= 1)
  a.release()
  const b = adm.enter()
  t.equal(b.position(), 0, 'admitted once the slot is free')
})

import { test } from 'tap'
import { Scheduler, type Ticket } from '../../src/engine/scheduler.js'
import { CapacityExceeded, type DomainError } from '../../src/domain/errors.js'
import { decideAdmission } from '../../src/domain/admission.js'

/** The capacity rule as admission applies it: throws `CapacityExceeded` when the run does not fit. */
function checkCapacity (scheduler: Scheduler, session?: string): void {
  decideAdmission({ claims: [], key: null }, { closing: false, held: [], owners: new Map(), keyLive: 0, keySpent: 0, capacity: scheduler.capacity(session), scope: '', now: Date.now() })
}

/**
 * A scheduler with a log of which runs started, in order, and which are running now; it also
 * records whether two runs of one session ever ran together.
 */
function harness (maxConcurrent: number, maxQueued: number) {
  const scheduler = new Scheduler(maxConcurrent, maxQueued)
  const started: string[] = []
  const running = new Map<string, string>()
  const overlaps: string[] = []
  const tickets = new Map<string, Ticket>()

  /** `name` is the run; `session` defaults to the run's own session. */
  const enter = (name: string, session = name, force = false): Ticket => {
    if (!force) checkCapacity(scheduler, session)
    const ticket = scheduler.enter(session, () => {
      started.push(name)
      if ([...running.values()].includes(session)) overlaps.push(`${name} started while ${session} was busy`)
      running.set(name, session)
    })
    tickets.set(name, ticket)
    return ticket
  }
  const release = (name: string): void => {
    running.delete(name)
    tickets.get(name)!.release()
  }
  const position = (name: string): number => tickets.get(name)!.position()
  return { scheduler, started, running, overlaps, enter, release, position }
}

/** Whether `fn` throws the 429 capacity error, complete with a usable `retryAfter`. */
const capacityError = (fn: () => unknown): boolean => {
  try {
    fn()
  } catch (err) {
    const e = err as DomainError
    return e instanceof CapacityExceeded && e.code === 'capacity_exceeded' &&
      typeof e.retryAfter === 'number' && e.retryAfter >= 1
  }
  return false
}

test('start is called synchronously inside enter() when a slot is free', async t => {
  const s = new Scheduler(1, 5)
  let started = false
  const ticket = s.enter('a', () => { started = true })
  // No await in between: callers rely on (or must be changed if this stops being) synchronous.
  t.equal(started, true, 'started before enter() returned')
  t.equal(ticket.position(), 0)
  t.equal(s.active, 1)

  let second = false
  s.enter('b', () => { second = true })
  t.equal(second, false, 'no free slot: queued')
  ticket.release()
  t.equal(second, true, 'the queued run starts synchronously inside release()')
})

test('starts up to maxConcurrent at once, in FIFO order; the next starts when one releases', async t => {
  const h = harness(2, 10)
  for (const name of ['r1', 'r2', 'r3', 'r4', 'r5']) h.enter(name)
  t.strictSame(h.started, ['r1', 'r2'], 'two slots, the first two start')
  t.equal(h.scheduler.active, 2)
  t.equal(h.scheduler.queued, 3)
  t.strictSame(['r1', 'r2', 'r3', 'r4', 'r5'].map(h.position), [0, 0, 1, 2, 3], 'positions are 1-based while queued, 0 when started')

  h.release('r2')
  t.strictSame(h.started, ['r1', 'r2', 'r3'], 'the head of the queue takes the free slot')
  t.strictSame(['r3', 'r4', 'r5'].map(h.position), [0, 1, 2], 'the queue moves up')
  t.equal(h.scheduler.active, 2)

  h.release('r1')
  h.release('r3')
  t.strictSame(h.started, ['r1', 'r2', 'r3', 'r4', 'r5'], 'FIFO throughout')
  t.equal(h.scheduler.queued, 0)
  t.equal(h.scheduler.active, 2)

  h.release('r4')
  h.release('r5')
  t.equal(h.scheduler.active, 0)
  t.equal(h.position('r5'), 0, 'a released ticket reports 0')
})

test('one run at a time per session; other sessions are not held up behind a busy one', async t => {
  const h = harness(2, 10)
  h.enter('a1', 'A')
  h.enter('a2', 'A')
  t.strictSame(h.started, ['a1'], 'a second run of a busy session waits, though a slot is free')
  t.equal(h.scheduler.active, 1)
  t.ok(h.scheduler.isBusy('A'))
  t.notOk(h.scheduler.isBusy('B'))

  h.enter('b1', 'B')
  t.strictSame(h.started, ['a1', 'b1'], 'B starts at once in the free slot, past the waiting a2')
  h.enter('c1', 'C')
  t.strictSame(h.started, ['a1', 'b1'], 'all slots taken')
  t.equal(h.position('a2'), 1)
  t.equal(h.position('c1'), 2)

  h.release('b1')
  t.strictSame(h.started, ['a1', 'b1', 'c1'], 'c1 takes the slot: a2 (ahead of it) still waits for A')
  t.equal(h.position('a2'), 1)

  h.release('a1')
  t.strictSame(h.started, ['a1', 'b1', 'c1', 'a2'], 'a2 starts when a1 releases')
  t.ok(h.scheduler.isBusy('A'))
  t.strictSame(h.overlaps, [], 'two runs of one session never ran together')
})

test('many runs of one session run strictly one after another, in order', async t => {
  const h = harness(4, 10)
  for (const name of ['a1', 'a2', 'a3', 'a4']) h.enter(name, 'A')
  t.strictSame(h.started, ['a1'])
  t.equal(h.scheduler.active, 1)
  for (const name of ['a1', 'a2', 'a3']) {
    h.release(name)
    t.equal(h.scheduler.active, 1, `after ${name}: still one at a time`)
  }
  t.strictSame(h.started, ['a1', 'a2', 'a3', 'a4'])
  t.strictSame(h.overlaps, [])
})

test('the capacity rule throws 429 CAPACITY_EXCEEDED when nothing can start and the queue is full', async t => {
  const h = harness(1, 2)
  checkCapacity(h.scheduler)
  h.enter('r1')
  checkCapacity(h.scheduler)
  h.enter('r2')
  h.enter('r3')
  t.equal(h.scheduler.queued, 2)

  t.ok(capacityError(() => checkCapacity(h.scheduler)), 'full: 429 with a retry-after')
  try {
    checkCapacity(h.scheduler)
  } catch (err) {
    const e = err as DomainError
    t.equal(e.code, 'capacity_exceeded')
    t.ok(e.retryAfter! >= 1 && e.retryAfter! <= 300, `retryAfter in [1, 300] (${e.retryAfter})`)
    t.match(e.message, /1 runs running and 2 queued/)
  }

  t.ok(capacityError(() => h.enter('r4', 'r4')), 'admission refuses the next run')
  t.equal(h.scheduler.queued, 2, 'a refused run is not queued')

  h.release('r1')
  t.strictSame(h.started, ['r1', 'r2'])
  checkCapacity(h.scheduler)
  t.pass('room again once the queue moves')
})

test('maxQueued 0 means no queue: a run is admitted only when it can start now', async t => {
  const h = harness(1, 0)
  h.enter('r1')
  t.ok(capacityError(() => checkCapacity(h.scheduler)))
  t.ok(capacityError(() => h.enter('r2')))
  t.equal(h.scheduler.queued, 0)
  h.release('r1')
  h.enter('r3')
  t.strictSame(h.started, ['r1', 'r3'])
})

test('runs entered without the capacity check (recovered after a restart) queue beyond maxQueued', async t => {
  const h = harness(1, 1)
  h.enter('r1')
  h.enter('r2')
  t.ok(capacityError(() => checkCapacity(h.scheduler)))
  h.enter('r3', 'r3', true)
  h.enter('r4', 'r4', true)
  t.equal(h.scheduler.queued, 3, 'forced runs are queued beyond maxQueued')
  t.strictSame(['r2', 'r3', 'r4'].map(h.position), [1, 2, 3])
  h.release('r1')
  h.release('r2')
  h.release('r3')
  t.strictSame(h.started, ['r1', 'r2', 'r3', 'r4'], 'and run in order')
})

test('a run that cannot start now because its session is busy counts against maxQueued', async t => {
  const h = harness(2, 0)
  h.enter('a1', 'A')
  t.ok(capacityError(() => h.enter('a2', 'A')), 'no queue, and a2 cannot start while a1 runs')
  t.equal(h.scheduler.queued, 0, 'the queue never exceeds maxQueued 0')

  const g = harness(2, 1)
  g.enter('a1', 'A')
  g.enter('a2', 'A')
  for (const name of ['a3', 'a4', 'a5']) {
    try { g.enter(name, 'A') } catch {}
  }
  t.ok(g.scheduler.queued <= 1, `the queue holds at most maxQueued 1 (holds ${g.scheduler.queued})`)
})

test('release() of a queued ticket removes it without ever starting it', async t => {
  const h = harness(1, 5)
  h.enter('r1')
  h.enter('r2')
  h.enter('r3')
  t.strictSame(['r2', 'r3'].map(h.position), [1, 2])
  h.release('r2')
  t.equal(h.scheduler.queued, 1)
  t.equal(h.position('r2'), 0)
  t.equal(h.position('r3'), 1, 'the runs behind move up')
  t.equal(h.scheduler.active, 1, 'releasing a queued run frees no running slot')
  t.strictSame(h.started, ['r1'])
  h.release('r1')
  t.strictSame(h.started, ['r1', 'r3'], 'r2 never started')
})

test('release() twice is harmless: active never drops below the real count', async t => {
  const h = harness(1, 5)
  h.enter('r1')
  h.enter('r2')
  h.enter('r3')
  h.release('r1')
  h.release('r1')
  t.equal(h.scheduler.active, 1, 'one run going (r2), not zero')
  t.strictSame(h.started, ['r1', 'r2'], 'a double release does not let r3 in beside r2')
  t.equal(h.position('r3'), 1)

  h.release('r3')
  h.release('r3')
  t.equal(h.scheduler.queued, 0)
  t.equal(h.scheduler.active, 1, 'releasing a queued ticket twice leaves running runs alone')

  h.release('r2')
  h.release('r2')
  t.equal(h.scheduler.active, 0, 'never negative')
  t.notOk(h.scheduler.isBusy('r2'))
  h.enter('r4')
  h.enter('r5')
  t.strictSame(h.started, ['r1', 'r2', 'r4'], 'the limit still holds afterwards')
  t.equal(h.scheduler.active, 1)
})

test('pause(): nothing queued starts afterwards, even when slots free up', async t => {
  const h = harness(1, 5)
  h.enter('r1')
  h.enter('r2')
  h.scheduler.pause()
  h.release('r1')
  t.strictSame(h.started, ['r1'], 'r2 stays queued')
  t.equal(h.scheduler.active, 0)
  t.equal(h.scheduler.queued, 1)
  t.equal(h.position('r2'), 1)

  h.enter('r3', 'r3', true)
  t.strictSame(h.started, ['r1'], 'a forced run is queued, not started')
  t.equal(h.scheduler.queued, 2)
})

test('retryAfter grows with the queue and stays within [1, 300]', async t => {
  const retryAfter = (s: Scheduler): number => {
    try {
      checkCapacity(s)
    } catch (err) {
      return (err as DomainError).retryAfter!
    }
    return -1
  }
  const small = harness(1, 1)
  small.enter('r1')
  small.enter('r2')
  const big = harness(1, 20)
  for (let i = 1; i <= 21; i++) big.enter(`r${i}`)
  const a = retryAfter(small.scheduler)
  const b = retryAfter(big.scheduler)
  t.ok(a >= 1 && a <= 300, `small queue: ${a}`)
  t.ok(b >= 1 && b <= 300, `long queue: ${b}`)
  t.ok(b > a, 'a longer queue means a longer wait')
})

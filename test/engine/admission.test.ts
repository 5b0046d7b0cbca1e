import { test } from 'tap'
import { Admission } from '../../src/engine/admission.js'
import { utcDay, type KeyLimits } from '../../src/domain/keys.js'
import { BudgetExceeded, CapacityExceeded, KeyConcurrencyExceeded, SessionForbidden, ShuttingDown, type DomainError } from '../../src/domain/errors.js'

const DAY = 86_400_000
const T0 = Date.UTC(2026, 11, 2, 10, 0, 0)

/** Admission on a clock the test moves; `started` lists the runs it let start, in order. */
function harness (maxConcurrent: number, maxQueued: number) {
  let now = T0
  const admission = new Admission({ maxConcurrent, maxQueued }, () => now)
  admission.load({ sessionOwners: new Map(), spentToday: new Map() })
  const started: string[] = []
  const admit = (run: string, key: KeyLimits | null, session = `session-${run}`, claims = [session]) =>
    admission.admit({ sessionId: session, claims, key }, () => started.push(run))
  /** Throws what `admit` throws, or returns null. */
  const refusal = (run: string, key: KeyLimits | null, session?: string, claims?: string[]): Error | null => {
    try {
      admit(run, key, session, claims)
      return null
    } catch (err) {
      return err as Error
    }
  }
  return { admission, started, admit, refusal, tick: (ms: number) => { now += ms } }
}

test('8 simultaneous starts by a key limited to 1 run: exactly 1 is admitted', async t => {
  const h = harness(4, 32)
  const key = { name: 'carol', maxConcurrentRuns: 1 }
  const outcomes = Array.from({ length: 8 }, (_, i) => h.refusal(`run-${i}`, key))
  t.equal(outcomes.filter(e => e === null).length, 1, 'one admitted')
  t.ok(outcomes.slice(1).every(e => e instanceof KeyConcurrencyExceeded), 'the other 7 refused: key_concurrency_exceeded')
  t.equal(h.admission.liveRunsOf('carol'), 1)
})

test('a burst of 10 against MAX_CONCURRENT_RUNS=1, MAX_QUEUED_RUNS=2: exactly 3 are admitted, 1 starts', async t => {
  const h = harness(1, 2)
  const outcomes = Array.from({ length: 10 }, (_, i) => h.refusal(`run-${i}`, null))
  t.equal(outcomes.filter(e => e === null).length, 3)
  t.ok(outcomes.slice(3).every(e => e instanceof CapacityExceeded), 'the other 7: capacity_exceeded')
  t.ok(outcomes.slice(3).every(e => ((e as DomainError).retryAfter ?? 0) >= 1), 'each with a Retry-After')
  t.same(h.started, ['run-0'])
  t.equal(h.admission.active, 1)
  t.equal(h.admission.queued, 2)
})

test('releasing gives the key\'s slot back and starts the next queued run', async t => {
  const h = harness(1, 5)
  const key = { name: 'dave', maxConcurrentRuns: 2 }
  const a = h.admit('a', key)
  h.admit('b', key)
  t.ok(h.refusal('c', key) instanceof KeyConcurrencyExceeded, 'two live runs of dave, running or queued, fill his slots')
  t.same(h.started, ['a'])
  a.release()
  a.release()
  t.same(h.started, ['a', 'b'], 'b starts once a is gone')
  t.equal(h.admission.liveRunsOf('dave'), 1, 'a double release counts once')
  t.equal(h.refusal('c', key), null, 'and dave may start another')
})

test('a key over its daily budget is refused until midnight UTC', async t => {
  const h = harness(4, 32)
  const key = { name: 'erin', dailyBudgetUsd: 0.01 }
  t.equal(h.refusal('a', key), null)
  h.admission.spent('erin', 0.006)
  t.equal(h.refusal('b', key), null, 'under the budget')
  h.admission.spent('erin', 0.006)
  const err = h.refusal('c', key)
  t.ok(err instanceof BudgetExceeded)
  t.match((err as DomainError).problem, { spent_usd: 0.012, daily_budget_usd: 0.01 })
  t.equal((err as DomainError).retryAfter, utcDay(T0).secondsLeft, 'retry at midnight UTC')
  t.equal(h.refusal('d', { name: 'frank', dailyBudgetUsd: 0.01 }), null, 'another key is not affected')
  h.tick(DAY)
  t.equal(h.admission.spentToday('erin'), 0, 'a new day starts at zero')
  t.equal(h.refusal('e', key), null)
})

test('what the store says was spent today counts', async t => {
  const admission = new Admission({ maxConcurrent: 4, maxQueued: 4 }, () => T0)
  admission.load({ sessionOwners: new Map(), spentToday: new Map([['erin', 5]]) })
  t.throws(() => admission.admit({ sessionId: 's', claims: ['s'], key: { name: 'erin', dailyBudgetUsd: 5 } }, () => {}), BudgetExceeded)
})

test('sessions belong to the key of their first run, decided in the same step as the admission', async t => {
  const h = harness(4, 32)
  const alice = { name: 'alice' }
  const bob = { name: 'bob' }
  const shared = 'aaaaaaaa-0000-4000-8000-000000000000'
  // Two keys claim the same new session id at once: the first wins, at once.
  t.equal(h.refusal('a', alice, shared), null)
  t.ok(h.refusal('b', bob, shared) instanceof SessionForbidden, 'the second key is refused')
  t.equal(h.admission.sessions.ownerOf(shared), 'alice')
  t.equal(h.refusal('c', alice, shared), null, 'the owner continues it (it queues behind its first run)')
  t.equal(h.refusal('d', { name: 'root', anySession: true }, shared), null, 'an admin key may continue any session')
  t.equal(h.refusal('e', null, shared), null, 'with auth off there are no owners to check')
  // A fork claims the session it forks from; the new session becomes the forker's.
  t.ok(h.refusal('f', bob, 'new-fork', ['new-fork', shared]) instanceof SessionForbidden, 'bob cannot fork alice\'s session')
  t.equal(h.refusal('g', alice, 'alice-fork', ['alice-fork', shared]), null)
  t.equal(h.admission.sessions.ownerOf('alice-fork'), 'alice')
})

test('owners loaded from the store hold across a restart', async t => {
  const admission = new Admission({ maxConcurrent: 4, maxQueued: 4 })
  admission.load({ sessionOwners: new Map([['s1', 'alice']]), spentToday: new Map() })
  t.throws(() => admission.admit({ sessionId: 's1', claims: ['s1'], key: { name: 'bob' } }, () => {}), SessionForbidden)
})

test('readmit (restart recovery) skips every limit but still counts the key\'s run', async t => {
  const h = harness(1, 0)
  h.admit('a', { name: 'carol', maxConcurrentRuns: 1 })
  h.admission.readmit('session-b', 'carol', () => h.started.push('b'))
  t.equal(h.admission.liveRunsOf('carol'), 2)
  t.equal(h.admission.queued, 1, 'queued even with MAX_QUEUED_RUNS=0')
})

test('after close nothing is admitted, and queued runs do not start', async t => {
  const h = harness(1, 4)
  const a = h.admit('a', null)
  h.admit('b', null)
  h.admission.close()
  t.ok(h.refusal('c', null) instanceof ShuttingDown)
  a.release()
  t.same(h.started, ['a'], 'b stays queued for the next start')
})

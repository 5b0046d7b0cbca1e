import { test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { RunLog } from '../../src/engine/run-log.js'
import { LocalEventBus } from '../../src/store/event-bus.js'
import { SqliteRunStore } from '../../src/store/sqlite-store.js'
import type { RunStore } from '../../src/store/store.js'
import type { RunEvent } from '../../src/domain/run.js'

const RUN = 'run-1'

/** A store whose reads can be interleaved with appends (`onRead` runs before each read answers). */
function harness (t: { teardown: (fn: () => unknown) => void }) {
  const real = new SqliteRunStore({ dataDir: ':memory:', flushIntervalMs: 60_000 })
  t.teardown(() => real.close())
  let onRead: (() => Promise<void> | void) | undefined
  const store = new Proxy(real, {
    get (target, prop, receiver) {
      if (prop === 'eventsAfter') {
        return async (...args: Parameters<RunStore['eventsAfter']>) => {
          const hook = onRead
          onRead = undefined
          await hook?.()
          return await target.eventsAfter(...args)
        }
      }
      const v = Reflect.get(target, prop, receiver)
      return typeof v === 'function' ? v.bind(target) : v
    }
  }) as RunStore
  const bus = new LocalEventBus()
  const log = new RunLog(store, bus)
  let seq = 0
  const append = (type: RunEvent['type'] = 'message'): void => { log.append(RUN, ++seq, type, JSON.stringify({ n: seq })) }
  return { log, bus, append, setOnRead: (fn: () => Promise<void> | void) => { onRead = fn } }
}

const follower = (received: number[], opts: { congestEvery?: number, signal?: AbortSignal } = {}) => ({
  write: (e: RunEvent) => {
    received.push(e.seq)
    return opts.congestEvery === undefined || e.seq % opts.congestEvery !== 0
  },
  drained: async () => { await sleep(5) },
  signal: opts.signal ?? new AbortController().signal
})

test('events appended while the backlog is read arrive exactly once, in order', async t => {
  const h = harness(t)
  for (let i = 0; i < 5; i++) h.append()
  // While the follower reads the backlog, three more events are appended (and published).
  h.setOnRead(() => { h.append(); h.append(); h.append() })
  const received: number[] = []
  let live = true
  const following = h.log.follow(RUN, 0, follower(received), () => live)
  await sleep(20)
  h.append()
  h.append()
  h.append('result')
  live = false
  t.equal(await following, true, 'ends at the result')
  t.same(received, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 'every event once, in order')
  t.equal(h.bus.size, 0, 'the follower let go of the bus')
})

test('events published between the subscription and the read are not doubled', async t => {
  const h = harness(t)
  h.append()
  // Appended after subscribing, before the read: both the read and the bus carry it.
  h.setOnRead(() => { h.append() })
  const received: number[] = []
  const following = h.log.follow(RUN, 0, follower(received), () => true)
  await sleep(20)
  h.append('result')
  t.equal(await following, true)
  t.same(received, [1, 2, 3])
})

test('resuming after an id gets only what came later', async t => {
  const h = harness(t)
  for (let i = 0; i < 6; i++) h.append()
  h.append('result')
  const received: number[] = []
  t.equal(await h.log.follow(RUN, 4, follower(received), () => false), true)
  t.same(received, [5, 6, 7])
})

test('a congested client is fed from the store after it drains: nothing lost, nothing twice, nothing buffered', async t => {
  const h = harness(t)
  for (let i = 0; i < 50; i++) h.append()
  const received: number[] = []
  let live = true
  const following = h.log.follow(RUN, 0, follower(received, { congestEvery: 7 }), () => live)
  for (let i = 0; i < 200; i++) {
    h.append()
    if (i % 20 === 0) await sleep(1)
  }
  h.append('result')
  live = false
  t.equal(await following, true)
  t.same(received, Array.from({ length: 251 }, (_, i) => i + 1))
  t.equal(h.bus.size, 0)
})

test('a run that is not live and has no result (left queued at shutdown) ends the follow with false', async t => {
  const h = harness(t)
  h.append()
  const received: number[] = []
  t.equal(await h.log.follow(RUN, 0, follower(received), () => false), false)
  t.same(received, [1])
})

test('a follower that leaves stops at once', async t => {
  const h = harness(t)
  h.append()
  const ac = new AbortController()
  const received: number[] = []
  const following = h.log.follow(RUN, 0, follower(received, { signal: ac.signal }), () => true)
  await sleep(20)
  ac.abort()
  t.equal(await following, false)
  t.equal(h.bus.size, 0)
})

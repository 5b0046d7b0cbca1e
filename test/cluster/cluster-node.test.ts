import tap, { test, type Test } from 'tap'
import { ClusterNode } from '../../src/cluster/cluster.js'
import type { KeyLimits } from '../../src/domain/keys.js'
import type { NewRun } from '../../src/domain/records.js'
import { PostgresRunStore } from '../../src/store/postgres-store.js'
import { noPostgres, startPostgres } from '../fixtures/postgres.js'
import { addRun, newRun, OTHER_SESSION, result, SESSION } from '../store/contract.js'

/**
 * One instance's part in a cluster, against a real PostgreSQL (no servers): admission decided by
 * the rules written once (`decideAdmission`) on what the store reads under its locks, the end of
 * a queued run, and requests between instances.
 */
if (noPostgres !== false) {
  test('cluster node', { skip: noPostgres }, () => {})
} else {
  const server = startPostgres(tap)
  const log = { info: () => {}, warn: () => {}, error: () => {} }

  async function node (t: Test, url: string, maxConcurrent = 2): Promise<ClusterNode> {
    const store = await PostgresRunStore.open({ url, flushIntervalMs: 10 })
    const n = new ClusterNode({ store, instanceId: `instance-${Math.random().toString(36).slice(2)}`, maxConcurrent, log })
    t.teardown(async () => {
      await n.stop()
      await store.close()
    })
    return n
  }

  /** A run as the cluster submits it (now, not in the past: a budget counts today). */
  const run = (id: string, over: Partial<NewRun> = {}): NewRun => newRun(id, { createdAt: Date.now(), ...over })
  const alice: KeyLimits = { name: 'alice' }
  /** Admit with a queue that has room, no session held. */
  const ask = (key: KeyLimits | null, claims = [SESSION], maxQueued = 100): Parameters<ClusterNode['admit']>[1] =>
    ({ key, claims, held: () => false, maxQueued })
  /** What an admission threw: its code, message and retry-after. */
  async function refusal (p: Promise<void>): Promise<{ code?: string, message?: string, retryAfter?: number } | undefined> {
    return await p.then(() => undefined, (err: { code?: string, message?: string, retryAfter?: number }) => ({ code: err.code, message: err.message, retryAfter: err.retryAfter }))
  }

  test('admission in the cluster: the queue has room for MAX_QUEUED_RUNS beyond the free slots of the instances alive', async t => {
    const url = await (await server).database()
    const a = await node(t, url, 2)
    t.equal(await refusal(a.admit(run('r1'), ask(null, [SESSION], 1))), undefined, 'no instance alive, 0 slots: one run may wait')
    t.strictSame(await refusal(a.admit(run('r2'), ask(null, [OTHER_SESSION], 1))), {
      code: 'capacity_exceeded',
      message: 'capacity full: 0 runs running and 1 queued in the cluster (MAX_CONCURRENT_RUNS=2 on this instance, 0 slots in all; MAX_QUEUED_RUNS=1); retry later',
      retryAfter: 5
    }, 'the second is refused, in the words of the rules')
    await a.start(() => {})
    t.equal(await refusal(a.admit(run('r2'), ask(null, [OTHER_SESSION], 1))), undefined, 'an instance with 2 slots joined: room for two more')
    t.equal(await a.queuedRuns(), 2)
    t.equal(await a.positionOf('r2'), 2)
  })

  test('admission in the cluster: sessions held or of another key, the key\'s live runs and budget', async t => {
    const url = await (await server).database()
    const a = await node(t, url)
    const store = await PostgresRunStore.open({ url })
    t.teardown(() => store.close())
    await a.admit(run('mine'), ask(alice))
    t.match(await refusal(a.admit(run('held'), { ...ask(alice), held: s => s === SESSION })), { code: 'session_busy', message: `session ${SESSION} is being deleted` })
    t.match(await refusal(a.admit(run('theirs', { keyName: 'bob' }), ask({ name: 'bob' }))), { code: 'session_forbidden', message: `session ${SESSION} belongs to another key` })
    t.equal(await refusal(a.admit(run('admin', { keyName: 'root' }), ask({ name: 'root', anySession: true }))), undefined, 'an admin key may continue it')
    t.strictSame(await refusal(a.admit(run('second', { sessionId: OTHER_SESSION }), ask({ name: 'alice', maxConcurrentRuns: 1 }, [OTHER_SESSION]))), {
      code: 'key_concurrency_exceeded',
      message: 'the key alice has 1 runs queued or running in the cluster, its limit (max_concurrent_runs=1); retry when one has ended',
      retryAfter: 5
    })
    await addRun(store, 'spent', { keyName: 'carol', sessionId: '77777777-7777-4777-8777-777777777777', status: 'succeeded', createdAt: Date.now(), endedAt: Date.now(), cost: 2 })
    t.match(await refusal(a.admit(run('broke', { keyName: 'carol', sessionId: OTHER_SESSION }), ask({ name: 'carol', dailyBudgetUsd: 1.5 }, [OTHER_SESSION]))), {
      code: 'budget_exceeded',
      message: 'the key carol has spent $2.0000 today (UTC), its daily budget of $1.5; it resets at midnight UTC'
    })
    t.equal(await store.getRun('held'), undefined, 'a refused run is not recorded')
    t.equal(await store.getRun('broke'), undefined)
    t.equal((await store.getRun('admin'))?.status, 'queued', 'an admitted one is')
  })

  test('cancelQueued: the store writes the end, the caller appends the result event at the seq it gives', async t => {
    const url = await (await server).database()
    const a = await node(t, url)
    await a.admit(run('q1'), ask(alice))
    const res = result('q1', 'cancelled', { error_code: 'cancelled' })
    const ended = await a.cancelQueued('q1', r => ({ ...res, run_id: r.id }))
    t.match(ended, { record: { id: 'q1', status: 'queued' }, result: res, seq: 1 })
    t.equal(await a.cancelQueued('q1', () => res), undefined, 'once')
    t.equal(await a.ownerOf('q1'), null)
    t.strictSame(await a.overdue(Date.now() + 1e9), [], 'an ended run is not overdue')
  })

  test('requests between instances: answered, failed with the handler\'s error, and too big for a notification', async t => {
    const url = await (await server).database()
    const a = await node(t, url)
    const b = await node(t, url)
    b.handle(async (op, args: { text: string }) => {
      if (op === 'fail') throw Object.assign(new Error('no such run here'), { code: 'run_finished' })
      return { echoed: args.text.length }
    })
    await a.start(() => {})
    await b.start(() => {})
    t.strictSame(await a.call(b.instanceId, 'echo', { text: 'hi' }), { echoed: 2 })
    t.strictSame(await a.call(b.instanceId, 'echo', { text: 'x'.repeat(20_000) }), { echoed: 20_000 }, 'a request bigger than a notification waits in a table')
    // Often answered before the request's own NOTIFY returns: never an unhandled rejection (which
    // would end the process).
    for (let i = 0; i < 20; i++) {
      const failed = await a.call(b.instanceId, 'fail', { text: '' }).then(() => null, (err: { code?: string, message?: string }) => ({ code: err.code, message: err.message }))
      t.strictSame(failed, { code: 'internal_error', message: 'no such run here' }, 'an error that is not a domain error')
    }
    t.equal(b.instances, 2, 'the one that joined last counts both')
    const accepted = Date.now()
    t.equal(await a.processGone(b.instanceId, accepted), false, 'an instance alive since it accepted a run')
    t.equal(await a.processGone(b.instanceId, accepted - 60_000), true, 'an instance that restarted since is gone (its process)')
    await b.stop()
    t.equal(await a.processGone(b.instanceId, accepted), true, 'a stopped instance is gone')
  })
}

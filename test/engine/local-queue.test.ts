import { test } from 'tap'
import { randomUUID } from 'node:crypto'
import { CapacityExceeded, KeyConcurrencyExceeded, SessionForbidden, StoreUnavailable, type DomainError } from '../../src/domain/errors.js'
import type { KeyLimits } from '../../src/domain/keys.js'
import type { RunSpec } from '../../src/domain/run.js'
import { LocalQueue } from '../../src/engine/local.js'
import type { QueueHost, Submission } from '../../src/engine/ports.js'
import type { RunHandle } from '../../src/engine/run-handle.js'
import { RunLog } from '../../src/engine/run-log.js'
import { SessionLedger } from '../../src/engine/session-ledger.js'
import type { Supervisor } from '../../src/engine/supervisor.js'
import { LocalEventBus } from '../../src/store/event-bus.js'
import { memoryLogger } from '../fixtures/engine-kit.js'
import { MemoryStore } from '../fixtures/memory-store.js'

// The one-machine run queue: admission decides (its refusals reach the caller unchanged), the
// store records, the supervisor (a fake here: it only keeps what it is handed) runs.

function specOf (over: Partial<RunSpec> = {}): RunSpec {
  return {
    runId: randomUUID(),
    prompt: 'hello',
    cwd: '/tmp',
    sessionId: randomUUID(),
    sessionMode: 'new',
    timeoutS: 60,
    env: {},
    permissionMode: 'default',
    includePartialMessages: false,
    approvals: 'deny',
    approvalTimeoutS: 60,
    ...over
  }
}

function harness (limits: { maxConcurrent: number, maxQueued: number }) {
  const store = new MemoryStore()
  const sessions = new SessionLedger()
  const tracked: RunHandle[] = []
  const recorded: string[] = []
  const runs = {
    track: (h: RunHandle) => { tracked.push(h) },
    get: (id: string) => tracked.find(h => h.id === id),
    has: (id: string) => tracked.some(h => h.id === id)
  } as unknown as Supervisor
  const host: QueueHost = {
    store,
    runLog: new RunLog(store, new LocalEventBus()),
    runs,
    sessions,
    instanceId: 'test-instance',
    leaseMs: 30_000,
    settings: { maxConcurrentRuns: limits.maxConcurrent, maxQueuedRuns: limits.maxQueued, maxOutputBytes: 1 << 20 },
    log: memoryLogger(),
    shutdown: new AbortController().signal,
    recorded: spec => { recorded.push(spec.runId) },
    handleOf: async () => { throw new Error('not used') },
    finished: () => {},
    cancel: async () => false
  }
  const queue = new LocalQueue(host)
  /** Submit a run: what its callbacks saw, and how the submission ended. */
  const submit = async (spec: RunSpec, key: KeyLimits | null = null) => {
    const seen = { refused: [] as unknown[], unrecorded: 0, admitted: 0 }
    const s: Submission = {
      spec,
      stored: { prompt: spec.prompt },
      key,
      cancelOnDisconnect: false,
      log: memoryLogger(),
      refused: err => { seen.refused.push(err) },
      unrecorded: () => { seen.unrecorded++ },
      admitted: () => { seen.admitted++ }
    }
    const outcome = await queue.submit(s).then(run => ({ run, err: undefined }), (err: DomainError) => ({ run: undefined, err }))
    return { ...seen, ...outcome }
  }
  return { queue, store, sessions, tracked, recorded, submit }
}

test('an admitted run is recorded, its first event written, then handed to the supervisor', async t => {
  const h = harness({ maxConcurrent: 1, maxQueued: 1 })
  const spec = specOf()
  const r = await h.submit(spec, { name: 'k' })
  t.equal(r.err, undefined)
  t.equal(r.run?.id, spec.runId)
  t.same({ refused: r.refused.length, unrecorded: r.unrecorded, admitted: r.admitted }, { refused: 0, unrecorded: 0, admitted: 1 })
  t.equal(h.store.run(spec.runId)?.status, 'queued')
  t.equal(h.store.run(spec.runId)?.keyName, 'k')
  t.same(h.store.eventsOf(spec.runId).map(e => [e.seq, e.type]), [[1, 'run']])
  t.same(JSON.parse(h.store.eventsOf(spec.runId)[0]!.data), { run_id: spec.runId, session_id: spec.sessionId, working_directory: '/tmp' })
  t.same(h.tracked.map(x => x.id), [spec.runId])
  t.same(h.recorded, [spec.runId])
  t.equal(h.tracked[0]!.wasAdmitted, true, 'a free slot: let in at once')
  t.equal(h.tracked[0]!.ticket !== undefined, true, 'it holds its ticket')
  t.equal(h.store.unflushed, 0, 'flushed before the caller hears of it')
  t.same(await h.queue.stats(), { active: 1, queued: 0 })
  t.same(await h.queue.locate(spec.runId), { here: h.tracked[0] })
  t.same(await h.queue.locate('unknown'), { ended: true })
})

test('a capacity refusal comes back unchanged, and the refused callback has it', async t => {
  const h = harness({ maxConcurrent: 1, maxQueued: 0 })
  t.equal((await h.submit(specOf())).err, undefined)
  const r = await h.submit(specOf())
  t.ok(r.err instanceof CapacityExceeded, 'the domain error itself, not wrapped')
  t.equal(r.err?.code, 'capacity_exceeded')
  t.match(r.err?.message, /^capacity full: 1 runs running and 0 queued \(MAX_CONCURRENT_RUNS=1, MAX_QUEUED_RUNS=0\)/, 'as admission words it')
  t.type(r.err?.retryAfter, 'number', 'with its Retry-After')
  t.same(r.refused, [r.err], 'refused called once, with the very error thrown')
  t.equal(r.refused[0], r.err)
  t.equal(r.admitted, 0)
  t.equal(r.unrecorded, 0)
  t.equal(h.store.calls.insertRun, 1, 'never recorded')
  t.equal(h.tracked.length, 1, 'never handed to the supervisor')
})

test('a key over its concurrency comes back unchanged, and the refused callback has it', async t => {
  const h = harness({ maxConcurrent: 4, maxQueued: 4 })
  const key = { name: 'k', maxConcurrentRuns: 1 }
  t.equal((await h.submit(specOf(), key)).err, undefined)
  const r = await h.submit(specOf(), key)
  t.ok(r.err instanceof KeyConcurrencyExceeded)
  t.equal(r.err?.code, 'key_concurrency_exceeded')
  t.equal(r.err?.retryAfter, 5)
  t.match(r.err?.message, /^the key k has 1 runs queued or running, its limit \(max_concurrent_runs=1\)/)
  t.equal(r.refused.length, 1)
  t.equal(r.refused[0], r.err, 'refused called with the very error thrown')
  t.equal(h.store.calls.insertRun, 1)
  t.equal((await h.submit(specOf(), { name: 'other', maxConcurrentRuns: 1 })).err, undefined, 'another key is not limited by it')
})

test('a session of another key comes back unchanged, and the refused callback has it', async t => {
  const h = harness({ maxConcurrent: 4, maxQueued: 4 })
  const first = specOf()
  t.equal((await h.submit(first, { name: 'a' })).err, undefined)
  const r = await h.submit(specOf({ sessionId: first.sessionId, sessionMode: 'resume' }), { name: 'b' })
  t.ok(r.err instanceof SessionForbidden)
  t.equal(r.err?.code, 'session_forbidden')
  t.equal(r.err?.message, `session ${first.sessionId} belongs to another key`)
  t.equal(r.refused.length, 1)
  t.equal(r.refused[0], r.err)
  t.equal(h.sessions.ownerOf(first.sessionId), 'a', 'the session stays its owner\'s')
  t.equal(h.store.calls.insertRun, 1)
  const fork = await h.submit(specOf({ sessionMode: 'fork', forkedFrom: first.sessionId }), { name: 'b' })
  t.ok(fork.err instanceof SessionForbidden, 'nor may it fork it')
})

test('a run the store cannot record fails with store_unavailable; its slot is given back and unrecorded is called', async t => {
  const h = harness({ maxConcurrent: 1, maxQueued: 0 })
  h.store.fail.insertRun = new Error('disk full')
  const spec = specOf()
  const r = await h.submit(spec, { name: 'k', maxConcurrentRuns: 1 })
  t.ok(r.err instanceof StoreUnavailable)
  t.equal(r.err?.code, 'store_unavailable')
  t.equal(r.unrecorded, 1, 'what was taken for it must not serve another run')
  t.same(r.refused, [], 'it was admitted, not refused')
  t.equal(r.admitted, 1)
  t.equal(h.tracked.length, 0, 'never handed to the supervisor')
  t.same(h.store.eventsOf(spec.runId), [], 'no event of it')
  t.same(await h.queue.stats(), { active: 0, queued: 0 }, 'its slot is free again')

  delete h.store.fail.insertRun
  const next = await h.submit(specOf(), { name: 'k', maxConcurrentRuns: 1 })
  t.equal(next.err, undefined, 'the next run of the same key is admitted (neither the slot nor the key\'s is held)')
  t.equal(h.tracked[0]?.wasAdmitted, true, 'and let in at once')
})

test('a failed flush of the first event does not fail the submission', async t => {
  const h = harness({ maxConcurrent: 1, maxQueued: 0 })
  h.store.fail.flush = true
  const spec = specOf()
  const r = await h.submit(spec)
  t.equal(r.err, undefined, 'accepted: the event stays buffered for the next write')
  t.same(h.store.eventsOf(spec.runId).map(e => e.type), ['run'])
  t.equal(h.store.unflushed, 1)
})

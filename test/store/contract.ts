import { test, type Test } from 'tap'
import type { RunRequest, RunResult, RunSpec, RunStatus } from '../../src/domain/run.js'
import type { NewRun, PendingWebhook, RunRecord, StoredEvent, WebhookDelivery } from '../../src/domain/records.js'
import { ClaimLost, MAX_UNFLUSHED_EVENTS, type RunStore } from '../../src/store/store.js'
import type { WriteReports } from '../../src/store/write-retry.js'

/**
 * The contract every `RunStore` backend passes: the rules of `src/store/store.ts`, checked through
 * the interface alone. A backend's test file calls `runStoreContract(name, open)` once.
 */

/** What `open` gives a test. */
export interface StoreHandle {
  /** A store on data of its own, empty. */
  store: RunStore
  /**
   * Another store on the same data, as a restarted process or a second instance would open it.
   * The stores opened before may still be open (a process that died without closing looks the
   * same to the data), or closed by the test.
   */
  reopen: () => Promise<RunStore>
}

/**
 * Opens a backend for one test. The factory closes every store it opened when `t` ends (some the
 * test may have closed already) and removes the data. It should slow the backend's own flushing
 * down (a long interval, big batches), so that the tests see what `flush()`, `markFinished` and
 * `close` do by themselves.
 */
export type OpenStore = (t: Test) => Promise<StoreHandle>

export const SESSION = '11111111-2222-4333-8444-555555555555'
export const OTHER_SESSION = '66666666-7777-4888-9999-aaaaaaaaaaaa'
export const T0 = 1_700_000_000_000
export const DAY = 86_400_000
/** An env var value: must not be kept once the run started. */
export const SECRET = 'hunter2-do-not-store'
const OWNER_A = 'instance-a'
const OWNER_B = 'instance-b'

export function spec (runId: string, over: Partial<RunSpec> = {}): RunSpec {
  return {
    runId,
    prompt: 'say hi',
    approvals: 'deny',
    approvalTimeoutS: 300,
    cwd: '/srv/work',
    sessionId: SESSION,
    sessionMode: 'new',
    timeoutS: 300,
    env: { SECRET_TOKEN: SECRET },
    permissionMode: 'acceptEdits',
    includePartialMessages: false,
    ...over
  }
}

export function result (runId: string, status: RunStatus, over: Partial<RunResult> = {}): RunResult {
  return {
    success: status === 'succeeded',
    output: status === 'succeeded' ? 'hi' : '',
    error: status === 'succeeded' ? null : 'the run failed',
    exit_code: status === 'succeeded' ? 0 : 1,
    execution_time: 2.34,
    timestamp: new Date(T0 + 2340).toISOString(),
    run_id: runId,
    session_id: SESSION,
    status,
    error_code: status === 'succeeded' ? null : 'cli_error',
    api_error_status: null,
    num_turns: 1,
    total_cost_usd: 0.0006,
    usage: { input_tokens: 20, output_tokens: 22 },
    duration_ms: 145,
    permission_denials: [],
    structured_output: null,
    truncated: false,
    ...over
  }
}

export function newRun (id: string, over: Partial<NewRun> = {}): NewRun {
  const sessionId = over.sessionId ?? SESSION
  return {
    id,
    sessionId,
    workingDirectory: '/srv/work',
    request: { prompt: 'say hi' },
    spec: spec(id, { sessionId }),
    keyName: 'alice',
    cancelOnDisconnect: false,
    createdAt: T0,
    ...over
  }
}

export interface RunOpts {
  sessionId?: string
  keyName?: string | null
  createdAt?: number
  status?: RunStatus
  owner?: string
  leaseUntil?: number
  endedAt?: number
  /** `total_cost_usd` of the result. */
  cost?: number | null
}

/** Insert a run and move it to `status` the way the engine does. */
export async function addRun (store: RunStore, id: string, o: RunOpts = {}): Promise<void> {
  const sessionId = o.sessionId ?? SESSION
  const createdAt = o.createdAt ?? T0
  await store.insertRun(newRun(id, { sessionId, createdAt, keyName: o.keyName === undefined ? 'alice' : o.keyName }))
  const status = o.status ?? 'queued'
  if (status === 'queued') return
  await store.markStarted(id, {
    startedAt: createdAt + 10,
    marker: `marker-${id}`,
    sessionId,
    workingDirectory: '/srv/work',
    owner: o.owner ?? OWNER_A,
    leaseUntil: o.leaseUntil ?? createdAt + 60_000
  })
  if (status === 'running') return
  await store.markFinished(id, result(id, status, { session_id: sessionId, total_cost_usd: o.cost === undefined ? 0.0006 : o.cost }), o.endedAt ?? createdAt + 2000)
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Poll `read` until `done` holds of what it gives (or `ms` have passed): its last value. */
async function until<T> (read: () => Promise<T>, done: (v: T) => boolean, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms
  let v = await read()
  while (!done(v) && Date.now() < deadline) {
    await sleep(10)
    v = await read()
  }
  return v
}

/** The event `appendN` appends at `seq`. */
export const evt = (seq: number): StoredEvent => ({ seq, type: 'message', data: JSON.stringify({ n: seq }) })

export function appendN (store: RunStore, runId: string, from: number, to: number): void {
  for (let seq = from; seq <= to; seq++) store.appendEvent(runId, seq, 'message', JSON.stringify({ n: seq }))
}

export const seqs = (events: StoredEvent[]): number[] => events.map(e => e.seq)
export const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i)
const ids = (runs: RunRecord[]): string[] => runs.map(r => r.id)
const sortedIds = (runs: RunRecord[]): string[] => ids(runs).sort()

/** Every page of `listRuns` with `filter`, following the `before` cursor. */
async function allPages (store: RunStore, filter: { limit: number, keyName?: string }): Promise<{ seen: string[], pages: number[] }> {
  const seen: string[] = []
  const pages: number[] = []
  let before: number | undefined
  for (let guard = 0; guard < 100; guard++) {
    const page = await store.listRuns({ ...filter, ...(before === undefined ? {} : { before }) })
    if (page.length === 0) break
    pages.push(page.length)
    seen.push(...ids(page))
    before = page.at(-1)!.rowid
  }
  return { seen, pages }
}

/** Every event of a run, paged by `eventsAfter`. */
async function allEvents (store: RunStore, runId: string, limit: number, maxBytes?: number): Promise<{ seen: number[], pages: number[][] }> {
  const seen: number[] = []
  const pages: number[][] = []
  let after = 0
  for (let guard = 0; guard < 1000; guard++) {
    const page = await store.eventsAfter(runId, after, limit, maxBytes)
    if (page.length === 0) break
    pages.push(seqs(page))
    seen.push(...seqs(page))
    after = page.at(-1)!.seq
  }
  return { seen, pages }
}

/** A map's entries, sorted by key. */
const entries = <V>(m: Map<string, V>): Array<[string, V]> => [...m.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
const nonZero = (m: Map<string, number>): Array<[string, number]> => entries(m).filter(([, usd]) => usd !== 0)

export function runStoreContract (name: string, open: OpenStore): void {
  test(`${name}: ping resolves`, async t => {
    const { store } = await open(t)
    await t.resolves(store.ping())
    await addRun(store, 'run-1')
    await t.resolves(store.ping(), 'and still does with data in the store')
  })

  test(`${name}: nothing throws for an unknown run, key or owner`, async t => {
    const { store } = await open(t)
    t.equal(await store.getRun('no-such-run'), undefined)
    t.strictSame(await store.listRuns({ limit: 10 }), [])
    t.strictSame(await store.leftovers(OWNER_A, T0), { running: [], queued: [] })
    t.strictSame(await store.eventsAfter('no-such-run', 0, 10), [])
    t.equal(await store.lastSeq('no-such-run'), 0)
    t.strictSame(await store.deliveries('no-such-run'), [])
    t.equal((await store.spendSince(0)).size, 0)
    t.equal((await store.sessionOwners()).size, 0)
    t.equal(await store.prune({ maxAgeMs: 0, maxRuns: 0, now: T0 }), 0)
    await t.resolves(store.markStarted('no-such-run', { startedAt: T0, marker: 'm', sessionId: SESSION, workingDirectory: '/w', owner: OWNER_A, leaseUntil: T0 + 1 }))
    await t.resolves(store.markFinished('no-such-run', result('no-such-run', 'succeeded'), T0))
    await t.resolves(store.renewLeases('no-such-owner', T0))
    await t.resolves(store.flush())
    t.equal(await store.getRun('no-such-run'), undefined, 'updates of an unknown run create nothing')
    t.strictSame(await store.listRuns({ limit: 10 }), [])
  })

  test(`${name}: insertRun + getRun round-trip every field of a queued run`, async t => {
    const { store } = await open(t)
    const request: RunRequest = { prompt: 'say hi', model: 'sonnet', env_vars: {}, allowed_tools: ['Bash(git *)'], include_partial_messages: true, timeout: 60, output_schema: { type: 'object', properties: { n: { type: 'integer' } } } }
    const runSpec = spec('run-1', { model: 'sonnet', allowedTools: ['Bash(git *)'], includePartialMessages: true, timeoutS: 60, outputSchema: { type: 'object' }, webhookUrl: 'https://hooks.example/x' })
    await store.insertRun({ id: 'run-1', sessionId: SESSION, workingDirectory: '/srv/work', request, spec: runSpec, keyName: 'alice', cancelOnDisconnect: true, createdAt: T0 })
    const run = await store.getRun('run-1')
    t.ok(run, 'the run is there')
    t.type(run?.rowid, 'number')
    t.strictSame({ ...run, rowid: 0 }, {
      id: 'run-1',
      rowid: 0,
      status: 'queued',
      sessionId: SESSION,
      workingDirectory: '/srv/work',
      request,
      spec: runSpec,
      keyName: 'alice',
      cancelOnDisconnect: true,
      marker: null,
      owner: null,
      leaseUntil: null,
      createdAt: T0,
      startedAt: null,
      endedAt: null,
      result: null
    }, 'every field, the spec with its env values included (needed to queue the run again)')

    await store.insertRun({ id: 'run-2', sessionId: OTHER_SESSION, workingDirectory: '/srv/other', request: { prompt: 'x' }, spec: spec('run-2', { sessionId: OTHER_SESSION, sessionMode: 'fork', forkedFrom: SESSION }), keyName: null, cancelOnDisconnect: false, createdAt: T0 - 5 })
    const run2 = await store.getRun('run-2')
    t.match(run2, { id: 'run-2', sessionId: OTHER_SESSION, workingDirectory: '/srv/other', keyName: null, cancelOnDisconnect: false, createdAt: T0 - 5 })
    t.strictSame(run2?.request, { prompt: 'x' })
    t.strictSame(run2?.spec, spec('run-2', { sessionId: OTHER_SESSION, sessionMode: 'fork', forkedFrom: SESSION }))
    t.ok(run2!.rowid > run!.rowid, 'rowid follows insertion order, not createdAt')
    t.equal(await store.getRun('no-such-run'), undefined)
  })

  test(`${name}: markStarted records the start and drops the env values; markFinished records the result`, async t => {
    const { store, reopen } = await open(t)
    await store.insertRun(newRun('run-1'))
    const queued = await store.getRun('run-1')
    t.ok(JSON.stringify(queued).includes(SECRET), 'setup: a queued run keeps its env values')

    await store.markStarted('run-1', { startedAt: T0 + 50, marker: 'marker-abc', sessionId: OTHER_SESSION, workingDirectory: '/srv/real/work', owner: OWNER_A, leaseUntil: T0 + 30_000 })
    const started = await store.getRun('run-1')
    t.ok(started)
    const { spec: startedSpec, ...rest } = started!
    t.strictSame(rest, {
      id: 'run-1',
      rowid: queued!.rowid,
      status: 'running',
      sessionId: OTHER_SESSION,
      workingDirectory: '/srv/real/work',
      request: { prompt: 'say hi' },
      keyName: 'alice',
      cancelOnDisconnect: false,
      marker: 'marker-abc',
      owner: OWNER_A,
      leaseUntil: T0 + 30_000,
      createdAt: T0,
      startedAt: T0 + 50,
      endedAt: null,
      result: null
    }, 'status, start time, marker, the session it really writes to (a fork), the checked path, owner and lease')
    t.ok(startedSpec === null || Object.keys(startedSpec.env).length === 0, 'the spec is dropped, or kept without env')
    t.notOk(JSON.stringify(started).includes(SECRET), 'env values are not kept once the run started')
    const other = await reopen()
    t.notOk(JSON.stringify(await other.getRun('run-1')).includes(SECRET), 'nor in the stored data')

    const res = result('run-1', 'timed_out', { error_code: 'timeout', usage: null, session_id: OTHER_SESSION })
    await store.markFinished('run-1', res, T0 + 9000)
    const done = await store.getRun('run-1')
    t.match(done, { status: 'timed_out', endedAt: T0 + 9000, startedAt: T0 + 50, marker: 'marker-abc', sessionId: OTHER_SESSION, workingDirectory: '/srv/real/work', keyName: 'alice' }, 'the status comes from the result; the marker stays')
    t.strictSame(done?.result, res, 'the result round-trips')
    t.notOk(JSON.stringify(done).includes(SECRET))
    t.equal((await other.getRun('run-1'))?.status, 'timed_out', 'another store sees it finished')

    // A run cancelled while still queued is finished without ever starting.
    await store.insertRun(newRun('run-2', { createdAt: T0 + 1 }))
    const cancelledResult = result('run-2', 'cancelled', { error_code: 'cancelled' })
    await store.markFinished('run-2', cancelledResult, T0 + 100)
    const cancelled = await store.getRun('run-2')
    t.match(cancelled, { status: 'cancelled', startedAt: null, endedAt: T0 + 100, marker: null })
    t.strictSame(cancelled?.result, cancelledResult)
    t.notOk(JSON.stringify(cancelled).includes(SECRET), 'a run finished from the queue drops its env values too')
  })

  test(`${name}: a run read back as ended is listed as ended, while its end is still being written`, async t => {
    const { store } = await open(t)
    await store.insertRun(newRun('run-1'))
    // Not awaited: what a client that heard of the end asks next must agree with it.
    const writing = store.markFinished('run-1', result('run-1', 'succeeded'), T0 + 100)
    t.equal((await store.getRun('run-1'))?.status, 'succeeded', 'read back as ended')
    t.strictSame((await store.listRuns({ status: 'succeeded', limit: 10 })).map(r => r.id), ['run-1'], 'and listed as ended')
    await writing
  })

  test(`${name}: a result event ends its run when it is written, whoever reads it`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-1', { status: 'running' })
    await addRun(store, 'run-2', { status: 'running' })
    appendN(store, 'run-1', 1, 2)
    const res = result('run-1', 'failed', { error_code: 'cli_error' })
    store.appendEvent('run-1', 3, 'result', JSON.stringify(res))
    store.appendEvent('run-2', 1, 'message', JSON.stringify({ status: 'succeeded' }))
    t.equal((await store.getRun('run-1'))?.status, 'running', 'waiting: not yet')
    await store.flush()
    const other = await reopen()
    const ended = await other.getRun('run-1')
    t.match(ended, { status: 'failed', endedAt: Date.parse(res.timestamp), spec: null }, 'written: another store reads it ended, at the result\'s time')
    t.strictSame(ended?.result, res, 'with the event\'s result')
    t.notOk(JSON.stringify(ended).includes(SECRET))
    t.equal((await other.getSession(SESSION))?.updatedAt, Date.parse(res.timestamp), 'its end is its session\'s activity')
    t.strictSame((await other.listRuns({ status: 'failed', limit: 10 })).map(r => r.id), ['run-1'])
    t.equal((await other.getRun('run-2'))?.status, 'running', 'another event that looks like a result ends nothing')
  })

  test(`${name}: appended events are readable at once, before any flush`, async t => {
    const { store } = await open(t)
    await addRun(store, 'run-1', { status: 'running' })
    t.equal(await store.lastSeq('run-1'), 0, 'no events yet')
    t.strictSame(await store.eventsAfter('run-1', 0, 100), [])
    store.appendEvent('run-1', 1, 'run', '{"run_id":"run-1"}')
    store.appendEvent('run-1', 2, 'message', '{"type":"assistant"}')
    store.appendEvent('run-1', 3, 'text', '{"text":"hi"}')
    const expected = [
      { seq: 1, type: 'run', data: '{"run_id":"run-1"}' },
      { seq: 2, type: 'message', data: '{"type":"assistant"}' },
      { seq: 3, type: 'text', data: '{"text":"hi"}' }
    ]
    t.strictSame(await store.eventsAfter('run-1', 0, 100), expected, 'seq, type and data, in order')
    t.equal(await store.lastSeq('run-1'), 3)
    t.strictSame(await store.eventsAfter('other-run', 0, 100), [], 'another run has none')
    t.equal(await store.lastSeq('other-run'), 0)

    await store.flush()
    t.strictSame(await store.eventsAfter('run-1', 0, 100), expected, 'the same after a flush, none twice')
    store.appendEvent('run-1', 4, 'result', '{"status":"succeeded"}')
    t.strictSame(await store.eventsAfter('run-1', 0, 100), [...expected, { seq: 4, type: 'result', data: '{"status":"succeeded"}' }], 'flushed and waiting events together')
  })

  test(`${name}: eventsAfter honours after and limit, flushed or not`, async t => {
    const { store } = await open(t)
    await addRun(store, 'run-a', { status: 'running' })
    await addRun(store, 'run-b', { status: 'running' })
    // Another run's events interleaved: they must never leak into run-a's reads.
    for (let seq = 1; seq <= 10; seq++) {
      store.appendEvent('run-a', seq, 'message', JSON.stringify({ n: seq }))
      store.appendEvent('run-b', seq, 'message', '{"other":true}')
    }
    await store.flush()
    for (let seq = 11; seq <= 20; seq++) {
      store.appendEvent('run-b', seq, 'message', '{"other":true}')
      store.appendEvent('run-a', seq, 'message', JSON.stringify({ n: seq }))
    }
    t.strictSame(await store.eventsAfter('run-a', 0, 100), range(1, 20).map(evt), 'everything, in order')
    t.strictSame(seqs(await store.eventsAfter('run-a', 5, 3)), [6, 7, 8], 'flushed only')
    t.strictSame(seqs(await store.eventsAfter('run-a', 8, 5)), [9, 10, 11, 12, 13], 'across the flush')
    t.strictSame(seqs(await store.eventsAfter('run-a', 10, 2)), [11, 12], 'right after the flush')
    t.strictSame(seqs(await store.eventsAfter('run-a', 12, 5)), [13, 14, 15, 16, 17], 'waiting only')
    t.strictSame(seqs(await store.eventsAfter('run-a', 18, 100)), [19, 20])
    t.strictSame(await store.eventsAfter('run-a', 20, 5), [], 'nothing after the last')
    t.strictSame(seqs(await store.eventsAfter('run-a', 0, 1)), [1], 'limit 1')

    for (const limit of [1, 3, 7, 10, 100]) {
      const { seen, pages } = await allEvents(store, 'run-a', limit)
      t.ok(pages.every(p => p.length <= limit), `pages of at most ${limit}`)
      t.strictSame(seen, range(1, 20), `paging by ${limit}: every event exactly once, no gaps`)
    }
  })

  test(`${name}: eventsAfter holds at most maxBytes of data, but always one event`, async t => {
    const { store } = await open(t)
    await addRun(store, 'run-1', { status: 'running' })
    const ten = (seq: number): string => JSON.stringify(`${seq}`.padStart(8, 'x'))
    for (let seq = 1; seq <= 3; seq++) store.appendEvent('run-1', seq, 'message', ten(seq))
    await store.flush()
    for (let seq = 4; seq <= 6; seq++) store.appendEvent('run-1', seq, 'message', ten(seq))
    store.appendEvent('run-1', 7, 'message', JSON.stringify('y'.repeat(98)))
    t.equal(ten(1).length, 10, 'setup: events 1..6 hold 10 bytes each, event 7 100')

    t.strictSame(seqs(await store.eventsAfter('run-1', 0, 100)), range(1, 7), 'no maxBytes: no byte bound')
    t.strictSame(seqs(await store.eventsAfter('run-1', 0, 100, 5)), [1], 'an event bigger than maxBytes still comes alone')
    t.strictSame(seqs(await store.eventsAfter('run-1', 0, 100, 10)), [1], 'exactly maxBytes')
    t.strictSame(seqs(await store.eventsAfter('run-1', 0, 100, 25)), [1, 2], '20 bytes fit in 25, 30 do not')
    t.strictSame(seqs(await store.eventsAfter('run-1', 0, 100, 30)), [1, 2, 3], 'exactly 30')
    t.strictSame(seqs(await store.eventsAfter('run-1', 2, 100, 25)), [3, 4], 'across the flush')
    t.strictSame(seqs(await store.eventsAfter('run-1', 3, 100, 29)), [4, 5], 'waiting events only')
    t.strictSame(seqs(await store.eventsAfter('run-1', 0, 2, 1000)), [1, 2], 'limit still applies')
    t.strictSame(seqs(await store.eventsAfter('run-1', 5, 100, 50)), [6], 'the big event does not fit after another')
    t.strictSame(seqs(await store.eventsAfter('run-1', 6, 100, 50)), [7], 'but comes alone')
    t.strictSame(await store.eventsAfter('run-1', 7, 100, 50), [])

    const { seen, pages } = await allEvents(store, 'run-1', 100, 25)
    t.strictSame(pages, [[1, 2], [3, 4], [5, 6], [7]], 'pages bounded by bytes')
    t.strictSame(seen, range(1, 7), 'every event exactly once')
  })

  test(`${name}: an append of a (runId, seq) that exists already is ignored`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-a', { status: 'running' })
    await addRun(store, 'run-b', { status: 'running' })
    appendN(store, 'run-a', 1, 3)
    await store.flush()
    store.appendEvent('run-a', 2, 'text', '"replayed, flushed already"')
    store.appendEvent('run-b', 1, 'message', '{"b":1}')
    store.appendEvent('run-a', 4, 'message', JSON.stringify({ n: 4 }))
    store.appendEvent('run-a', 4, 'text', '"replayed, still waiting"')
    store.appendEvent('run-a', 5, 'message', JSON.stringify({ n: 5 }))
    t.strictSame(await store.eventsAfter('run-a', 0, 100), range(1, 5).map(evt), 'the first append of a seq wins, before the flush')
    t.equal(await store.lastSeq('run-a'), 5)
    await t.resolves(store.flush(), 'a batch with replays is written')
    t.strictSame(await store.eventsAfter('run-a', 0, 100), range(1, 5).map(evt), 'and after it')
    const other = await reopen()
    t.strictSame(await other.eventsAfter('run-a', 0, 100), range(1, 5).map(evt), 'the batch with the replays was written whole')
    t.strictSame(await other.eventsAfter('run-b', 0, 100), [{ seq: 1, type: 'message', data: '{"b":1}' }], 'another run\'s events of the same batch too')
  })

  test(`${name}: flush and markFinished make events durable`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-1', { status: 'running' })
    await addRun(store, 'run-2', { status: 'running' })
    appendN(store, 'run-1', 1, 3)
    await store.flush()
    // The first store stays open: what the second reads is stored, not in the first's memory.
    const second = await reopen()
    t.strictSame(await second.eventsAfter('run-1', 0, 100), range(1, 3).map(evt), 'flushed events are stored')
    t.equal(await second.lastSeq('run-1'), 3)

    appendN(store, 'run-2', 1, 4)
    store.appendEvent('run-2', 5, 'result', '{"status":"succeeded"}')
    await store.markFinished('run-2', result('run-2', 'succeeded'), T0 + 5000)
    const third = await reopen()
    t.equal((await third.getRun('run-2'))?.status, 'succeeded')
    t.strictSame(await third.eventsAfter('run-2', 0, 100), [...range(1, 4).map(evt), { seq: 5, type: 'result', data: '{"status":"succeeded"}' }], 'a finished run\'s log is complete in the stored data')
    t.equal(await third.lastSeq('run-2'), 5)
  })

  test(`${name}: at most MAX_UNFLUSHED_EVENTS wait: the one that reaches it has them written without a flush`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-1', { status: 'running' })
    await addRun(store, 'run-2', { status: 'running' })
    appendN(store, 'run-1', 1, MAX_UNFLUSHED_EVENTS - 2)
    store.appendEvent('run-2', 1, 'message', '{}')
    const other = await reopen()
    t.equal(await other.lastSeq('run-1'), 0, `${MAX_UNFLUSHED_EVENTS - 1} wait, unwritten (the factory slows flushing down, and asks for batches bigger than the cap)`)
    appendN(store, 'run-1', MAX_UNFLUSHED_EVENTS - 1, MAX_UNFLUSHED_EVENTS - 1)
    t.equal(await until(async () => await other.lastSeq('run-1'), n => n === MAX_UNFLUSHED_EVENTS - 1), MAX_UNFLUSHED_EVENTS - 1, `the ${MAX_UNFLUSHED_EVENTS}th appended has every waiting event written, on its own`)
    t.equal(await other.lastSeq('run-2'), 1, 'every run\'s')
  })

  test(`${name}: lastSeq is the highest seq of the run, waiting events included`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-a', { status: 'running' })
    await addRun(store, 'run-b', { status: 'running' })
    t.equal(await store.lastSeq('run-a'), 0)
    appendN(store, 'run-a', 1, 3)
    appendN(store, 'run-b', 1, 10)
    t.equal(await store.lastSeq('run-a'), 3, 'waiting')
    await store.flush()
    t.equal(await store.lastSeq('run-a'), 3, 'flushed')
    appendN(store, 'run-a', 4, 5)
    t.equal(await store.lastSeq('run-a'), 5, 'flushed and waiting')
    t.equal(await store.lastSeq('run-b'), 10, 'each run its own')
    await store.flush()
    t.equal(await (await reopen()).lastSeq('run-a'), 5, 'from the stored data')
  })

  test(`${name}: listRuns: newest first, filters, and before-cursor pagination`, async t => {
    const { store } = await open(t)
    const runs: Array<[string, RunOpts]> = [
      ['r1', { status: 'succeeded', keyName: 'alice' }],
      ['r2', { status: 'failed', keyName: 'bob', sessionId: OTHER_SESSION }],
      ['r3', { status: 'running', keyName: 'alice' }],
      ['r4', { status: 'succeeded', keyName: null, sessionId: OTHER_SESSION }],
      ['r5', { status: 'queued', keyName: 'bob' }],
      ['r6', { status: 'succeeded', keyName: 'alice', sessionId: OTHER_SESSION }],
      ['r7', { status: 'cancelled', keyName: 'alice' }]
    ]
    // Equal createdAt on purpose: the order must come from insertion, not from the clock.
    for (const [id, o] of runs) await addRun(store, id, { createdAt: T0, ...o })
    const all = ['r7', 'r6', 'r5', 'r4', 'r3', 'r2', 'r1']

    const listed = await store.listRuns({ limit: 100 })
    t.strictSame(ids(listed), all)
    t.strictSame(listed, await Promise.all(all.map(async id => await store.getRun(id))), 'whole records, as getRun gives them')
    t.strictSame(ids(await store.listRuns({ limit: 2 })), ['r7', 'r6'], 'limit')
    t.strictSame(ids(await store.listRuns({ status: 'succeeded', limit: 100 })), ['r6', 'r4', 'r1'])
    t.strictSame(ids(await store.listRuns({ status: 'running', limit: 100 })), ['r3'])
    t.strictSame(ids(await store.listRuns({ sessionId: OTHER_SESSION, limit: 100 })), ['r6', 'r4', 'r2'])
    t.strictSame(ids(await store.listRuns({ keyName: 'bob', limit: 100 })), ['r5', 'r2'])
    t.strictSame(ids(await store.listRuns({ status: 'succeeded', keyName: 'alice', limit: 100 })), ['r6', 'r1'], 'filters combine')
    t.strictSame(ids(await store.listRuns({ status: 'succeeded', keyName: 'alice', sessionId: SESSION, limit: 100 })), ['r1'], 'all three')
    t.strictSame(ids(await store.listRuns({ status: 'interrupted', limit: 100 })), [])
    t.strictSame(ids(await store.listRuns({ sessionId: 'no-such-session', limit: 100 })), [])
    t.strictSame(ids(await store.listRuns({ limit: 100, before: listed[2]!.rowid })), ['r4', 'r3', 'r2', 'r1'], 'before: strictly older than the cursor')
    t.strictSame(ids(await store.listRuns({ limit: 100, before: listed.at(-1)!.rowid })), [], 'nothing before the oldest')

    for (const limit of [1, 2, 3, 7, 10]) {
      const { seen, pages } = await allPages(store, { limit })
      t.ok(pages.every(n => n <= limit), `pages of at most ${limit}`)
      t.strictSame(seen, all, `pages of ${limit}: every run exactly once, newest first`)
    }
    t.strictSame((await allPages(store, { limit: 2, keyName: 'alice' })).seen, ['r7', 'r6', 'r3', 'r1'], 'pagination with a filter')
  })

  test(`${name}: leftovers: queued runs, and running runs this owner held or whose lease ended`, async t => {
    const { store } = await open(t)
    const now = T0 + 100_000
    // createdAt runs backwards so that an order by the clock would be wrong.
    await addRun(store, 'q1', { createdAt: T0 + 9 })
    await addRun(store, 'mine-live', { createdAt: T0 + 8, status: 'running', owner: OWNER_A, leaseUntil: now + 60_000 })
    await addRun(store, 'mine-lapsed', { createdAt: T0 + 7, status: 'running', owner: OWNER_A, leaseUntil: now - 1 })
    await addRun(store, 'theirs-live', { createdAt: T0 + 6, status: 'running', owner: OWNER_B, leaseUntil: now + 60_000 })
    await addRun(store, 'theirs-lapsed', { createdAt: T0 + 5, status: 'running', owner: OWNER_B, leaseUntil: now - 1 })
    await addRun(store, 'theirs-ends-now', { createdAt: T0 + 4, status: 'running', owner: OWNER_B, leaseUntil: now })
    await addRun(store, 'q2', { createdAt: T0 + 3 })
    await addRun(store, 'mine-done', { createdAt: T0 + 2, status: 'succeeded', owner: OWNER_A, leaseUntil: now - 1 })
    await addRun(store, 'theirs-done', { createdAt: T0 + 1, status: 'interrupted', owner: OWNER_B, leaseUntil: now - 1 })
    await addRun(store, 'q3', { createdAt: T0 })

    const mine = await store.leftovers(OWNER_A, now)
    t.strictSame(sortedIds(mine.running), ['mine-lapsed', 'mine-live', 'theirs-lapsed'], 'A takes its own runs, live or not, and lapsed ones; not B\'s live ones, nor a lease ending right at now')
    t.strictSame(ids(mine.queued), ['q1', 'q2', 'q3'], 'every queued run, in insertion order (first come, first requeued)')
    t.strictSame(mine.queued[0]!.spec, spec('q1'), 'queued runs keep the spec needed to queue them again')
    t.strictSame(mine.running.find(r => r.id === 'mine-live'), await store.getRun('mine-live'), 'whole records: the marker to find the processes by')
    t.equal(mine.running.find(r => r.id === 'theirs-lapsed')?.marker, 'marker-theirs-lapsed')

    const theirs = await store.leftovers(OWNER_B, now)
    t.strictSame(sortedIds(theirs.running), ['mine-lapsed', 'theirs-ends-now', 'theirs-lapsed', 'theirs-live'], 'B: its own and A\'s lapsed one')
    t.strictSame(ids(theirs.queued), ['q1', 'q2', 'q3'])

    const stranger = await store.leftovers('instance-c', now)
    t.strictSame(sortedIds(stranger.running), ['mine-lapsed', 'theirs-lapsed'], 'a third instance: only the lapsed ones')
    t.strictSame(sortedIds((await store.leftovers('instance-c', now + 1)).running), ['mine-lapsed', 'theirs-ends-now', 'theirs-lapsed'], 'a lease ending at now has ended a moment later')
    t.strictSame((await store.leftovers('instance-c', T0)).running, [], 'before any lease ended, nothing of others')
  })

  test(`${name}: renewLeases extends only that owner's running runs`, async t => {
    const { store } = await open(t)
    await addRun(store, 'a1', { status: 'running', owner: OWNER_A, leaseUntil: T0 + 100 })
    await addRun(store, 'a2', { status: 'running', owner: OWNER_A, leaseUntil: T0 + 200 })
    await addRun(store, 'b1', { status: 'running', owner: OWNER_B, leaseUntil: T0 + 100 })
    await addRun(store, 'a-done', { status: 'succeeded', owner: OWNER_A, leaseUntil: T0 + 100 })
    await addRun(store, 'queued')
    t.strictSame(sortedIds((await store.leftovers('instance-c', T0 + 500)).running), ['a1', 'a2', 'b1'], 'setup: every lease has ended at +500')

    await store.renewLeases(OWNER_A, T0 + 1000)
    t.equal((await store.getRun('a1'))?.leaseUntil, T0 + 1000)
    t.equal((await store.getRun('a2'))?.leaseUntil, T0 + 1000)
    t.equal((await store.getRun('b1'))?.leaseUntil, T0 + 100, 'another owner\'s lease is not touched')
    t.match(await store.getRun('queued'), { status: 'queued', owner: null }, 'a queued run is not taken')
    t.match(await store.getRun('a-done'), { status: 'succeeded', leaseUntil: T0 + 100 }, 'a finished run stays finished, its lease as it was')
    t.strictSame(sortedIds((await store.leftovers('instance-c', T0 + 500)).running), ['b1'], 'A\'s runs are held again')
    t.strictSame(sortedIds((await store.leftovers('instance-c', T0 + 1001)).running), ['a1', 'a2', 'b1'], 'until the renewed lease ends')
    t.strictSame(ids((await store.leftovers('instance-c', T0 + 500)).queued), ['queued'])

    await store.renewLeases('no-such-owner', T0 + 5000)
    t.strictSame(sortedIds((await store.leftovers('instance-c', T0 + 1001)).running), ['a1', 'a2', 'b1'], 'an owner without runs changes nothing')
  })

  test(`${name}: markStarted starts only a queued run that nobody else holds`, async t => {
    const { store } = await open(t)
    const start = (owner: string): Parameters<RunStore['markStarted']>[1] => ({ startedAt: T0 + 50, marker: 'm-late', sessionId: SESSION, workingDirectory: '/srv/work', owner, leaseUntil: T0 + 90_000 })
    const refusal = async (p: Promise<void>): Promise<unknown> => await p.then(() => undefined, (err: unknown) => err)
    await addRun(store, 'done', { status: 'cancelled' })
    t.ok(await refusal(store.markStarted('done', start(OWNER_A))) instanceof ClaimLost, 'an ended run: ClaimLost')
    t.match(await store.getRun('done'), { status: 'cancelled', marker: 'marker-done' }, 'and it stays ended')
    await addRun(store, 'theirs', { status: 'running', owner: OWNER_B, leaseUntil: T0 + 60_000 })
    t.ok(await refusal(store.markStarted('theirs', start(OWNER_A))) instanceof ClaimLost, 'a run another instance runs: ClaimLost')
    t.match(await store.getRun('theirs'), { owner: OWNER_B, marker: 'marker-theirs', leaseUntil: T0 + 60_000 }, 'and it stays theirs')
    await store.insertRun(newRun('queued'))
    await t.resolves(store.markStarted('queued', start(OWNER_A)), 'a queued run nobody holds starts')
    t.match(await store.getRun('queued'), { status: 'running', owner: OWNER_A, marker: 'm-late' })
  })

  test(`${name}: prune deletes old and excess finished runs with their events and deliveries, never queued or running ones`, async t => {
    const { store, reopen } = await open(t)
    const now = T0 + 30 * DAY
    const delivery = (attempt: number): WebhookDelivery => ({ attempt, attemptedAt: now - DAY, url: 'https://hooks.example/x', statusCode: 200, error: null, durationMs: 12 })
    const all = ['old-done', 'old-queued', 'old-running', 'done-1', 'done-2', 'done-3']
    await addRun(store, 'old-done', { createdAt: now - 10 * DAY, status: 'succeeded' })
    await addRun(store, 'old-queued', { createdAt: now - 20 * DAY })
    await addRun(store, 'old-running', { createdAt: now - 20 * DAY, status: 'running' })
    await addRun(store, 'done-1', { createdAt: now - 3 * DAY, status: 'failed' })
    await addRun(store, 'done-2', { createdAt: now - 2 * DAY, status: 'cancelled' })
    await addRun(store, 'done-3', { createdAt: now - DAY, status: 'succeeded' })
    for (const id of all) {
      appendN(store, id, 1, 5)
      await store.recordDelivery(id, delivery(1))
    }
    await store.flush()

    // 7 days' retention removes old-done; keeping 2 finished runs removes done-1 as well.
    t.equal(await store.prune({ maxAgeMs: 7 * DAY, maxRuns: 2, now }), 2, 'how many runs went')
    for (const id of ['old-done', 'done-1']) {
      t.equal(await store.getRun(id), undefined, `${id} is gone`)
      t.strictSame(await store.eventsAfter(id, 0, 100), [], `${id}'s events went with it`)
      t.equal(await store.lastSeq(id), 0)
      t.strictSame(await store.deliveries(id), [], `${id}'s deliveries went with it`)
    }
    for (const id of ['old-queued', 'old-running', 'done-2', 'done-3']) {
      t.ok(await store.getRun(id), `${id} is kept`)
      t.strictSame(await store.eventsAfter(id, 0, 100), range(1, 5).map(evt), `${id} keeps its events`)
      t.strictSame(await store.deliveries(id), [delivery(1)], `${id} keeps its deliveries`)
    }
    t.equal(await store.prune({ maxAgeMs: 7 * DAY, maxRuns: 2, now }), 0, 'a second prune has nothing to do')

    // The harshest settings still spare live runs, whatever their age.
    t.equal(await store.prune({ maxAgeMs: 0, maxRuns: 0, now: now + DAY }), 2)
    t.strictSame(sortedIds(await store.listRuns({ limit: 100 })), ['old-queued', 'old-running'])
    const other = await reopen()
    t.strictSame(sortedIds(await other.listRuns({ limit: 100 })), ['old-queued', 'old-running'], 'the stored data agrees')
    for (const id of ['old-done', 'done-1', 'done-2', 'done-3']) {
      t.strictSame(await other.eventsAfter(id, 0, 100), [], `no events of ${id} are stored`)
      t.strictSame(await other.deliveries(id), [], `no deliveries of ${id} are stored`)
    }
    t.strictSame(await other.eventsAfter('old-running', 0, 100), range(1, 5).map(evt))
    t.strictSame(await other.deliveries('old-queued'), [delivery(1)])
  })

  test(`${name}: prune by age alone and by count alone`, async t => {
    const { store } = await open(t)
    const now = T0 + 100 * DAY
    // Ages 5..1 days.
    for (let i = 1; i <= 5; i++) await addRun(store, `d${i}`, { createdAt: now - (6 - i) * DAY, status: 'succeeded' })
    await addRun(store, 'live', { createdAt: now - 50 * DAY, status: 'running' })
    t.equal(await store.prune({ maxAgeMs: 2.5 * DAY, maxRuns: 1000, now }), 3, 'older than 2.5 days: d1, d2, d3')
    t.strictSame(ids(await store.listRuns({ limit: 100 })), ['live', 'd5', 'd4'])
    t.equal(await store.prune({ maxAgeMs: 1000 * DAY, maxRuns: 1, now }), 1, 'count only: the newest finished run stays')
    t.strictSame(ids(await store.listRuns({ limit: 100 })), ['live', 'd5'])
    t.equal(await store.prune({ maxAgeMs: 1000 * DAY, maxRuns: 1, now }), 0, 'a live run does not count towards maxRuns')
  })

  test(`${name}: spendSince sums the cost per key of the runs ended since then`, async t => {
    const { store } = await open(t)
    const since = T0 + 10_000
    // Costs that add up exactly in binary floating point.
    await addRun(store, 'a-before', { keyName: 'alice', status: 'succeeded', endedAt: since - 1, cost: 8 })
    await addRun(store, 'a-at', { keyName: 'alice', status: 'succeeded', endedAt: since, cost: 0.25 })
    await addRun(store, 'a-after', { keyName: 'alice', status: 'failed', endedAt: since + 5000, cost: 0.5 })
    await addRun(store, 'a-no-cost', { keyName: 'alice', status: 'cancelled', endedAt: since + 6000, cost: null })
    await addRun(store, 'a-running', { keyName: 'alice', status: 'running' })
    await addRun(store, 'a-queued', { keyName: 'alice' })
    await addRun(store, 'b-1', { keyName: 'bob', status: 'succeeded', endedAt: since + 1, cost: 1.25 })
    await addRun(store, 'b-2', { keyName: 'bob', status: 'timed_out', endedAt: since + 2, cost: 2 })
    await addRun(store, 'c-old', { keyName: 'carol', status: 'succeeded', endedAt: since - 5000, cost: 4 })
    await addRun(store, 'anonymous', { keyName: null, status: 'succeeded', endedAt: since + 1, cost: 16 })

    const spend = await store.spendSince(since)
    t.strictSame(nonZero(spend), [['alice', 0.75], ['bob', 3.25]], 'per key, from the boundary on; runs without a key or not ended count for nobody')
    t.equal(spend.get('carol') ?? 0, 0, 'a key whose runs ended before spent nothing since')
    t.strictSame(nonZero(await store.spendSince(since + 2)), [['alice', 0.5], ['bob', 2]])
    t.strictSame(nonZero(await store.spendSince(0)), [['alice', 8.75], ['bob', 3.25], ['carol', 4]])
    t.strictSame(nonZero(await store.spendSince(since + 60_000)), [])
  })

  test(`${name}: sessionOwners gives the key of each session's first run`, async t => {
    const { store } = await open(t)
    const S1 = SESSION
    const S2 = OTHER_SESSION
    const S3 = 'bbbbbbbb-cccc-4ddd-8eee-ffffffffffff' // S1 < S2 < S3, as `entries` sorts them
    // Same createdAt: "first" is by insertion.
    await addRun(store, 'r1', { sessionId: S1, keyName: 'alice', status: 'succeeded' })
    await addRun(store, 'r2', { sessionId: S2, keyName: null, status: 'failed' })
    await addRun(store, 'r3', { sessionId: S1, keyName: 'bob', status: 'running' })
    await addRun(store, 'r4', { sessionId: S2, keyName: 'alice' })
    await addRun(store, 'r5', { sessionId: S3, keyName: 'bob' })
    await addRun(store, 'r6', { sessionId: S1, keyName: null })
    const owners = await store.sessionOwners()
    t.strictSame(entries(owners), [[S1, 'alice'], [S2, null], [S3, 'bob']], 'one entry a session: the first run\'s key (null: no key)')
  })

  test(`${name}: a run records its session: owner, directory, first prompt, and its runs' figures`, async t => {
    const { store, reopen } = await open(t)
    t.equal(await store.getSession(SESSION), undefined)
    await store.insertRun(newRun('r1', { createdAt: T0, request: { prompt: 'x'.repeat(500) } }))
    await store.insertRun(newRun('r2', { createdAt: T0 + 1000, keyName: 'bob', request: { prompt: 'second' } }))
    await store.insertRun(newRun('r3', { sessionId: OTHER_SESSION, keyName: 'admin', sessionOwner: 'carol', createdAt: T0 + 2000 }))
    let s = await store.getSession(SESSION)
    t.match(s, { id: SESSION, keyName: 'alice', workingDirectory: '/srv/work', title: null, createdAt: T0, updatedAt: T0 + 1000, deletedAt: null, runCount: 2, lastRunId: 'r2', busy: true })
    t.equal(s?.firstPrompt?.length, 200, 'the first prompt is kept, cut short')
    t.equal((await store.getSession(OTHER_SESSION))?.keyName, 'carol', 'sessionOwner wins over the run\'s key')
    await store.markStarted('r1', { startedAt: T0 + 10, marker: 'm', sessionId: SESSION, workingDirectory: '/srv/work', owner: OWNER_A, leaseUntil: T0 + 60_000 })
    await store.markFinished('r1', result('r1', 'succeeded'), T0 + 5000)
    await store.markStarted('r2', { startedAt: T0 + 5010, marker: 'm', sessionId: SESSION, workingDirectory: '/srv/work', owner: OWNER_A, leaseUntil: T0 + 60_000 })
    await store.markFinished('r2', result('r2', 'failed'), T0 + 9000)
    s = await (await reopen()).getSession(SESSION)
    t.match(s, { busy: false, runCount: 2, updatedAt: T0 + 9000 }, 'an ended run is activity; nothing runs now')
    t.strictSame(entries(await store.sessionOwners()), [[SESSION, 'alice'], [OTHER_SESSION, 'carol']])
  })

  test(`${name}: sessions: most recently active first, filters, (updatedAt, id) cursor, rename, delete`, async t => {
    const { store } = await open(t)
    const ids = ['a', 'b', 'c', 'd', 'e'].map(c => `${c.repeat(8)}-0000-4000-8000-000000000000`)
    for (const [i, id] of ids.entries()) {
      await store.insertSession({ id, keyName: i % 2 === 0 ? 'alice' : 'bob', workingDirectory: i < 3 ? '/w/one' : '/w/two', title: null, firstPrompt: `p${i}`, createdAt: T0 + (i < 2 ? 0 : i) })
    }
    // a and b share their time: the id breaks the tie, newest-looking (greatest) first.
    t.strictSame((await store.listSessions({ limit: 10 })).map(s => s.id), [ids[4], ids[3], ids[2], ids[1], ids[0]])
    t.strictSame((await store.listSessions({ limit: 10, keyName: 'alice' })).map(s => s.id), [ids[4], ids[2], ids[0]])
    t.strictSame((await store.listSessions({ limit: 10, workingDirectory: '/w/one' })).map(s => s.id), [ids[2], ids[1], ids[0]])
    const seen: string[] = []
    let before: { updatedAt: number, id: string } | undefined
    for (let guard = 0; guard < 10; guard++) {
      const page = await store.listSessions({ limit: 2, ...(before !== undefined ? { before } : {}) })
      if (page.length === 0) break
      seen.push(...page.map(s => s.id))
      before = { updatedAt: page.at(-1)!.updatedAt, id: page.at(-1)!.id }
    }
    t.strictSame(seen, [ids[4], ids[3], ids[2], ids[1], ids[0]], 'pages follow each other without gaps or repeats')

    await store.updateSession(ids[0]!, { title: 'renamed', updatedAt: T0 + 100 })
    t.match(await store.getSession(ids[0]!), { title: 'renamed', updatedAt: T0 + 100 })
    t.equal((await store.listSessions({ limit: 1 }))[0]?.id, ids[0], 'activity moves a session to the top')
    const known = await store.getSession(ids[0]!)
    await store.insertSession({ id: ids[0]!, keyName: 'bob', workingDirectory: '/elsewhere', title: null, firstPrompt: null, createdAt: T0 })
    await store.insertSession({ id: ids[0]!, keyName: 'bob', workingDirectory: '/elsewhere', title: 'other', firstPrompt: 'other', createdAt: T0 + 10_000 })
    t.strictSame(await store.getSession(ids[0]!), known, 'recording a known session changes nothing, its activity time included')

    await store.updateSession(ids[1]!, { deletedAt: T0 + 200 })
    t.notOk((await store.listSessions({ limit: 10 })).some(s => s.id === ids[1]), 'a deleted session is not listed')
    t.match(await store.getSession(ids[1]!), { deletedAt: T0 + 200, keyName: 'bob' }, 'but its record (and owner) stays')
    t.equal((await store.sessionOwners()).get(ids[1]!), 'bob')
    await store.insertRun(newRun('again', { sessionId: ids[1]!, keyName: 'bob', workingDirectory: '/w/new', createdAt: T0 + 300, request: { prompt: 'anew' } }))
    t.match(await store.getSession(ids[1]!), { deletedAt: null, workingDirectory: '/w/new', firstPrompt: 'anew', createdAt: T0 + 300, updatedAt: T0 + 300, runCount: 1 }, 'a run naming a deleted session makes it anew')
    // A fork recorded without a run (the sessions API) follows the same rule as a run.
    await store.updateSession(ids[2]!, { deletedAt: T0 + 400 })
    await store.insertSession({ id: ids[2]!, keyName: 'alice', workingDirectory: '/w/forked', title: null, firstPrompt: 'forked', createdAt: T0 + 500 })
    t.match(await store.getSession(ids[2]!), { keyName: 'alice', deletedAt: null, workingDirectory: '/w/forked', title: null, firstPrompt: 'forked', createdAt: T0 + 500, updatedAt: T0 + 500 }, 'recording a deleted session makes it anew')
    await t.resolves(store.updateSession('no-such-session', { title: 'x' }))
  })

  test(`${name}: pruning a session's runs keeps the session and its owner`, async t => {
    const { store } = await open(t)
    await addRun(store, 'r1', { keyName: 'alice', status: 'succeeded', createdAt: T0 })
    t.equal(await store.prune({ maxAgeMs: 0, maxRuns: 0, now: T0 + DAY }), 1)
    t.match(await store.getSession(SESSION), { keyName: 'alice', runCount: 0, lastRunId: null, busy: false })
    t.equal((await store.sessionOwners()).get(SESSION), 'alice')
  })

  test(`${name}: recordDelivery + deliveries round-trip, in attempt order`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-1', { status: 'succeeded' })
    await addRun(store, 'run-2', { status: 'failed' })
    const d1: WebhookDelivery = { attempt: 1, attemptedAt: T0 + 1000, url: 'https://hooks.example/a', statusCode: null, error: 'connect ECONNREFUSED 127.0.0.1:9', durationMs: 3 }
    const d2: WebhookDelivery = { attempt: 2, attemptedAt: T0 + 5000, url: 'https://hooks.example/a', statusCode: 500, error: 'status 500', durationMs: 120 }
    const d3: WebhookDelivery = { attempt: 3, attemptedAt: T0 + 25_000, url: 'https://hooks.example/a', statusCode: 204, error: null, durationMs: 41 }
    const other: WebhookDelivery = { attempt: 1, attemptedAt: T0 + 7000, url: 'https://hooks.example/b', statusCode: 200, error: null, durationMs: 9 }
    await store.recordDelivery('run-1', d2)
    await store.recordDelivery('run-2', other)
    await store.recordDelivery('run-1', d3)
    await store.recordDelivery('run-1', d1)
    t.strictSame(await store.deliveries('run-1'), [d1, d2, d3], 'every field, by attempt whatever the order they were recorded in')
    t.strictSame(await store.deliveries('run-2'), [other], 'each run its own')
    t.strictSame(await store.deliveries('run-3'), [])
    t.strictSame(await (await reopen()).deliveries('run-1'), [d1, d2, d3], 'stored')
  })

  test(`${name}: pending webhooks are stored, moved, resumed soonest first, and gone once done or pruned`, async t => {
    const { store, reopen } = await open(t)
    await addRun(store, 'run-1', { status: 'succeeded', endedAt: T0 })
    await addRun(store, 'run-2', { status: 'failed', endedAt: T0 })
    const w1: PendingWebhook = { id: 'd-1', event: 'run.finished', runId: 'run-1', url: 'https://hooks.example/a', body: '{"event":"run.finished","n":1}', attempt: 1, dueAt: T0 + 100 }
    const w2: PendingWebhook = { id: 'd-2', event: 'approval.requested', runId: 'run-2', url: 'https://hooks.example/b', body: '{"event":"run.finished","n":2}', attempt: 1, dueAt: T0 + 50 }
    await store.queueWebhook(w1)
    await store.queueWebhook(w2)
    t.strictSame(await store.pendingWebhooks(), [w2, w1], 'soonest first')
    const moved = { ...w1, attempt: 2, dueAt: T0 + 10 }
    await store.queueWebhook(moved)
    t.strictSame(await store.pendingWebhooks(), [moved, w2], 'a retry replaces the delivery\'s entry')
    const again = await reopen()
    t.strictSame(await again.pendingWebhooks(), [moved, w2], 'stored')
    await again.webhookDone('d-2')
    t.strictSame(await again.pendingWebhooks(), [moved], 'done: gone')
    await again.prune({ maxAgeMs: 0, maxRuns: 0, now: T0 + 1_000_000 })
    t.strictSame(await again.pendingWebhooks(), [], 'a pruned run\'s webhook goes with it')
  })

  test(`${name}: close, then a store reopened on the same data has everything`, async t => {
    const { store, reopen } = await open(t)
    await store.insertRun(newRun('queued', { cancelOnDisconnect: true, keyName: null }))
    await addRun(store, 'running', { status: 'running', owner: OWNER_A, leaseUntil: T0 + 5000 })
    await addRun(store, 'done', { status: 'succeeded', sessionId: OTHER_SESSION, keyName: 'bob', endedAt: T0 + 20_000, cost: 0.5 })
    appendN(store, 'done', 1, 3)
    await store.flush()
    appendN(store, 'running', 1, 4)
    const delivery: WebhookDelivery = { attempt: 1, attemptedAt: T0 + 21_000, url: 'https://hooks.example/x', statusCode: 200, error: null, durationMs: 7 }
    await store.recordDelivery('done', delivery)
    const before = await store.listRuns({ limit: 100 })
    t.strictSame(ids(before), ['done', 'running', 'queued'])
    await store.close()

    const again = await reopen()
    await t.resolves(again.ping())
    t.strictSame(await again.listRuns({ limit: 100 }), before, 'every run, every field, same order and cursors')
    t.strictSame(await again.eventsAfter('running', 0, 100), range(1, 4).map(evt), 'close wrote the waiting events')
    t.strictSame(await again.eventsAfter('done', 0, 100), range(1, 3).map(evt))
    t.equal(await again.lastSeq('running'), 4)
    t.strictSame(await again.deliveries('done'), [delivery])
    t.strictSame(nonZero(await again.spendSince(0)), [['bob', 0.5]])
    t.strictSame(entries(await again.sessionOwners()), [[SESSION, null], [OTHER_SESSION, 'bob']])
    const left = await again.leftovers('instance-z', T0 + 10_000)
    t.strictSame([ids(left.running), ids(left.queued)], [['running'], ['queued']])

    await again.insertRun(newRun('after-restart'))
    const newest = await again.listRuns({ limit: 100 })
    t.strictSame(ids(newest), ['after-restart', 'done', 'running', 'queued'], 'a run inserted after the restart is the newest')
    t.ok(newest[0]!.rowid > before[0]!.rowid, 'and its rowid follows on')
    t.strictSame(ids(await again.listRuns({ limit: 100, before: newest[0]!.rowid })), ['done', 'running', 'queued'], 'cursors taken before the restart still page')
  })
}

/** A store whose event-log writes a test can make fail, as a full disk makes them. */
export interface FailingWrites {
  /** A store that flushes on its own, often (a few ms), reporting to the given `WriteReports`. */
  store: RunStore
  /** From now on every write of events fails ("disk full"), counted by the database itself. */
  fail: () => Promise<void>
  /** Writes work again. */
  mend: () => Promise<void>
  /** How many writes of events failed, as the database counted them. */
  failedWrites: () => Promise<number>
  /** Events of a run written to the database (not those waiting in memory). */
  written: (runId: string) => Promise<number>
  /** A run's status as written to the database. */
  status: (runId: string) => Promise<string | undefined>
}

/**
 * What every backend does when writing its event log fails: it retries on its own, backing off,
 * reports the failure once and the recovery once (with the number of failed attempts), says it
 * is unavailable meanwhile, and loses nothing. A backend's test file calls this once.
 */
export function writeFailureContract (name: string, open: (t: Test, reports: Required<WriteReports>) => Promise<FailingWrites>): void {
  test(`${name}: a failing event-log write backs off: reported once, a handful of attempts, recovery reported once with the count`, async t => {
    const errors: Error[] = []
    const recovered: number[] = []
    const s = await open(t, { onError: err => errors.push(err), onRecovered: n => recovered.push(n) })
    const { store } = s
    await addRun(store, 'run-1', { status: 'running' })
    await s.fail()
    // A chatty run for one second: a few events every couple of milliseconds, each batch flushed
    // as the run log does, while the store's own timer ticks every few milliseconds.
    let seq = 0
    let refused = 0
    const end = Date.now() + 1000
    while (Date.now() < end) {
      appendN(store, 'run-1', seq + 1, seq + 5)
      seq += 5
      await store.flush().catch(() => { refused++ })
      await new Promise(resolve => setTimeout(resolve, 2))
    }
    t.ok(refused > 20, `flushes fail meanwhile (${refused} of them)`)
    t.equal(errors.length, 1, `the failure is reported once (${errors.length} reports)`)
    t.match(errors[0]?.message, /disk is full/, 'with its error')
    await t.rejects(store.ping(), /disk is full/, 'the store says it is unavailable')
    const tried = await s.failedWrites()
    // 25 ms, doubling: attempts at about 0, 25, 75, 175, 375 and 775 ms.
    t.ok(tried >= 3 && tried <= 10, `a handful of attempts in a second of failure, not one per tick or per flush (${tried})`)
    t.equal(await s.written('run-1'), 0, 'nothing was written')

    await s.mend()
    // The next attempt is at most 2 s away (the backoff's cap), and 1.6 s after a second of failure.
    const deadline = Date.now() + 4000
    while (recovered.length === 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    t.same(recovered, [await s.failedWrites()], 'the recovery is reported once, with the number of failed attempts')
    t.equal(errors.length, 1, 'and nothing else was reported')
    await t.resolves(store.ping(), 'the store is available again')
    await store.flush()
    t.equal(await s.written('run-1'), seq, `every event written in the end (${seq}), none lost`)
    t.strictSame(seqs(await store.eventsAfter('run-1', 0, seq + 1)), range(1, seq), 'in order')

    // A second spell is reported again, once.
    await s.fail()
    appendN(store, 'run-1', seq + 1, seq + 5)
    await store.flush().catch(() => {})
    await s.mend()
    await store.flush().catch(() => {})
    const again = Date.now() + 1000
    while (recovered.length < 2 && Date.now() < again) {
      await new Promise(resolve => setTimeout(resolve, 10))
      await store.flush().catch(() => {})
    }
    t.equal(errors.length, 2, 'a new spell of failure is reported once more')
    t.equal(recovered.length, 2, 'and its recovery')
  })

  test(`${name}: while writes fail, a run's end is read back at once, kept, and written with its events once they work`, async t => {
    const s = await open(t, { onError: () => {}, onRecovered: () => {} })
    const { store } = s
    await addRun(store, 'run-1', { status: 'running' })
    await s.fail()
    appendN(store, 'run-1', 1, 3)
    const res = result('run-1', 'succeeded')
    await t.rejects(store.markFinished('run-1', res, T0 + 5000), /disk is full/, 'markFinished fails: the run\'s events cannot be written')
    await t.rejects(store.flush(), /disk is full/, 'the next flush fails at once, untried')
    await t.rejects(store.ping(), /disk is full/, 'the store says it is unavailable')
    t.match(await store.getRun('run-1'), { status: 'succeeded', endedAt: T0 + 5000 }, 'the run reads as ended all the same')
    t.strictSame(await store.listRuns({ status: 'running', limit: 10 }), [], 'and is no longer listed as running')
    t.match((await store.listRuns({ limit: 10 }))[0], { id: 'run-1', status: 'succeeded' })
    t.equal(await s.status('run-1'), 'running', 'nothing was written')

    await s.mend()
    t.equal(await until(async () => await s.status('run-1'), v => v === 'succeeded'), 'succeeded', 'the store writes the end on its own once it can')
    t.equal(await s.written('run-1'), 3, 'after the run\'s events')
    await t.resolves(store.ping(), 'and is available again')
    t.strictSame((await store.getRun('run-1'))?.result, res)
  })
}

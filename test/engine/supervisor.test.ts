import { test } from 'tap'
import { setTimeout as sleep, setImmediate as tick } from 'node:timers/promises'
import type { RunResult } from '../../src/domain/run.js'
import { engineKit, until, within, type Kit } from '../fixtures/engine-kit.js'
import { FakeExecutor, gate, holdUntilEnded, succeed, waitFor, type Script } from '../fixtures/fake-executor.js'

// The life of a run held here (Supervisor), through the Engine facade on the one-machine ports,
// with a memory store and a fake executor: no CLI, no HTTP.

/** The engine's `started`/`finished` announcements of one run, in order. */
const announced = (k: Kit, runId: string): string[] => k.emitted.filter(e => e.runId === runId).map(e => e.event)

test('a run goes queued → running → succeeded; its events and result are stored, the result event last', async t => {
  const first = gate()
  const seenAtStart: Array<{ handle: string | undefined, stored: string | undefined }> = []
  const executor = new FakeExecutor(spec => spec.prompt === 'first'
    ? waitFor(first.promise)
    : async run => {
      seenAtStart.push({ handle: k.engine.get(spec.runId)?.status, stored: k.store.run(spec.runId)?.status })
      return await succeed('the answer')(run)
    })
  // Read by the second run's script only, once the kit exists.
  const k = engineKit(t, { env: { MAX_CONCURRENT_RUNS: 1 }, executor })

  const a = await k.submit('first')
  await within(executor.started(1), 3000, 'the executor call')
  const b = await k.submit('second')
  t.equal(k.engine.get(b.id)?.status, 'queued', 'waits for the one slot')
  t.equal(k.store.run(b.id)?.status, 'queued', 'recorded as queued')
  t.equal(await k.engine.queuePosition(b.id), 1)
  await sleep(20)
  t.equal(executor.runs.length, 1, 'not handed to the executor while the slot is taken')

  first.open()
  const result = await within(b.result, 3000, 'its result') as RunResult
  t.same(seenAtStart, [{ handle: 'running', stored: 'running' }], 'running, and recorded so, when the executor gets it')
  t.equal(result.status, 'succeeded')
  t.equal(result.success, true)
  t.equal(result.output, 'the answer')
  t.equal(result.error_code, null)
  t.equal(result.session_id, k.engine.get(b.id)?.spec.sessionId ?? result.session_id)

  t.ok(await until(() => k.store.run(b.id)?.status === 'succeeded'), 'its end is stored')
  await sleep(10)
  const stored = k.store.run(b.id)!
  t.equal(stored.owner, 'test-instance')
  t.type(stored.marker, 'string', 'the start was recorded with its marker')
  t.equal(stored.result?.status, 'succeeded')
  t.equal(k.store.finished.filter(f => f.id === b.id).length, 1, 'markFinished once')

  const events = k.store.eventsOf(b.id)
  t.same(events.map(e => e.type), ['run', 'message', 'message', 'text', 'message', 'result'], 'the run event, the CLI lines and text, then the result')
  t.same(events.map(e => e.seq), [1, 2, 3, 4, 5, 6], 'numbered from 1 without gaps')
  t.equal(events.at(-1)?.data, b.resultJson, 'the result event carries the result exactly')
  t.same(JSON.parse(events.at(-1)!.data), result)
  t.same(announced(k, b.id), ['started', 'finished'], 'started and finished announced once each, in order')
  await within(a.result)
  t.same(announced(k, a.id), ['started', 'finished'])
  t.equal(k.engine.get(b.id), undefined, 'let go once ended')
})

test('a run whose start cannot be recorded fails with store_unavailable and never reaches the executor', async t => {
  const k = engineKit(t)
  k.store.fail.markStarted = new Error('disk full')
  const run = await k.submit('hello')
  const result = await within(run.result, 3000, 'its result') as RunResult
  t.equal(result.status, 'failed')
  t.equal(result.error_code, 'store_unavailable')
  t.match(result.error, /could not record the start of the run \(disk full\)/)
  t.equal(k.executor.runs.length, 0, 'the executor was never called')
  t.ok(await until(() => k.store.run(run.id)?.status === 'failed'), 'its end is stored all the same')
  t.same(k.store.eventsOf(run.id).map(e => e.type), ['run', 'result'])
  t.same(announced(k, run.id), ['finished'], 'never announced as started')

  // The slot was given back: the next run goes.
  delete k.store.fail.markStarted
  const next = await k.submit('again')
  t.equal((await within(next.result, 3000, 'its result') as RunResult).status, 'succeeded')
})

test('the time limit counts from submission: a run waiting in the queue times out there', async t => {
  const first = gate()
  const k = engineKit(t, { env: { MAX_CONCURRENT_RUNS: 1 }, executor: new FakeExecutor(spec => spec.prompt === 'long' ? waitFor(first.promise) : succeed()) })
  const long = await k.submit('long')
  await within(k.executor.started(1), 3000, 'the executor call')
  const submitted = Date.now()
  const waiting = await k.submit('short', {}, spec => { spec.timeoutS = 0.3 })
  const result = await within(waiting.result, 3000, 'its result') as RunResult
  const took = Date.now() - submitted
  t.equal(result.status, 'timed_out')
  t.equal(result.error_code, 'timeout')
  t.ok(took >= 250 && took < 2000, `timed out after its limit (${took} ms)`)
  t.equal(k.executor.runs.length, 1, 'it never reached the executor')
  t.equal(k.store.calls.markStarted, 1, 'its start was never recorded')
  t.equal(k.engine.get(long.id)?.status, 'running', 'the run holding the slot goes on')
  t.ok(await until(() => k.store.run(waiting.id)?.status === 'timed_out'))
  t.same(announced(k, waiting.id), ['finished'])
  first.open()
  t.equal((await within(long.result) as RunResult).status, 'succeeded')
  await sleep(20)
  t.equal(k.executor.runs.length, 1, 'once the slot is free, the timed-out run does not start')
})

test('time spent queued counts against the limit of a run that starts late', async t => {
  const first = gate()
  const k = engineKit(t, { env: { MAX_CONCURRENT_RUNS: 1 }, executor: new FakeExecutor(spec => spec.prompt === 'first' ? waitFor(first.promise) : holdUntilEnded()) })
  await k.submit('first')
  await within(k.executor.started(1), 3000, 'the executor call')
  const submitted = Date.now()
  const late = await k.submit('late', {}, spec => { spec.timeoutS = 0.8 })
  await sleep(400)
  first.open()
  await within(k.executor.started(2), 3000, 'the executor call')
  const result = await within(late.result, 3000, 'its result') as RunResult
  const took = Date.now() - submitted
  t.equal(result.status, 'timed_out')
  // Counted from its start it would end 1200 ms after submission.
  t.ok(took >= 750 && took < 1100, `ended ~800 ms after submission, not after its start (${took} ms)`)
  t.ok(result.execution_time < 1.1, `its execution time counts from submission (${result.execution_time} s)`)
})

test('cancelling a queued run ends it without calling the executor', async t => {
  const first = gate()
  const k = engineKit(t, { env: { MAX_CONCURRENT_RUNS: 1 }, executor: new FakeExecutor(spec => spec.prompt === 'long' ? waitFor(first.promise) : succeed()) })
  const long = await k.submit('long')
  await within(k.executor.started(1), 3000, 'the executor call')
  const queued = await k.submit('queued')
  t.equal(k.engine.get(queued.id)?.status, 'queued')
  t.equal(await k.engine.cancel(queued.id, 'changed my mind'), true, 'it was live')
  const result = await within(queued.result, 3000, 'its result') as RunResult
  t.equal(result.status, 'cancelled')
  t.equal(result.error, 'Run cancelled: changed my mind')
  t.equal(k.store.run(queued.id)?.status, 'cancelled', 'stored by the time the cancel answers')
  t.same((await k.engine.stats()), { active: 1, queued: 0 }, 'it left the queue')
  t.equal(k.engine.get(long.id)?.status, 'running')
  // The slot frees: the cancelled run still never starts.
  first.open()
  await within(long.result)
  await sleep(20)
  t.equal(k.executor.runs.length, 1, 'the executor never saw it')
  t.equal(k.store.calls.markStarted, 1, 'its start was never recorded')
  t.same(announced(k, queued.id), ['finished'])
  t.equal(await k.engine.cancel(queued.id, 'again'), false, 'no longer live')
})

test('cancelling a running run resolves once its end is stored', async t => {
  const k = engineKit(t, { executor: new FakeExecutor(() => holdUntilEnded('partial text')) })
  const slowDisk = gate()
  t.teardown(slowDisk.open)
  k.store.hold.markFinished = slowDisk.promise
  const run = await k.submit('hello')
  const fake = await within(k.executor.started(1), 3000, 'the executor call')
  let answered: boolean | undefined
  const cancelling = k.engine.cancel(run.id, 'stop').then(v => { answered = v })
  const result = await within(run.result, 3000, 'its result') as RunResult
  t.equal(result.status, 'cancelled')
  t.equal(result.output, 'partial text', 'with the text it had written')
  t.ok(fake.isEnded, 'the executor was told to end')
  await sleep(30)
  t.equal(answered, undefined, 'the cancel has not answered while the end is not stored')
  t.equal(k.store.run(run.id)?.status, 'running')
  slowDisk.open()
  await within(cancelling, 3000, 'the cancel')
  t.equal(answered, true)
  t.equal(k.store.run(run.id)?.status, 'cancelled', 'stored when the cancel answers')
  t.equal(k.store.finished.filter(f => f.id === run.id).length, 1)
})

test('one session\'s runs go one at a time, in order; other sessions run beside them', async t => {
  const order: string[] = []
  const running = new Map<string, number>()
  let overlapInSession = false
  let mostAtOnce = 0
  const script: Script = async run => {
    const s = run.spec.sessionId
    running.set(s, (running.get(s) ?? 0) + 1)
    if (running.get(s)! > 1) overlapInSession = true
    mostAtOnce = Math.max(mostAtOnce, [...running.values()].reduce((a, b) => a + b, 0))
    order.push(run.spec.prompt)
    run.init()
    await sleep(25)
    run.say(run.spec.prompt)
    run.result()
    running.set(s, running.get(s)! - 1)
    return undefined
  }
  const k = engineKit(t, { env: { MAX_CONCURRENT_RUNS: 4 }, executor: new FakeExecutor(() => script) })
  const a1 = await k.submit('a1')
  const session = k.engine.get(a1.id)!.spec.sessionId
  const a2 = await k.submit('a2', { session_id: session })
  const other = await k.submit('other')
  const a3 = await k.submit('a3', { session_id: session })
  t.equal(k.engine.get(a3.id)?.status, 'queued', 'behind the earlier runs of its session')
  const results = await Promise.all([a1, a2, a3, other].map(async r => await within(r.result, 3000, 'its result') as RunResult))
  t.same(results.map(r => r.status), ['succeeded', 'succeeded', 'succeeded', 'succeeded'])
  t.same(results.slice(0, 3).map(r => r.session_id), [session, session, session])
  t.same(order.filter(p => p.startsWith('a')), ['a1', 'a2', 'a3'], 'in submission order')
  t.equal(overlapInSession, false, 'never two of one session at once')
  t.ok(mostAtOnce >= 2, 'another session ran beside them')
  for (const r of [a1, a2, a3, other]) t.same(announced(k, r.id), ['started', 'finished'], 'each announced once')
})

test('a follow-up message reaches the executor through the inbox; after the end it is refused', async t => {
  const reply = gate()
  const k = engineKit(t, {
    executor: new FakeExecutor(() => async run => {
      run.init()
      await reply.promise
      return await succeed('ok')({ ...run, init: () => {} })
    })
  })
  const run = await k.submit('hello')
  await within(k.executor.started(1), 3000, 'the executor call')
  const id = await k.engine.message(run.id, { prompt: 'and then?' })
  reply.open()
  const result = await within(run.result, 3000, 'its result') as RunResult
  t.equal(result.output, 'ok: and then?', 'the last turn answered the follow-up')
  const turn = k.store.eventsOf(run.id).find(e => e.type === 'user_message')
  t.same(JSON.parse(turn?.data ?? '{}'), { message_id: id, prompt: 'and then?', attachments: 0 })
  await t.rejects(k.engine.message(run.id, { prompt: 'too late' }), { code: 'run_finished' })
})

test('an interrupt without a prompt ends a running run as cancelled', async t => {
  const k = engineKit(t, {
    executor: new FakeExecutor(() => async run => {
      run.init()
      run.say('half')
      await run.interrupted
      run.result({ result: '' })
      return undefined
    })
  })
  const run = await k.submit('hello')
  await within(k.executor.started(1), 3000, 'the executor call')
  await k.engine.interrupt(run.id)
  const result = await within(run.result, 3000, 'its result') as RunResult
  t.equal(result.status, 'cancelled')
  t.equal(result.error, 'Run cancelled: interrupted by the client')
  await t.rejects(k.engine.interrupt(run.id), { code: 'run_finished' })
})

test('an approval asked by the executor is answered through the engine', async t => {
  const k = engineKit(t, {
    executor: new FakeExecutor(() => async run => {
      run.init()
      const answer = await run.ask('Bash', { command: 'ls' })
      run.say(answer.behavior)
      run.result()
      return undefined
    })
  })
  const asked: string[] = []
  k.engine.on('approval', (s, record) => asked.push(`${s.id}:${record.toolName}`))
  const request = { prompt: 'hello', approvals: 'ask' as const }
  const run = await k.engine.submit(await k.engine.prepare(request), { request, key: null, cancelOnDisconnect: false })
  t.ok(await until(() => asked.length === 1), 'announced')
  t.same(asked, [`${run.id}:Bash`])
  t.equal(await k.engine.pendingApprovals(run.id), 1)
  const [pending] = await k.store.listApprovals({ runId: run.id, limit: 10 })
  const record = await k.engine.answerApproval(run.id, pending!.id, { decision: 'allow', by: null })
  t.equal(record.status, 'allowed')
  const result = await within(run.result, 3000, 'its result') as RunResult
  t.equal(result.output, 'allow', 'the executor got the answer')
  const types = k.store.eventsOf(run.id).map(e => e.type)
  t.ok(types.indexOf('approval_requested') < types.indexOf('approval_resolved'), 'asked, then resolved, in the log')
  await tick()
  t.equal((await k.store.getApproval(pending!.id))?.status, 'allowed', 'stored as answered')
})

import { test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { DomainError, RunFinished } from '../../src/domain/errors.js'
import type { ApprovalAnswer, ApprovalRecord } from '../../src/domain/records.js'
import type { RunResult, RunSpec, UserTurn } from '../../src/domain/run.js'
import type { ApprovalDesk } from '../../src/engine/approvals.js'
import { Control } from '../../src/engine/control.js'
import type { Peers, RunPlace, RunQueue } from '../../src/engine/ports.js'
import { RunHandle } from '../../src/engine/run-handle.js'
import type { RunLog } from '../../src/engine/run-log.js'
import type { Supervisor } from '../../src/engine/supervisor.js'
import { memoryLogger } from '../fixtures/engine-kit.js'
import { MemoryStore } from '../fixtures/memory-store.js'

// Control routes messages, interrupts, cancels and approval answers to wherever a run is: here
// (its handle), a shared queue (`RunQueue`), or another instance (`Peers`). All of them fakes here.

const LIMITS = { maxMessages: 4, maxBytes: 4096 }
const KILL_GRACE_MS = 3000

/** A live handle of a run held here (its log goes nowhere). */
function handleOf (runId: string): RunHandle {
  const spec = { runId, sessionId: `session-${runId}`, prompt: 'p', timeoutS: 60 } as RunSpec
  return new RunHandle(spec, false, null, memoryLogger(), { append: () => ({}) } as unknown as RunLog, 0)
}

/** Plain-object fakes of every port Control uses, each call recorded as `name(args…)`. */
function harness (o: {
  here?: RunHandle[]
  place?: RunPlace
  left?: Awaited<ReturnType<RunQueue['leaveMessage']>>
  cancelQueued?: boolean | boolean[]
  peerAnswer?: unknown
  stored?: Promise<void>
} = {}) {
  const calls: Array<{ name: string, args: unknown[] }> = []
  const record = (name: string, ...args: unknown[]): void => { calls.push({ name, args }) }
  const runs = new Map((o.here ?? []).map(h => [h.id, h]))
  const supervisor = {
    get: (id: string) => runs.get(id),
    has: (id: string) => runs.has(id),
    stored: async (id: string) => {
      record('stored', id)
      await o.stored
    }
  } as unknown as Supervisor
  const cancelAnswers = Array.isArray(o.cancelQueued) ? [...o.cancelQueued] : undefined
  const queue = {
    locate: async (runId: string) => {
      record('locate', runId)
      return o.place ?? { ended: true }
    },
    leaveMessage: async (runId: string, id: string, turn: UserTurn, limits: unknown) => {
      record('leaveMessage', runId, id, turn, limits)
      return o.left ?? { finished: true }
    },
    cancelQueued: async (runId: string, reason: string) => {
      record('cancelQueued', runId, reason)
      return cancelAnswers !== undefined ? cancelAnswers.shift() ?? false : o.cancelQueued === true
    }
  } as unknown as RunQueue
  const peers: Peers = {
    call: async (to, op, args, timeoutMs) => {
      record('peer', to, op, args, ...(timeoutMs !== undefined ? [timeoutMs] : []))
      return o.peerAnswer
    },
    serve: () => {},
    stats: () => undefined
  }
  const answered = { id: 'appr-1', status: 'allowed' } as ApprovalRecord
  const approvals = {
    answer: async (runId: string, approvalId: string, answer: ApprovalAnswer) => {
      record('answer', runId, approvalId, answer)
      return answered
    },
    pendingOf: (runId: string) => {
      record('pendingOf', runId)
      return 2
    }
  } as unknown as ApprovalDesk
  const store = new MemoryStore()
  const control = new Control({ runs: supervisor, queue, peers, approvals, store, queueLimits: LIMITS, killGraceMs: KILL_GRACE_MS })
  const names = (): string[] => calls.map(c => c.name)
  return { control, calls, names, store, answered }
}

/** The refusal of `p` (fails the test when it resolves). */
async function refusal (t: { fail: (message: string) => unknown }, p: Promise<unknown>): Promise<DomainError | undefined> {
  return await p.then(() => { t.fail('expected a refusal'); return undefined }, (err: DomainError) => err)
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

test('a message to a run held here goes to its inbox, and nowhere else', async t => {
  const h = handleOf('r1')
  const { control, names } = harness({ here: [h] })
  const id = await control.message('r1', { prompt: 'more' })
  t.match(id, UUID)
  t.same(h.inbox.waiting, { messages: 1, bytes: 4 })
  t.same(h.inbox.takeOrClose(), { id, prompt: 'more' }, 'the inbox holds it under the id returned')
  t.same(names(), [], 'no queue, no peer')
})

test('a message to a run held here that takes no more input is refused (run_finished)', async t => {
  const h = handleOf('r1')
  h.inbox.close()
  const { control } = harness({ here: [h] })
  const err = await refusal(t, control.message('r1', { prompt: 'more' }))
  t.ok(err instanceof RunFinished)
  t.equal(err?.code, 'run_finished')
})

test('a message to a run elsewhere goes to its owner through the peers', async t => {
  const { control, calls } = harness({ left: { owner: 'instance-b' }, peerAnswer: 'message-from-b' })
  const turn = { prompt: 'more' }
  t.equal(await control.message('r1', turn), 'message-from-b', 'the owner\'s id for it')
  t.equal(calls.length, 2)
  t.equal(calls[0]!.name, 'leaveMessage')
  t.same(calls[1], { name: 'peer', args: ['instance-b', 'message', { runId: 'r1', turn }] })
})

test('a message to a run waiting in a shared queue is left there, within the limits, under the id returned', async t => {
  const { control, calls } = harness({ left: { queued: true } })
  const turn = { prompt: 'more' }
  const id = await control.message('r1', turn)
  t.match(id, UUID)
  t.same(calls, [{ name: 'leaveMessage', args: ['r1', id, turn, LIMITS] }], 'left with its id, no peer asked')
})

test('a message to an ended run is refused (run_finished)', async t => {
  const { control, names } = harness({ left: { finished: true } })
  const err = await refusal(t, control.message('r1', { prompt: 'more' }))
  t.ok(err instanceof RunFinished)
  t.equal(err?.code, 'run_finished')
  t.same(names(), ['leaveMessage'])
})

test('an interrupt of an ended run is refused (run_finished) and touches nothing', async t => {
  const { control, names } = harness({ place: { ended: true } })
  const err = await refusal(t, control.interrupt('r1'))
  t.equal(err?.code, 'run_finished')
  t.same(names(), ['locate'])

  const h = handleOf('r2')
  h.finish({ status: 'succeeded' } as RunResult)
  const here = harness({ here: [h] })
  t.equal((await refusal(t, here.control.interrupt('r2')))?.code, 'run_finished', 'a finished run held here too')
})

test('an interrupt of a run elsewhere goes to its owner', async t => {
  const { control, calls } = harness({ place: { elsewhere: 'instance-b' } })
  const turn = { prompt: 'instead' }
  await control.interrupt('r1', turn)
  t.same(calls.at(-1), { name: 'peer', args: ['instance-b', 'interrupt', { runId: 'r1', turn }] })
})

test('an interrupt without a prompt cancels a run waiting in a shared queue; with one, the prompt waits as a message', async t => {
  const a = harness({ place: { queued: true }, cancelQueued: true })
  await a.control.interrupt('r1')
  t.same(a.calls.at(-1), { name: 'cancelQueued', args: ['r1', 'interrupted before it started'] })

  const b = harness({ place: { queued: true }, cancelQueued: false })
  t.equal((await refusal(t, b.control.interrupt('r1')))?.code, 'run_finished', 'gone from the queue meanwhile: nothing to interrupt')

  const c = harness({ place: { queued: true }, left: { queued: true } })
  await c.control.interrupt('r1', { prompt: 'instead' })
  t.same(c.names(), ['locate', 'leaveMessage'], 'the prompt is left with the run, which is not cancelled')
})

test('an interrupt of a run here: a running one has its turn stopped, a queued one is cancelled', async t => {
  const running = handleOf('r1')
  running.markRunning()
  let stopped = 0
  running.inbox.interruptTurn = () => { stopped++ }
  const queued = handleOf('r2')
  const { control, names } = harness({ here: [running, queued] })
  await control.interrupt('r1')
  t.equal(stopped, 1, 'the executor was asked to stop the turn')
  t.equal(running.inbox.stopRequested, true, 'and the run to end after it')
  await control.interrupt('r2')
  t.same(queued.endedBy, { by: 'cancel', reason: 'interrupted before it started' })
  t.same(names(), [])
})

test('a cancel of a run held here waits until its end is stored', async t => {
  const h = handleOf('r1')
  let storedNow!: () => void
  const stored = new Promise<void>(resolve => { storedNow = resolve })
  const { control, names } = harness({ here: [h], stored })
  let answer: boolean | undefined
  const cancelling = control.cancel('r1', 'stop').then(v => { answer = v })
  t.same(h.endedBy, { by: 'cancel', reason: 'stop' }, 'the run is told at once')
  await sleep(5)
  t.equal(answer, undefined, 'not before the run has ended')
  h.finish({ status: 'cancelled' } as RunResult)
  await sleep(5)
  t.equal(answer, undefined, 'not before its end is stored')
  storedNow()
  await cancelling
  t.equal(answer, true)
  t.same(names(), ['stored'], 'no queue, no peer')
})

test('a cancel of a run waiting in a shared queue ends it there', async t => {
  const { control, names } = harness({ cancelQueued: true })
  t.equal(await control.cancel('r1', 'stop'), true)
  t.same(names(), ['cancelQueued'])
})

test('a cancel of a run elsewhere goes to its owner, waiting the kill grace and 10 s more', async t => {
  const { control, calls } = harness({ cancelQueued: false, place: { elsewhere: 'instance-b' }, peerAnswer: true })
  t.equal(await control.cancel('r1', 'stop'), true, 'the owner\'s answer')
  t.same(calls.map(c => c.name), ['cancelQueued', 'locate', 'peer'])
  t.same(calls.at(-1)?.args, ['instance-b', 'cancel', { runId: 'r1', reason: 'stop' }, KILL_GRACE_MS + 10_000])
})

test('a cancel of a run claimed and given back meanwhile ends it in the queue; of an ended run, answers false', async t => {
  const back = harness({ cancelQueued: [false, true], place: { queued: true } })
  t.equal(await back.control.cancel('r1', 'stop'), true)
  t.same(back.names(), ['cancelQueued', 'locate', 'cancelQueued'])

  const ended = harness({ cancelQueued: false, place: { ended: true } })
  t.equal(await ended.control.cancel('r1', 'stop'), false, 'not live')
  t.notOk(ended.names().includes('peer'))
})

test('a cancel of a run that was claimed here meanwhile cancels it here', async t => {
  const h = handleOf('r1')
  // Not here when the cancel looked (runs.get), here by the time it located the run.
  const { control } = harness({ cancelQueued: false, place: { here: h } })
  const cancelling = control.cancel('r1', 'stop')
  await sleep(5)
  t.same(h.endedBy, { by: 'cancel', reason: 'stop' }, 'the run was told to end')
  h.finish({ status: 'cancelled' } as RunResult)
  t.equal(await cancelling, true)
})

test('an interrupt of a run that was claimed here meanwhile interrupts it here', async t => {
  const h = handleOf('r1')
  h.markRunning()
  const { control } = harness({ cancelQueued: false, place: { here: h } })
  await control.interrupt('r1').catch((err: Error) => t.fail(`refused: ${err.message}`))
  t.equal(h.inbox.stopRequested, true, 'the run was asked to stop')
})

test('an approval answer goes where the run waits: here, or its owner', async t => {
  const answer: ApprovalAnswer = { decision: 'allow', by: 'k' }
  const h = handleOf('r1')
  const here = harness({ here: [h] })
  t.equal(await here.control.answerApproval('r1', 'appr-1', answer), here.answered)
  t.same(here.calls, [{ name: 'answer', args: ['r1', 'appr-1', answer] }])
  t.equal(await here.control.pendingApprovals('r1'), 2, 'pending ones counted by the desk')

  const far = harness({ place: { elsewhere: 'instance-b' }, peerAnswer: { id: 'appr-1', status: 'denied' } })
  t.same(await far.control.answerApproval('r1', 'appr-1', answer), { id: 'appr-1', status: 'denied' })
  t.same(far.calls.at(-1), { name: 'peer', args: ['instance-b', 'answer', { runId: 'r1', approvalId: 'appr-1', answer }] })
  t.notOk(far.names().includes('answer'), 'not answered here')
  await far.store.saveApproval({ id: 'a', runId: 'r1', status: 'pending' } as ApprovalRecord)
  t.equal(await far.control.pendingApprovals('r1'), 1, 'a run not here: its pending approvals from the store')
})

test('answerPeer dispatches the four operations, and refuses an unknown one', async t => {
  const turn = { prompt: 'more' }
  const cancel = harness({ cancelQueued: true })
  t.equal(await cancel.control.answerPeer('cancel', { runId: 'r1', reason: 'stop' }), true)
  t.same(cancel.calls, [{ name: 'cancelQueued', args: ['r1', 'stop'] }])
  const cancelNoReason = harness({ cancelQueued: true })
  await cancelNoReason.control.answerPeer('cancel', { runId: 'r1' })
  t.same(cancelNoReason.calls[0]?.args, ['r1', 'cancelled'], 'a default reason')

  const message = harness({ left: { queued: true } })
  const id = await message.control.answerPeer('message', { runId: 'r1', turn })
  t.same(message.calls, [{ name: 'leaveMessage', args: ['r1', id, turn, LIMITS] }])

  const h = handleOf('r1')
  h.markRunning()
  const interrupt = harness({ here: [h] })
  t.equal(await interrupt.control.answerPeer('interrupt', { runId: 'r1' }), undefined)
  t.equal(h.inbox.stopRequested, true, 'interrupted here')

  const answer = harness()
  const a: ApprovalAnswer = { decision: 'deny', by: null }
  t.equal(await answer.control.answerPeer('answer', { runId: 'r1', approvalId: 'appr-1', answer: a }), answer.answered)
  t.same(answer.calls, [{ name: 'answer', args: ['r1', 'appr-1', a] }])

  const unknown = harness()
  const err = await refusal(t, unknown.control.answerPeer('explode', { runId: 'r1' }))
  t.ok(err instanceof DomainError)
  t.equal(err?.code, 'invalid_request')
  t.match(err?.message, /unknown cluster request explode/)
  t.same(unknown.calls, [], 'nothing was done')
})

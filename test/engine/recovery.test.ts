import { test } from 'tap'
import { Leftovers, recoverRuns } from '../../src/engine/recovery.js'
import type { ApprovalRecord, RunRecord } from '../../src/domain/records.js'
import type { RunResult, RunSpec } from '../../src/domain/run.js'
import { MemoryStore } from '../fixtures/memory-store.js'
import { memoryLogger } from '../fixtures/engine-kit.js'

const spec = (runId: string): RunSpec => ({ runId, sessionId: `session-${runId}`, cwd: '/tmp', timeoutS: 60 } as unknown as RunSpec)

/** A run the previous process had started, as the store keeps it. */
async function startedRun (store: MemoryStore, id: string): Promise<RunRecord> {
  await store.insertRun({ id, sessionId: `session-${id}`, workingDirectory: '/tmp', request: { prompt: 'p' }, spec: spec(id), keyName: 'bot', cancelOnDisconnect: false, createdAt: Date.now() })
  await store.markStarted(id, { startedAt: Date.now(), marker: `marker-${id}-not-running`, sessionId: `session-${id}`, workingDirectory: '/tmp', owner: 'gone', leaseUntil: 0 })
  return (await store.getRun(id))!
}

const approval = (runId: string): ApprovalRecord => ({
  id: `approval-${runId}`,
  runId,
  keyName: 'bot',
  status: 'pending',
  toolName: 'Write',
  input: {},
  toolUseId: null,
  title: null,
  description: null,
  suggestions: null,
  agentId: null,
  createdAt: Date.now(),
  expiresAt: Date.now() + 60_000,
  resolvedAt: null,
  decisionReason: null,
  decidedBy: null,
  message: null
})

test('a run interrupted by a restart has its unanswered approvals settled: nothing stays pending for a run nobody holds', async t => {
  const store = new MemoryStore()
  const r = await startedRun(store, 'run-1')
  await store.saveApproval(approval('run-1'))
  const finished: Array<{ id: string, result: RunResult }> = []
  await recoverRuns({ running: [r], queued: [] }, { store, log: memoryLogger(), maxOutputBytes: 1024, finished: (run, result) => finished.push({ id: run.id, result }), requeue: async () => {} })
  t.equal((await store.getRun('run-1'))?.status, 'interrupted')
  const a = await store.getApproval('approval-run-1')
  t.equal(a?.status, 'denied')
  t.equal(a?.decisionReason, 'run_ended')
  t.equal((await store.listApprovals({ runId: 'run-1', status: 'pending', limit: 10 })).length, 0)
  t.strictSame(finished.map(f => f.id), ['run-1'], 'its end is announced once')
})

test('requests about runs wait while recovery is under way, and not once it is over', async t => {
  const leftovers = new Leftovers()
  const store = new MemoryStore()
  const r = await startedRun(store, 'run-2')
  leftovers.note({ running: [r], queued: [] })
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const recovering = leftovers.recover(false, {
    store,
    log: memoryLogger(),
    maxOutputBytes: 1024,
    spares: 'warm-none-',
    ownSpares: 'warm-none-boot-',
    finished: () => {},
    requeue: async () => {}
  })
  // Recovery is under way (its first await): a request arriving now must wait for it.
  const hold = store.hold
  hold.markFinished = gate
  let waited = false
  const waiting = leftovers.recovered().then(() => { waited = true })
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(waited, false, 'still waiting while the run is being ended')
  release()
  await recovering
  await waiting
  t.equal(waited, true)
  t.equal((await store.getRun('run-2'))?.status, 'interrupted')
  let after = false
  await leftovers.recovered().then(() => { after = true })
  t.equal(after, true, 'at once afterwards')
})

test('nothing left: requests never wait', async t => {
  const leftovers = new Leftovers()
  leftovers.note({ running: [], queued: [] })
  let done = false
  await leftovers.recovered().then(() => { done = true })
  t.equal(done, true)
})

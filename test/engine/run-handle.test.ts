import { test } from 'tap'
import { RunHandle } from '../../src/engine/run-handle.js'
import type { RunnerLogger } from '../../src/domain/logger.js'
import type { RunLog } from '../../src/engine/run-log.js'
import type { RunSpec } from '../../src/domain/run.js'
import type { Ticket } from '../../src/engine/scheduler.js'

const handle = (): RunHandle => new RunHandle({ runId: 'run-1' } as RunSpec, false, null, {} as RunnerLogger, { append: () => {} } as unknown as RunLog, 0)
const ticketAt = (place: number): Ticket => ({ position: () => place, release: () => {} })

test('a queued run always has its 1-based place; a running one has none', async t => {
  const h = handle()
  t.equal(h.position(), 1, 'accepted, before admission has placed it: next')
  h.ticket = ticketAt(3)
  t.equal(h.position(), 3, 'waiting in the queue: its place')
  h.ticket = ticketAt(0)
  t.equal(h.status, 'queued')
  t.equal(h.position(), 1, 'admitted, its CLI on the way (still queued): next, not "no place"')
  h.markRunning()
  t.equal(h.position(), 0, 'running: no place in the queue')
})

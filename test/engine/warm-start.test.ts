import { test } from 'tap'
import { randomUUID } from 'node:crypto'
import { setImmediate as tick } from 'node:timers/promises'
import type { SpareProcess } from '@anthropic-ai/claude-agent-sdk'
import type { RunRequest, RunSpec } from '../../src/domain/run.js'
import type { CliProcess } from '../../src/engine/cli-process.js'
import type { Launcher } from '../../src/engine/launch.js'
import { LaunchHealth } from '../../src/engine/launch-health.js'
import { PLAIN, SPARE_BYTES, signatureOf, WarmPool, type ClaimOutcome, type OptionSet, type WarmSpare } from '../../src/engine/warm-pool.js'
import { WarmStart } from '../../src/engine/warm-start.js'
import { memoryLogger, until } from '../fixtures/engine-kit.js'

// Which runs may take a warm spare (`WarmStart.take`). The pool is a real `WarmPool` whose `start`
// parks fake spares at once: no CLI is ever started.

/** A spare as the pool parks it, with nothing behind it. */
function fakeSpare (profile: string, onlyCwd: string | undefined, ended: string[], set: OptionSet = {}): WarmSpare {
  const id = randomUUID()
  return {
    id,
    profile,
    options: signatureOf(set),
    sessionId: randomUUID(),
    spare: { close: () => {}, exited: new Promise(() => {}) } as unknown as SpareProcess,
    process: { ending: false, stderrTail: '', end: async () => { ended.push(id) } } as unknown as CliProcess,
    ...(onlyCwd !== undefined ? { onlyCwd } : {})
  }
}

/**
 * A `WarmStart` whose pool parks fake spares (bound to `onlyCwd` when given), every `claimed`
 * outcome it reports, and the spares it started and ended. With `stall`, starting never finishes
 * (until the test ends): nothing is ever parked.
 */
async function harness (t: { teardown: (fn: () => unknown) => void }, o: { target?: number, perIdentity?: boolean, onlyCwd?: string, stall?: boolean, memoryMax?: number } = {}) {
  const claimed: ClaimOutcome[] = []
  const started: WarmSpare[] = []
  const ended: string[] = []
  let unstall = (): void => {}
  const stalled = new Promise<void>(resolve => { unstall = resolve })
  const log = memoryLogger()
  const warm = new WarmStart(o.target ?? 1, {
    instanceId: 'test-instance',
    bootId: 'boot',
    launcher: {} as Launcher,
    log,
    identityOf: () => undefined,
    workAreaOf: () => undefined,
    perIdentity: o.perIdentity ?? false,
    launches: new LaunchHealth(),
    claimed: outcome => { claimed.push(outcome) }
  })
  // What `take` uses: the pool. Its spares are fakes, parked as soon as asked for.
  const pool = new WarmPool({
    target: o.target ?? 1,
    perIdentity: o.perIdentity ?? false,
    memoryMax: o.memoryMax ?? 0,
    log,
    start: async (profile, set) => {
      if (o.stall === true) await stalled
      const s = fakeSpare(profile, o.onlyCwd, ended, set)
      started.push(s)
      return s
    }
  })
  Object.defineProperty(warm, 'pool', { value: pool })
  t.teardown(async () => {
    unstall()
    await pool.close()
  })
  pool.start()
  if (o.stall !== true && o.perIdentity !== true) await until(() => pool.parkedCount === (o.target ?? 1))
  return { warm, pool, claimed, started, ended }
}

function specOf (over: Partial<RunSpec> = {}): RunSpec {
  return {
    runId: randomUUID(),
    prompt: 'hello',
    cwd: '/srv/work',
    sessionId: randomUUID(),
    sessionMode: 'new',
    timeoutS: 60,
    env: {},
    permissionMode: 'acceptEdits',
    includePartialMessages: false,
    approvals: 'deny',
    approvalTimeoutS: 60,
    ...over
  }
}

const request = (over: Partial<RunRequest> = {}): RunRequest => ({ prompt: 'hello', ...over })

test('a run of a new session with nothing fixed at spawn takes the parked spare', async t => {
  const h = await harness(t)
  const parked = h.started[0]!
  const spare = h.warm.take(specOf(), request())
  t.equal(spare, parked, 'the spare parked for it')
  t.same(h.claimed, [], 'no miss reported (the executor reports the hit)')
  t.ok(await until(() => h.pool.parkedCount === 1 && h.started.length === 2), 'another is parked in its place')

  // What a claim sets (directory, model, permission mode, appended system prompt) does not stop it.
  const again = h.warm.take(specOf({ model: 'claude-x', appendSystemPrompt: 'be brief', permissionMode: 'plan', cwd: '/srv/other' }), request({ model: 'claude-x' }))
  t.equal(again, h.started[1], 'options a claim can set still take a spare')
  t.same(h.claimed, [])
})

test('a run that continues or forks a session never takes a spare, and is no miss', async t => {
  const h = await harness(t)
  const session = randomUUID()
  t.equal(h.warm.take(specOf({ sessionId: session, sessionMode: 'resume' }), request({ session_id: session })), undefined, 'a resume')
  t.equal(h.warm.take(specOf({ sessionMode: 'fork', forkedFrom: session }), request({ session_id: session, fork_session: true })), undefined, 'a fork')
  t.equal(h.warm.take(specOf({ sessionId: session, sessionMode: 'resume' }), request()), undefined, 'a resume however it was asked for')
  t.same(h.claimed, [], 'not counted as misses: they are no new sessions')
  t.equal(h.pool.parkedCount, 1, 'the spare stays parked')
})

test('a new session with an option fixed when a CLI starts takes no spare: one miss each', async t => {
  const h = await harness(t)
  const parked = h.started[0]!
  const fixed: Array<[string, Partial<RunSpec>]> = [
    ['env vars', { env: { FOO: 'bar' } }],
    ['a system prompt (no memory for option sets)', { systemPrompt: 'you are a test' }],
    ['allowed tools (no memory for option sets)', { allowedTools: ['Read'] }],
    ['disallowed tools (no memory for option sets)', { disallowedTools: ['Bash'] }],
    ['max turns (no memory for option sets)', { maxTurns: 3 }],
    ['a max budget', { maxBudgetUsd: 1 }],
    ['an output schema', { outputSchema: { type: 'object' } }],
    ['approvals: ask', { approvals: 'ask' }],
    ['partial messages', { includePartialMessages: true }]
  ]
  for (const [what, over] of fixed) {
    const before = h.claimed.length
    t.equal(h.warm.take(specOf(over), request()), undefined, `${what}: no spare`)
    t.same(h.claimed.slice(before), ['miss'], `${what}: reported as one miss`)
  }
  t.equal(h.pool.parkedCount, 1, 'the spare is still parked')
  t.equal(h.warm.take(specOf(), request()), parked, 'and serves the next run that fits')
  t.same(h.ended, [], 'no spare was ended for it')
})

test('a spare bound to one directory (a key\'s work area) serves only runs in it or below it', async t => {
  const h = await harness(t, { onlyCwd: '/srv/agents/k' })
  t.equal(h.warm.take(specOf({ cwd: '/srv/agents/j' }), request()), undefined, 'another directory: none')
  t.equal(h.warm.take(specOf({ cwd: '/srv/agents/kk' }), request()), undefined, 'nor one that only starts with its name')
  t.same(h.claimed, ['miss', 'miss'])
  t.equal(h.warm.take(specOf({ cwd: '/srv/agents/k' }), request()), h.started[0], 'its own: taken')
  t.ok(await until(() => h.pool.parkedCount === 1))
  t.equal(h.warm.take(specOf({ cwd: '/srv/agents/k/project' }), request()), h.started[1], 'a directory below it: taken')
  t.same(h.claimed, ['miss', 'miss'], 'the hits add no miss')
})

test('with nothing parked, a run of a new session is one miss', async t => {
  const h = await harness(t, { stall: true })
  t.equal(h.warm.take(specOf(), request()), undefined)
  await tick()
  t.same(h.claimed, ['miss'], 'reported once')
})

test('a spare is never shared across agent identities', async t => {
  // Three identities in demand at most: k stays among them throughout.
  const h = await harness(t, { perIdentity: true, target: 3 })
  t.equal(h.warm.take(specOf({ identity: 'k' }), request()), undefined, 'none parked for k yet')
  t.ok(await until(() => h.pool.parkedCount === 1), 'one is parked for k now that k is in demand')
  t.equal(h.warm.take(specOf({ identity: 'j' }), request()), undefined, 'j does not get k\'s spare')
  t.equal(h.warm.take(specOf(), request()), undefined, 'nor does a run without an identity')
  t.same(h.claimed, ['miss', 'miss', 'miss'])
  const forK = h.started.find(s => s.profile === 'k')
  t.equal(h.warm.take(specOf({ identity: 'k' }), request()), forK, 'k gets its own')
})

test('the option sets runs send more than once get spares of their own, most recent first, within WARM_MEMORY_MAX', async t => {
  // Room for two spares: the plain one and one option set.
  const h = await harness(t, { memoryMax: 2 * SPARE_BYTES })
  const reviewer: Partial<RunSpec> = { systemPrompt: 'you review code', allowedTools: ['Read', 'Grep'] }
  const ofReviewer = signatureOf(reviewer as OptionSet)
  t.equal(h.warm.take(specOf(reviewer), request()), undefined, 'the first run of a set: none')
  await tick()
  t.equal(h.started.filter(s => s.options === ofReviewer).length, 0, 'a set sent once gets no spare (a prompt made per request would waste one each time)')
  t.equal(h.warm.take(specOf(reviewer), request()), undefined, 'the second run of the set: none yet')
  t.same(h.claimed, ['miss', 'miss'])
  t.ok(await until(() => h.pool.parkedCount === 2), 'now a spare for the set is parked next to the plain one')
  const forSet = h.started.find(s => s.options === ofReviewer)
  t.ok(forSet, 'started with the set')
  const other = { allowedTools: ['Read', 'Grep'] }
  t.equal(h.warm.take(specOf(other), request()), undefined, 'a different set does not take it')
  t.equal(h.warm.take(specOf(other), request()), undefined, 'nor the different set\'s second run')
  t.ok(await until(() => h.ended.includes(forSet!.id)), 'the newer set pushed the older one\'s spare out of the memory')
  t.ok(await until(() => h.started.some(s => s.options === signatureOf(other)) && h.pool.parkedCount === 2), 'and has its own')
  const taken = h.warm.take(specOf(other), request())
  t.ok(taken !== undefined && taken.options === signatureOf(other), 'which its next run takes')
  t.equal(h.warm.take(specOf(), request()), h.started[0], 'the plain spare is still there for plain runs')
})

test('without memory for option sets, only the plain spares are kept', async t => {
  const h = await harness(t, { memoryMax: 0 })
  for (let i = 0; i < 3; i++) h.warm.take(specOf({ allowedTools: ['Read'] }), request())
  await tick()
  t.equal(h.pool.parkedCount, 1)
  t.same(h.started.map(s => s.options), [PLAIN], 'no spare was started for the set')
})

import tap, { test } from 'tap'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { auth, eventually, fakeModel, pidsMatching, readSse, sandbox, startServer, testEnv, toolResults, type Sandbox, type ServerProcess } from '../helper.js'
import type { FakeModel } from '../fixtures/fake-model.js'
import { noPostgres, startPostgres } from '../fixtures/postgres.js'

const FAKE_CLI = fileURLToPath(new URL('../fixtures/fake-claude.mjs', import.meta.url))
const json = { ...auth, 'content-type': 'application/json' }

/**
 * Cluster mode: several real server processes, each with a HOME and DATA_DIR of its own, sharing
 * one real PostgreSQL server and one directory for the runs (as instances on several machines
 * share a network file system).
 */
if (noPostgres !== false) {
  test('cluster mode', { skip: noPostgres }, () => {})
} else {
  const server = startPostgres(tap)

  interface Cluster { nodes: ServerProcess[], work: string, boxes: Sandbox[], url: string }

  async function cluster (t: { teardown: (fn: () => unknown) => void }, model: FakeModel, n: number, extra: Record<string, string> = {}): Promise<Cluster> {
    const url = await (await server).database()
    const shared = sandbox(t)
    const boxes = Array.from({ length: n }, () => sandbox(t))
    const nodes = await Promise.all(boxes.map(async box => await startServer(t, testEnv(box, model, {
      DATABASE_URL: url,
      DEFAULT_WORKING_DIR: shared.work,
      ALLOWED_WORKING_DIRS: shared.work,
      RUN_LEASE_S: '5',
      ...extra
    }))))
    t.teardown(async () => {
      for (const node of nodes) node.child.kill('SIGTERM')
      await Promise.all(nodes.map(async node => await node.exited))
    })
    return { nodes, work: shared.work, boxes, url }
  }

  async function post (base: string, body: object): Promise<any> {
    const res = await fetch(`${base}/api/runs`, { method: 'POST', headers: json, body: JSON.stringify(body) })
    const out = await res.json() as any
    if (res.status !== 202) throw new Error(`POST /api/runs: ${res.status} ${JSON.stringify(out)}`)
    return out
  }

  async function runOf (base: string, id: string): Promise<any> {
    return await (await fetch(`${base}/api/runs/${id}`, { headers: auth })).json()
  }

  async function ended (base: string, id: string, ms = 60_000): Promise<any> {
    let run: any
    await eventually(async () => { run = await runOf(base, id); return run.result !== null }, ms)
    return run
  }

  /** Which node runs a run now (its /health counts it active), by index; -1 when none. */
  async function activeNodes (c: Cluster): Promise<number[]> {
    const counts = await Promise.all(c.nodes.map(async n => (await (await fetch(`${n.base}/health`)).json() as any).runs.active as number))
    return counts
  }

  test('three instances: /health shows the cluster; a run is followed live on the others; cancel through another instance ends its tree', async t => {
    const model = await fakeModel(t)
    model.on('tell a slow story', [{ text: ['once', 'upon', 'a', 'time', 'the end'], gapMs: 400 }])
    model.on('sleep in the cluster', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3621"' } }, { text: 'woke' }])
    const c = await cluster(t, model, 3)
    const [a, b, d] = c.nodes as [ServerProcess, ServerProcess, ServerProcess]
    t.ok(await eventually(async () => (await (await fetch(`${a.base}/health`)).json() as any).cluster?.instances === 3, 10_000), 'every instance counts three')
    let health: any
    await eventually(async () => { health = await (await fetch(`${b.base}/health`)).json(); return health.cluster?.instances === 3 }, 10_000)
    t.match(health.cluster, { instance_id: /^[0-9a-f-]{36}$/, instances: 3 })
    const metrics = await (await fetch(`${b.base}/metrics`, { headers: auth })).text()
    t.match(metrics, new RegExp(`ccapi_instance_info\\{instance_id="${health.cluster.instance_id as string}"\\} 1`), 'its metrics name the instance')
    t.match(metrics, /ccapi_cluster_instances 3/)

    const story = await post(a.base, { prompt: 'tell a slow story' })
    const [onB, onD] = await Promise.all([b, d].map(async node => (await readSse(await fetch(`${node.base}/api/runs/${story.id as string}/events`, { headers: auth }))).events))
    const all = (await readSse(await fetch(`${a.base}/api/runs/${story.id as string}/events`, { headers: auth }))).events
    for (const [name, got] of [['b', onB!], ['d', onD!]] as const) {
      t.same(got.map(e => e.id), all.map(e => e.id), `followed on ${name}: every event once, in order`)
      t.equal(got.at(-1)!.event, 'result')
    }
    t.equal(JSON.parse(all.at(-1)!.data).output, 'the end')
    t.ok(onB!.filter(e => e.event === 'message').length >= 1, 'with the messages as they came')

    const sleeper = await post(a.base, { prompt: 'sleep in the cluster', allowed_tools: ['Bash(sh *)'] })
    t.ok(await eventually(() => pidsMatching('sleep 3621').length > 0, 20_000), 'the run is in its sleep')
    const active = await activeNodes(c)
    const owner = active.findIndex(n => n === 1)
    t.ok(owner >= 0, 'one instance runs it')
    const other = c.nodes[(owner + 1) % 3]!
    const t0 = Date.now()
    const res = await fetch(`${other.base}/api/runs/${sleeper.id as string}/cancel`, { method: 'POST', headers: auth })
    t.equal(res.status, 200)
    const cancelled = await res.json() as any
    t.equal(cancelled.status, 'cancelled', 'cancelled through an instance that does not run it')
    t.ok(Date.now() - t0 < 10_000, `in ${Date.now() - t0} ms`)
    t.same(pidsMatching('sleep 3621'), [], 'its process tree is gone')
  })

  test('approvals, follow-up messages and interrupts sent to an instance that does not run the run reach it; the sessions API reads any instance\'s transcripts', async t => {
    const model = await fakeModel(t)
    const c = await cluster(t, model, 2)
    const file = join(c.work, 'approved.txt')
    model.on('write with approval', [{ tool: 'Write', input: { file_path: file, content: 'approved' } }, { text: 'Wrote it.' }])
    model.on('first question', [{ text: ['thinking', 'First answer.'], gapMs: 1500 }])
    model.on('second question', [{ text: 'Second answer.' }])
    model.on('long task', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3623"' } }, { text: 'never' }])
    model.on('do this instead', [{ text: 'Did the other thing.' }])
    const other = async (): Promise<ServerProcess> => {
      let owner = -1
      await eventually(async () => { owner = (await activeNodes(c)).findIndex(n => n === 1); return owner >= 0 }, 20_000)
      return c.nodes[1 - owner]!
    }

    const asking = await post(c.nodes[0]!.base, { prompt: 'write with approval', permission_mode: 'default', approvals: 'ask' })
    const elsewhere = await other()
    let pending: any
    await eventually(async () => {
      pending = (await (await fetch(`${elsewhere.base}/api/runs/${asking.id as string}/approvals`, { headers: auth })).json() as any).approvals.find((a: any) => a.status === 'pending')
      return pending !== undefined
    }, 20_000)
    t.ok(pending, 'the pending approval is seen on the other instance')
    const answer = await fetch(`${elsewhere.base}/api/runs/${asking.id as string}/approvals/${pending.approval_id as string}`, { method: 'POST', headers: json, body: JSON.stringify({ decision: 'allow' }) })
    t.equal(answer.status, 200, await answer.clone().text())
    t.equal((await answer.json() as any).status, 'allowed')
    t.equal((await ended(elsewhere.base, asking.id)).status, 'succeeded')
    t.equal(readFileSync(file, 'utf8'), 'approved', 'the tool ran once allowed')
    const again = await fetch(`${elsewhere.base}/api/runs/${asking.id as string}/approvals/${pending.approval_id as string}`, { method: 'POST', headers: json, body: JSON.stringify({ decision: 'deny' }) })
    t.equal(again.status, 409, 'answered already')

    const talking = await post(c.nodes[0]!.base, { prompt: 'first question' })
    const away = await other()
    const sent = await fetch(`${away.base}/api/runs/${talking.id as string}/messages`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'second question' }) })
    t.equal(sent.status, 202, 'a follow-up message through the other instance')
    const talked = await ended(away.base, talking.id)
    t.equal(talked.status, 'succeeded')
    t.equal(talked.result.output, 'Second answer.', 'answered by the run, in the same conversation')

    const long = await post(c.nodes[0]!.base, { prompt: 'long task', allowed_tools: ['Bash(sh *)'] })
    t.ok(await eventually(() => pidsMatching('sleep 3623').length > 0, 20_000))
    const far = await other()
    const at = Date.now()
    const interrupted = await fetch(`${far.base}/api/runs/${long.id as string}/interrupt`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: 'do this instead' }) })
    t.equal(interrupted.status, 202)
    t.ok(await eventually(() => pidsMatching('sleep 3623').length === 0, 5000), `the sleep is gone (${Date.now() - at} ms)`)
    const redirected = await ended(far.base, long.id)
    t.equal(redirected.result.output, 'Did the other thing.')

    for (const node of c.nodes) {
      const messages = await (await fetch(`${node.base}/api/sessions/${talking.session_id as string}/messages`, { headers: auth })).json() as any
      t.ok(JSON.stringify(messages.messages).includes('second question'), 'the transcript reads the same on every instance')
    }
  })

  test('work spreads over the instances; one session\'s runs stay in order across them; a session moves to an instance with another HOME', async t => {
    const model = await fakeModel(t)
    model.on('busy', [{ text: ['working', 'done'], gapMs: 1500 }])
    const c = await cluster(t, model, 2, { MAX_CONCURRENT_RUNS: '2' })
    const [a, b] = c.nodes as [ServerProcess, ServerProcess]
    const runs = await Promise.all(Array.from({ length: 4 }, async () => await post(a.base, { prompt: 'busy' })))
    let seen = [0, 0]
    await eventually(async () => {
      const now = await activeNodes(c)
      seen = seen.map((s, i) => Math.max(s, now[i]!))
      return seen.every(s => s > 0)
    }, 15_000)
    t.ok(seen.every(s => s > 0), `both instances ran some of the runs sent to one (peak active ${seen.join(', ')})`)
    for (const r of runs) t.equal((await ended(b.base, r.id)).status, 'succeeded')

    // One session, its runs sent to both instances in turn: they run one at a time, in order.
    const first = await post(a.base, { prompt: 'fifo 0' })
    const rest = []
    for (let i = 1; i <= 4; i++) rest.push(await post(c.nodes[i % 2]!.base, { prompt: `fifo ${i}`, session_id: first.session_id }))
    const all = [first, ...rest]
    const done = await Promise.all(all.map(async r => await ended(a.base, r.id)))
    t.same(done.map(r => r.status), all.map(() => 'succeeded'))
    const order = model.calls.map(x => x.prompt).filter(p => /^fifo \d$/.test(p))
    t.same(order, ['fifo 0', 'fifo 1', 'fifo 2', 'fifo 3', 'fifo 4'], 'the model was asked in submission order')
    for (let i = 1; i < done.length; i++) {
      t.ok(Date.parse(done[i].started_at) >= Date.parse(done[i - 1].ended_at), `run ${i} started after run ${i - 1} ended`)
    }

    // A session made on one instance resumes on another, whose HOME has never seen it.
    const made = await post(a.base, { prompt: 'remember the word QUINCE' })
    t.equal((await ended(a.base, made.id)).status, 'succeeded')
    a.child.kill('SIGTERM')
    await a.exited
    const resumed = await post(b.base, { prompt: 'what was the word?', session_id: made.session_id })
    const end = await ended(b.base, resumed.id)
    t.equal(end.status, 'succeeded', JSON.stringify(end.result))
    const call = model.calls.filter(x => x.prompt === 'what was the word?').at(-1)
    t.match(JSON.stringify(call?.body.messages), /remember the word QUINCE/, 'the model saw the history made on the other instance')
    t.not(c.boxes[0]!.home, c.boxes[1]!.home)
  })

  test('kill -9 of an instance: its run is interrupted within the lease, its tree is gone, and the queued runs finish elsewhere', async t => {
    const model = await fakeModel(t)
    model.on('sleep then die', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3622"' } }, { text: 'woke' }])
    const c = await cluster(t, model, 2, { MAX_CONCURRENT_RUNS: '1' })
    const [a, b] = c.nodes as [ServerProcess, ServerProcess]
    const doomed = await post(a.base, { prompt: 'sleep then die', allowed_tools: ['Bash(sh *)'] })
    t.ok(await eventually(() => pidsMatching('sleep 3622').length > 0, 20_000), 'the run is in its sleep')
    const owner = (await activeNodes(c)).findIndex(n => n === 1)
    const victim = c.nodes[owner]!
    const survivor = c.nodes[1 - owner]!
    // Queued behind it in the same session: they can only run after it ends, wherever.
    const queued = [
      await post(survivor.base, { prompt: 'after the crash one', session_id: doomed.session_id }),
      await post(survivor.base, { prompt: 'after the crash two', session_id: doomed.session_id })
    ]
    victim.child.kill('SIGKILL')
    await victim.exited
    const t0 = Date.now()
    const run = await ended(survivor.base, doomed.id, 40_000)
    const took = Date.now() - t0
    t.equal(run.status, 'interrupted', 'the run of the dead instance is interrupted')
    t.ok(took <= 12_000, `within the lease, give or take a tick (${took} ms after the kill, RUN_LEASE_S=5)`)
    t.ok(await eventually(() => pidsMatching('sleep 3622').length === 0, 5000), 'its tree is gone')
    for (const q of queued) t.equal((await ended(survivor.base, q.id)).status, 'succeeded', `${q.request.prompt as string}: ran on the survivor`)
    t.equal(model.calls.filter(x => x.prompt === 'after the crash one').length, 1, 'once')
    t.not(a, b)
  })

  test('the database\'s address and credentials never reach a run', async t => {
    const model = await fakeModel(t)
    model.on('print the environment', [{ tool: 'Bash', input: { command: 'env' } }, { text: 'printed' }])
    const c = await cluster(t, model, 1)
    const address = c.url.slice(0, c.url.lastIndexOf('/')) // the server's, without the database's name
    const run = await post(c.nodes[0]!.base, { prompt: 'print the environment', allowed_tools: ['Bash(env)'] })
    t.equal((await ended(c.nodes[0]!.base, run.id)).status, 'succeeded')
    const printed = toolResults(model.calls.filter(x => x.prompt === 'print the environment')).join('\n')
    t.match(printed, /PATH=/, 'the run printed its environment')
    t.notOk(printed.includes('DATABASE_URL'), 'no DATABASE_URL')
    t.notOk(printed.includes(c.url), 'nor its value')
    t.notOk(printed.includes(address), 'nor the server\'s address')
    t.notOk(/postgres(ql)?:\/\//.test(printed), 'nor any connection string')
  })

  test('a burst of 100 runs across three instances: every run executes exactly once', async t => {
    const model = await fakeModel(t)
    const c = await cluster(t, model, 3, { CLAUDE_CODE_PATH: FAKE_CLI, MAX_CONCURRENT_RUNS: '4', MAX_QUEUED_RUNS: '200' })
    const log = join(c.work, 'burst.log')
    mkdirSync(c.work, { recursive: true })
    writeFileSync(log, '')
    const ids = await Promise.all(Array.from({ length: 100 }, async (_, i) => (await post(c.nodes[i % 3]!.base, { prompt: `record ${log} 20 run-${i}` })).id as string))
    t.equal(new Set(ids).size, 100)
    const runs = await Promise.all(ids.map(async (id, i) => await ended(c.nodes[(i + 1) % 3]!.base, id, 120_000)))
    t.same(runs.filter(r => r.status !== 'succeeded').map(r => r.id), [], 'all succeeded')
    const lines = readFileSync(log, 'utf8').trim().split('\n')
    t.equal(lines.length, 100, 'exactly 100 executions')
    t.equal(new Set(lines).size, 100, 'none twice')
  })
}

import { test } from 'tap'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { auth, build, eventually, listen, pidsMatching, readSse, toolResults, type SseEvent } from '../helper.js'

const json = { ...auth, 'content-type': 'application/json' }
// A 1×1 PNG.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='

test('interactive runs', async t => {
  const { app, model, box } = await build(t)
  const base = await listen(app)
  const start = async (payload: Record<string, unknown>) => (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload })).json()
  const view = async (id: string) => (await app.inject({ url: `/api/runs/${id}`, headers: auth })).json()
  /** Follow a run's events until `until` holds for one of them. */
  const waitForEvent = async (id: string, until: (e: SseEvent) => boolean): Promise<SseEvent> => {
    const ctrl = new AbortController()
    let found: SseEvent | undefined
    const res = await fetch(`${base}/api/runs/${id}/events`, { headers: auth, signal: ctrl.signal })
    await readSse(res, e => { if (found === undefined && until(e)) { found = e; ctrl.abort() } }).catch(() => null)
    return found!
  }
  const ended = async (id: string) => {
    await eventually(async () => !['queued', 'running'].includes((await view(id)).status), 30_000)
    return await view(id)
  }

  await t.test('ask: the Write waits for an answer; allowed, the file is written', async t => {
    const file = join(box.work, 'approved.txt')
    model.on('write with approval', [{ tool: 'Write', input: { file_path: file, content: 'approved' } }, { text: 'Wrote it.' }])
    const run = await start({ prompt: 'write with approval', permission_mode: 'default', approvals: 'ask' })
    const asked = await waitForEvent(run.id, e => e.event === 'approval_requested')
    const data = JSON.parse(asked.data)
    t.equal(data.tool_name, 'Write')
    t.equal(data.input.file_path, file)
    t.match(data.expires_at, /^\d{4}-/)
    t.notOk(existsSync(file), 'no file before the answer')
    t.equal((await view(run.id)).pending_approvals, 1, 'the run shows one pending approval')
    const listed = (await app.inject({ url: '/api/approvals?status=pending', headers: auth })).json()
    t.ok(listed.approvals.some((a: any) => a.approval_id === data.approval_id), 'listed across runs')
    const answer = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/approvals/${data.approval_id}`, headers: auth, payload: { decision: 'allow' } })
    t.equal(answer.statusCode, 200)
    t.equal(answer.json().status, 'allowed')
    const again = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/approvals/${data.approval_id}`, headers: auth, payload: { decision: 'deny' } })
    t.equal(again.statusCode, 409, 'answering twice: 409')
    t.equal(again.json().code, 'approval_resolved')
    const unknown = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/approvals/00000000-0000-4000-8000-000000000000`, headers: auth, payload: { decision: 'allow' } })
    t.equal(unknown.statusCode, 404)
    t.equal(unknown.json().code, 'approval_not_found')
    const done = await ended(run.id)
    t.equal(done.status, 'succeeded', done.result?.error ?? '')
    t.ok(existsSync(file), 'the file exists once allowed')
    const events = (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth }))).events
    const resolved = events.find(e => e.event === 'approval_resolved')
    t.same(JSON.parse(resolved!.data).decision, 'allow')
    t.equal(JSON.parse(resolved!.data).reason, 'answered')
  })

  await t.test('deny with a message: no file, and the model reads the message', async t => {
    const file = join(box.work, 'denied.txt')
    model.on('write then be denied', [{ tool: 'Write', input: { file_path: file, content: 'no' } }, { text: 'Understood.' }])
    const run = await start({ prompt: 'write then be denied', permission_mode: 'default', approvals: 'ask' })
    const data = JSON.parse((await waitForEvent(run.id, e => e.event === 'approval_requested')).data)
    const answer = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/approvals/${data.approval_id}`, headers: auth, payload: { decision: 'deny', message: 'Not in this folder, please.' } })
    t.equal(answer.json().status, 'denied')
    const done = await ended(run.id)
    t.equal(done.status, 'succeeded')
    t.notOk(existsSync(file), 'no file')
    const calls = model.calls.filter(c => c.prompt === 'write then be denied')
    t.ok(toolResults(calls).some(r => r.includes('Not in this folder, please.')), 'the tool_result carries the message')
  })

  await t.test('nobody answers within approval_timeout: denied as timed out, the run goes on', async t => {
    const file = join(box.work, 'timed-out.txt')
    model.on('nobody answers', [{ tool: 'Write', input: { file_path: file, content: 'late' } }, { text: 'Gave up.' }])
    const run = await start({ prompt: 'nobody answers', permission_mode: 'default', approvals: 'ask', approval_timeout: 2 })
    const done = await ended(run.id)
    t.equal(done.status, 'succeeded')
    t.notOk(existsSync(file))
    const approvals = (await app.inject({ url: `/api/runs/${run.id}/approvals`, headers: auth })).json().approvals
    t.equal(approvals.length, 1)
    t.equal(approvals[0].status, 'denied')
    t.equal(approvals[0].decision_reason, 'timed_out')
  })

  await t.test('without approvals nothing is asked: the refusal is in permission_denials', async t => {
    const file = join(box.work, 'refused.txt')
    model.on('write without asking', [{ tool: 'Write', input: { file_path: file, content: 'x' } }, { text: 'Could not.' }])
    const body = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'write without asking', permission_mode: 'default' } })).json()
    t.equal(body.status, 'succeeded')
    t.ok(body.permission_denials.length > 0, 'listed as denied')
    t.notOk(existsSync(file))
  })

  await t.test('a follow-up message is answered by the same CLI process; an ended run refuses messages', async t => {
    model.on('first question', [{ text: ['Thinking about it.', 'First answer.'], gapMs: 1500 }])
    model.on('second question', [{ text: 'Second answer.' }])
    const run = await start({ prompt: 'first question' })
    await waitForEvent(run.id, e => e.event === 'message' && e.data.includes('"init"'))
    const sent = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/messages`, headers: auth, payload: { prompt: 'second question' } })
    t.equal(sent.statusCode, 202)
    t.equal(sent.json().status, 'queued')
    const done = await ended(run.id)
    t.equal(done.status, 'succeeded')
    t.equal(done.result.output, 'Second answer.', 'the final output answers the message')
    const events = (await readSse(await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth }))).events
    t.equal(events.filter(e => e.event === 'message' && e.data.includes('"subtype":"init"') && e.data.includes('"type":"system"')).length >= 1, true)
    const um = events.find(e => e.event === 'user_message')
    t.equal(JSON.parse(um!.data).message_id, sent.json().message_id, 'the hand-over is logged')
    const second = model.calls.find(c => c.prompt === 'second question')!
    t.ok(second.userTexts.includes('first question'), 'with the whole conversation: the same session')
    const late = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/messages`, headers: auth, payload: { prompt: 'too late' } })
    t.equal(late.statusCode, 409)
    t.equal(late.json().code, 'run_finished')
  })

  await t.test('interrupt during a Bash sleep: the sleep stops, the run is cancelled, the session resumes whole', async t => {
    model.on('sleep to be interrupted', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3611"' } }, { text: 'woke' }])
    model.on('after the interrupt', [{ text: 'Resumed fine.' }])
    const run = await start({ prompt: 'sleep to be interrupted', allowed_tools: ['Bash(sh *)'] })
    t.ok(await eventually(() => pidsMatching('sleep 3611').length > 0, 15_000), 'the sleep runs')
    const at = Date.now()
    const res = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/interrupt`, headers: auth })
    t.equal(res.statusCode, 202, res.body)
    t.ok(await eventually(() => pidsMatching('sleep 3611').length === 0, 5000), `the sleep is gone (${Date.now() - at} ms)`)
    const done = await ended(run.id)
    t.equal(done.status, 'cancelled')
    const next = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'after the interrupt', session_id: done.session_id } })).json()
    t.equal(next.status, 'succeeded', next.error ?? '')
    const call = model.calls.find(c => c.prompt === 'after the interrupt')!
    t.ok(call.userTexts.includes('sleep to be interrupted'), 'the next run of the session sees the history')
    const again = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/interrupt`, headers: auth })
    t.equal(again.statusCode, 409)
  })

  await t.test('interrupt with a prompt steers the run to a successful end', async t => {
    model.on('long task', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3612"' } }, { text: 'woke' }])
    model.on('do this instead', [{ text: 'Did the other thing.' }])
    const run = await start({ prompt: 'long task', allowed_tools: ['Bash(sh *)'] })
    t.ok(await eventually(() => pidsMatching('sleep 3612').length > 0, 15_000))
    const res = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/interrupt`, headers: json, payload: { prompt: 'do this instead' } })
    t.equal(res.statusCode, 202)
    const done = await ended(run.id)
    t.equal(done.status, 'succeeded', done.result?.error ?? '')
    t.equal(done.result.output, 'Did the other thing.')
    t.same(pidsMatching('sleep 3612'), [])
  })

  await t.test('an image attachment reaches the model as an image block; a bad one is a 400 naming it', async t => {
    model.on('describe the image', [{ text: 'A pixel.' }])
    const body = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'describe the image', attachments: [{ type: 'image', media_type: 'image/png', data: PNG }] } })).json()
    t.equal(body.status, 'succeeded', body.error ?? '')
    const call = model.calls.find(c => c.userTexts.some(u => u.includes('describe the image')))!
    t.ok(call, 'the model got the prompt')
    const blocks = (call.body.messages as any[]).flatMap(m => Array.isArray(m.content) ? m.content : [])
    const image = blocks.find((b: any) => b.type === 'image')
    t.equal(image?.source?.media_type, 'image/png')
    t.equal(image?.source?.data, PNG, 'the bytes as sent')
    for (const [what, att, path] of [
      ['bad base64', { type: 'image', media_type: 'image/png', data: 'not base64!!' }, '/attachments/0/data'],
      ['a JPEG said to be PNG', { type: 'image', media_type: 'image/png', data: Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 4]).toString('base64') }, '/attachments/0/data'],
      ['a wrong media type', { type: 'image', media_type: 'image/bmp', data: PNG }, '/attachments/0/media_type'],
      ['over 5 MiB', { type: 'image', media_type: 'image/png', data: Buffer.concat([Buffer.from(PNG, 'base64'), Buffer.alloc(5 * 1024 * 1024)]).toString('base64') }, '/attachments/0/data']
    ] as const) {
      const res = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: `bad attachment ${what}`, attachments: [att] } })
      t.equal(res.statusCode, what === 'over 5 MiB' ? 413 : 400, what)
      if (res.statusCode === 400) t.ok(res.json().errors.some((e: any) => e.path.startsWith(path)), `${what}: names ${path}`)
    }
  })
})

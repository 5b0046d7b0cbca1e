import { test } from 'tap'
import { createHmac } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { auth, build, eventually } from '../helper.js'

const SECRET = 'whsec-test-0123456789'

test('a run waiting for an approval sends a signed approval.requested webhook', async t => {
  const received: Array<{ headers: Record<string, unknown>, body: string }> = []
  const hook = createServer((req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => { body += c.toString() })
    req.on('end', () => { received.push({ headers: req.headers, body }); res.end('ok') })
  })
  await new Promise<void>(resolve => hook.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hook.closeAllConnections(); hook.close() })
  const host = `127.0.0.1:${(hook.address() as AddressInfo).port}`
  const { app, model, box } = await build(t, { env: { WEBHOOK_ALLOWED_HOSTS: host, WEBHOOK_SECRET: SECRET } })
  model.on('ask a person', [{ tool: 'Write', input: { file_path: join(box.work, 'ask.txt'), content: 'x' } }, { text: 'done' }])
  const run = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'ask a person', permission_mode: 'default', approvals: 'ask', webhook_url: `http://${host}/hook` } })).json()
  t.ok(await eventually(() => received.some(r => r.headers['x-webhook-event'] === 'approval.requested'), 20_000), 'the approval webhook arrived')
  const got = received.find(r => r.headers['x-webhook-event'] === 'approval.requested')!
  t.equal(got.headers['x-signature-256'], 'sha256=' + createHmac('sha256', SECRET).update(got.body).digest('hex'), 'signed')
  const body = JSON.parse(got.body)
  t.equal(body.event, 'approval.requested')
  t.equal(body.run.id, run.id)
  t.equal(body.approval.tool_name, 'Write')
  const answer = await app.inject({ method: 'POST', url: `/api/runs/${run.id}/approvals/${body.approval.approval_id}`, headers: auth, payload: { decision: 'allow' } })
  t.equal(answer.statusCode, 200, 'its approval_id answers the approval')
  t.ok(await eventually(() => received.some(r => r.headers['x-webhook-event'] === 'run.finished'), 20_000), 'then run.finished')
  // The receiver may see an attempt before the server has recorded its answer.
  let events: string[] = []
  await eventually(async () => {
    events = (await app.inject({ url: `/api/runs/${run.id}`, headers: auth })).json().webhook.deliveries.map((d: any) => d.event).sort()
    return events.length === 2
  })
  t.same(events, ['approval.requested', 'run.finished'], 'both deliveries are listed on the run')
})

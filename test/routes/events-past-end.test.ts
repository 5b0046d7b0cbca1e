import { test } from 'tap'
import { auth, build, listen } from '../helper.js'

test('Last-Event-ID at or past the end of a finished run: the stream ends at once, empty', async t => {
  const { app } = await build(t)
  const base = await listen(app)
  const run = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'quick' } })).json()
  for (const last of ['9999', '3']) {
    const started = Date.now()
    const res = await fetch(`${base}/api/runs/${run.run_id}/events`, { headers: { ...auth, 'last-event-id': last }, signal: AbortSignal.timeout(10_000) })
    const body = await res.text()
    t.ok(Date.now() - started < 3000, `Last-Event-ID ${last}: ended within 3 s (${Date.now() - started} ms)`)
    t.notMatch(body, /^id: [1-3]$/m, 'nothing at or before the given id is sent again')
  }
})

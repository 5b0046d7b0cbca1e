import { test } from 'tap'
import { build } from '../helper.js'

test('/health says whether a Claude credential is configured: degraded (still 200) when it is missing', async t => {
  const without = await build(t, { credentials: false })
  const res = await without.app.inject({ url: '/health' })
  t.equal(res.statusCode, 200, 'still 200: the service itself is up')
  t.equal(res.json().credentials, 'missing')
  t.equal(res.json().claude_code_available, true, 'the CLI is there')
  t.equal(res.json().status, 'degraded', 'but runs would fail with not_authenticated')

  const withKey = await build(t)
  const ok = (await withKey.app.inject({ url: '/health' })).json()
  t.equal(ok.credentials, 'ok')
  t.equal(ok.store, 'ok', 'the run store answers')
  t.equal(ok.status, 'healthy')
})

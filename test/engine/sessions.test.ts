import { test } from 'tap'
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { SessionRegistry } from '../../src/engine/sessions.js'

test('remembered sessions are bounded; the oldest pins go first, and disk still finds written ones', async t => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-sessions-')))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const reg = new SessionRegistry(dir, 3)
  for (const id of ['a', 'b', 'c']) reg.remember(id, `/work/${id}`)
  t.equal(await reg.locate('a'), '/work/a', 'within the bound: remembered')
  reg.remember('d', '/work/d')
  t.equal(await reg.locate('a'), null, 'over the bound, the oldest pin is gone')
  t.equal(await reg.locate('c'), '/work/c')
  t.equal(await reg.locate('d'), '/work/d')
  reg.remember('b', '/work/b2')
  reg.remember('e', '/work/e')
  t.equal(await reg.locate('c'), null, 'pinning again makes a session new: c is now the oldest')
  t.equal(await reg.locate('b'), '/work/b2')

  mkdirSync(join(dir, 'projects', '-work-b'), { recursive: true })
  writeFileSync(join(dir, 'projects', '-work-b', 'b.jsonl'), JSON.stringify({ cwd: '/work/b', sessionId: 'b' }) + '\n')
  t.equal(await new SessionRegistry(dir, 3).locate('b'), '/work/b', 'a session the CLI wrote is found on disk, pinned or not')
  t.equal(await reg.exists('b'), true)
  t.equal(await reg.exists('zzz'), false)
})

import { test } from 'tap'
import { execFile } from 'node:child_process'
import { utimesSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

async function ensureBuilt (): Promise<{ code: number, stderr: string, ms: number }> {
  const started = Date.now()
  return await new Promise(resolve => {
    execFile(process.execPath, ['scripts/ensure-built.mjs'], { cwd: ROOT, timeout: 120_000 }, (err, _stdout, stderr) => {
      resolve({ code: err === null ? 0 : 1, stderr, ms: Date.now() - started })
    })
  })
}

test('npm start compiles only when a source is newer than dist/', async t => {
  const first = await ensureBuilt()
  t.equal(first.code, 0, first.stderr)
  const again = await ensureBuilt()
  t.equal(again.code, 0)
  t.equal(again.stderr, '', 'a current dist/ is not rebuilt')
  t.ok(again.ms < 5000, `and the check is quick (${again.ms} ms)`)

  const now = new Date()
  utimesSync(`${ROOT}/src/package-info.ts`, now, now)
  const edited = await ensureBuilt()
  t.equal(edited.code, 0, edited.stderr)
  t.match(edited.stderr, /Building \(src\/package-info\.ts changed\)/, 'an edited source is rebuilt, saying why')
  t.equal((await ensureBuilt()).stderr, '', 'and then it is current again')
})

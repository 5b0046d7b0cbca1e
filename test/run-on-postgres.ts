/**
 * `npm run test:postgres`: the test suite with every server on the PostgreSQL store, in cluster
 * mode (`TEST_DATABASE_URL`: each test's sandbox gets a database of its own). Starts a real
 * PostgreSQL server from the machine's binaries for the run and stops it after. Extra arguments go
 * to tap (e.g. test files); without any, every test file but those of warm spares, which cluster
 * mode does not have. Exits with tap's status.
 */
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { startPostgres } from './fixtures/postgres.js'

const stops: Array<() => unknown> = []
let status = 1
try {
  const pg = await startPostgres({ teardown: fn => { stops.push(fn) } })
  const files = process.argv.length > 2
    ? process.argv.slice(2)
    : (readdirSync('test', { recursive: true }) as string[]).map(f => join('test', f)).filter(f => f.endsWith('.test.ts') && !/warm-(start|identities)/.test(f)).sort()
  const tap = spawn('npx', ['tap', ...files], { stdio: 'inherit', env: { ...process.env, TEST_DATABASE_URL: pg.url } })
  const stop = (): void => { tap.kill('SIGTERM') }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  status = await new Promise<number>(resolve => tap.once('exit', (code, signal) => resolve(code ?? (signal !== null ? 1 : 0))))
} finally {
  for (const stop of stops.reverse()) await stop()
}
process.exit(status)

/**
 * What every row of the benchmark suite shares: the mode (`--quick`), the rows measured so far,
 * the log, the fake model, the work directory and the `server()` helper. Importing this starts the
 * fake model and makes the work directory; `closeContext()` (bench/run.ts, at the end) undoes both.
 */
import { chmodSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { startFakeModel, type FakeModel } from '../test/fixtures/fake-model.js'
import { cliEnv, FAKE_CLI, startServer, tempDir, type Proc } from './lib.js'

/** `--quick`: the CI smoke test, fewer and shorter repetitions (judged on `smoke_pass`). */
export const quick = process.argv.includes('--quick')

/** One row of the results table. */
export interface Row {
  row: number
  what: string
  compared_with: string
  measured: string
  baseline: string
  figure: number | null
  unit: string
  budget: string
  pass: boolean
  /** For bench:quick: fails only when this is false. */
  smoke_pass: boolean
  details: Record<string, unknown>
}

/** The rows measured so far, in the order they ran: each row function pushes its own. */
export const rows: Row[] = []
export const log = (s: string): void => { process.stderr.write(s + '\n') }

export const model: FakeModel = await startFakeModel()
const { dir, cleanup } = tempDir()
/** The suite's scratch directory (homes, data dirs, files to upload). */
export const work = dir
/** Where runs execute: a directory of its own (the server refuses roots that hold its data). */
export const runs = join(work, 'runs')
mkdirSync(runs)

/** The server, configured for the real CLI against the fake model, or for the fake CLI. */
export async function server (extra: Record<string, string> = {}, fakeCli = false): Promise<Proc> {
  const home = join(work, `home-${randomUUID()}`)
  mkdirSync(home, { recursive: true })
  return await startServer({
    ...cliEnv(home, model.url),
    DEFAULT_WORKING_DIR: runs,
    DATA_DIR: join(home, 'data'),
    // Rows 1-7 measure the engine; row 8 measures the isolation levels against this one.
    ISOLATION: 'none',
    // Cold starts unless a row measures warm ones (row 9).
    WARM_SPARES: '0',
    ...(fakeCli ? { CLAUDE_CODE_PATH: FAKE_CLI } : {}),
    ...extra
  })
}

/**
 * A server whose runs execute as agent identities (as root): its home, work directory and
 * agents' directory under `base` (a directory open to agents, outside /tmp), every server of
 * `base` reserving its agents' uids in one registry. `extra` sets the isolation level (none set:
 * the default).
 */
export async function agentServer (base: string, name: string, extra: Record<string, string>): Promise<Proc> {
  const home = join(base, `home-${name}`)
  const workDir = join(base, `work-${name}`)
  mkdirSync(home, { recursive: true })
  mkdirSync(workDir, { recursive: true, mode: 0o755 })
  chmodSync(workDir, 0o755)
  return await startServer({ ...cliEnv(home, model.url), DEFAULT_WORKING_DIR: workDir, DATA_DIR: join(home, 'data'), AGENTS_DIR: join(base, `agents-${name}`), AGENT_UID_REGISTRY_DIR: join(base, 'agent-uids'), ...extra })
}

/** Stop the fake model and remove the work directory. */
export async function closeContext (): Promise<void> {
  await model.close()
  cleanup()
}

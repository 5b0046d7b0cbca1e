/**
 * The benchmark suite: the server against the bare CLI, every figure a ratio (or an absolute
 * bound) measured in the same run. `npm run bench` is the full suite (a few minutes);
 * `npm run bench:quick` is the CI smoke test (under two minutes), which fails only on gross
 * regressions; `--only=N,M` runs those rows. Writes bench/results/latest.json and latest.md
 * (quick.json and quick.md with `--quick`) and prints the table. The rows are in bench/rows/,
 * what they share in bench/context.ts.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { join } from 'node:path'
import { ROOT, round } from './lib.js'
import { closeContext, quick, rows } from './context.js'
import { trivialRun } from './rows/trivial-run.js'
import { liveDelay } from './rows/live-delay.js'
import { concurrency } from './rows/concurrency.js'
import { health } from './rows/health.js'
import { listeners } from './rows/listeners.js'
import { bigOutput } from './rows/big-output.js'
import { eventLogWrites } from './rows/event-log-writes.js'
import { isolation } from './rows/isolation.js'
import { warmStart } from './rows/warm-start.js'
import { clusterMode } from './rows/cluster-mode.js'
import { limits } from './rows/limits.js'
import { openai } from './rows/openai.js'
import { workspaces } from './rows/workspaces.js'
import { consoleLoad } from './rows/console-load.js'
import { warmMix } from './rows/warm-mix.js'

const only = process.argv.find(a => a.startsWith('--only='))?.slice(7).split(',').map(Number)

/** The rows, in the order they run. */
const all: Array<[number, () => Promise<void>]> = [
  [1, trivialRun],
  [2, liveDelay],
  [3, concurrency],
  [4, health],
  [5, listeners],
  [6, bigOutput],
  [7, eventLogWrites],
  [8, isolation],
  [9, warmStart],
  [10, clusterMode],
  [11, limits],
  [12, openai],
  [13, workspaces],
  [14, consoleLoad],
  [15, warmMix]
]
const started = Date.now()
try {
  for (const [n, fn] of all) {
    if (only !== undefined && !only.includes(n)) continue
    const t0 = Date.now()
    try {
      await fn()
    } catch (err) {
      rows.push({ row: n, what: `row ${n}`, compared_with: '', measured: `ERROR: ${(err as Error).message.split('\n')[0]}`, baseline: '', figure: null, unit: '', budget: '', pass: false, smoke_pass: false, details: {} })
    }
    process.stderr.write(`row ${n}: ${round((Date.now() - t0) / 1000, 1)} s\n`)
  }
} finally {
  await closeContext()
}

const machine = { cpus: cpus().length, cpu_model: cpus()[0]?.model ?? 'unknown', memory_gb: round(totalmem() / 2 ** 30, 1), node: process.version, platform: `${process.platform}-${process.arch}` }
const report = { date: new Date().toISOString(), mode: quick ? 'quick' : 'full', seconds: round((Date.now() - started) / 1000, 0), machine, rows }
const md = [
  `# Benchmarks (${report.mode}, ${report.date})`,
  '',
  `Machine: ${machine.cpus} CPUs (${machine.cpu_model}), ${machine.memory_gb} GiB, Node ${machine.node}, ${machine.platform}. Took ${report.seconds} s.`,
  '',
  '| # | what | compared with | measured | baseline | figure | budget | ok |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map(r => `| ${r.row} | ${r.what} | ${r.compared_with} | ${r.measured} | ${r.baseline} | ${r.figure ?? '—'} ${r.unit} | ${r.budget} | ${r.pass ? 'yes' : 'NO'} |`),
  ''
].join('\n')
const dir = join(ROOT, 'bench', 'results')
mkdirSync(dir, { recursive: true })
const name = quick ? 'quick' : 'latest'
writeFileSync(join(dir, `${name}.json`), JSON.stringify(report, null, 2) + '\n')
writeFileSync(join(dir, `${name}.md`), md)
process.stdout.write(md + '\n')
const failed = rows.filter(r => quick ? !r.smoke_pass : !r.pass)
if (failed.length > 0) {
  process.stdout.write(`${quick ? 'smoke' : 'budget'} failures: rows ${failed.map(r => r.row).join(', ')}\n`)
  process.exitCode = 1
}

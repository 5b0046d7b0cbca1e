import { createReadStream, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { API_KEY, execute, median, round } from '../lib.js'
import { log, model, quick, rows, runs, server, work } from '../context.js'

/** Wall time of `fn`, ms. */
async function timed (fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}

/**
 * Row 13: workspaces: a file's upload and download through /api/files/content against cp of the
 * same file; GET /api/runs/{id}/changes of a run in a directory of many files; a trivial run there
 * against one in an empty directory.
 */
export async function workspaces (): Promise<void> {
  const mb = quick ? 16 : 64
  const files = quick ? 2000 : 10_000
  const n = quick ? 2 : 5
  log(`row 13: workspaces: a ${mb} MB upload and download against cp (${n} each); changes of a run in a ${files}-file directory`)
  const srv = await server()
  const source = join(work, 'upload.bin')
  const chunk = Buffer.alloc(1024 * 1024)
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i)
  writeFileSync(source, Buffer.concat(Array.from({ length: mb }, () => chunk)))
  const key = { 'x-api-key': API_KEY }
  const up: number[] = []
  const down: number[] = []
  const copy: number[] = []
  const peakBefore = srv.rss().peak
  let peakAfterFirst = peakBefore
  try {
    for (let i = 0; i < n; i++) {
      if (i === 1) peakAfterFirst = srv.rss().peak
      up.push(await timed(async () => {
        const body = createReadStream(source)
        const res = await fetch(`${srv.url}/api/files/content?path=bench-${i}.bin`, { method: 'PUT', headers: key, body: body as unknown as BodyInit, duplex: 'half' } as RequestInit)
        if (!res.ok) throw new Error(`upload failed: ${res.status} ${await res.text()}`)
      }))
      down.push(await timed(async () => {
        const res = await fetch(`${srv.url}/api/files/content?path=bench-${i}.bin`, { headers: key })
        let size = 0
        for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) size += c.length
        if (size !== mb * 1024 * 1024) throw new Error(`download: ${size} bytes`)
      }))
      copy.push(await timed(async () => await new Promise<void>((resolve, reject) => {
        spawn('cp', [source, join(runs, `cp-${i}.bin`)]).on('exit', code => { code === 0 ? resolve() : reject(new Error('cp failed')) })
      })))
    }
    // The first transfer grows the heap once (V8 lets up to 64 MB of buffers' memory pass before it
    // collects them); a file held in memory would grow it again with every transfer.
    const firstGrowth = peakAfterFirst - peakBefore
    const rssGrowth = srv.rss().peak - peakAfterFirst
    // A directory of many small files: what recording it costs a run, and what /changes answers in.
    const many = join(runs, 'many')
    mkdirSync(many)
    for (let i = 0; i < files; i++) {
      const d = join(many, `d${i % 100}`)
      if (i < 100) mkdirSync(d)
      writeFileSync(join(d, `f${i}.txt`), `file ${i}\n`)
    }
    model.on('touch three files', [{ tool: 'Bash', input: { command: 'sh -c "echo changed >> d1/f1.txt; echo new > added.txt; rm d2/f2.txt"' } }, { text: 'touched' }])
    const first = await execute(srv.url, { prompt: 'touch three files', working_directory: many, allowed_tools: ['Bash(sh *)'] })
    if (first.changes?.files !== 3) throw new Error('the run\'s changes: ' + JSON.stringify(first.changes ?? first.error))
    const inMany: number[] = []
    const inEmpty: number[] = []
    const listing: number[] = []
    const diffing: number[] = []
    mkdirSync(join(runs, 'empty'))
    for (let i = 0; i < n; i++) {
      inMany.push(await timed(async () => await execute(srv.url, { prompt: 'say hi', working_directory: many })))
      inEmpty.push(await timed(async () => await execute(srv.url, { prompt: 'say hi', working_directory: join(runs, 'empty') })))
      listing.push(await timed(async () => {
        const res = await fetch(`${srv.url}/api/runs/${first.run_id as string}/changes`, { headers: key })
        if ((await res.json() as { files?: unknown[] }).files?.length !== 3) throw new Error('changes list')
      }))
      diffing.push(await timed(async () => {
        const res = await fetch(`${srv.url}/api/runs/${first.run_id as string}/changes`, { headers: { ...key, accept: 'text/x-diff' } })
        if (!(await res.text()).includes('+changed')) throw new Error('changes diff')
      }))
    }
    const mbps = (ms: number[]): number => round(mb / (median(ms) / 1000), 0)
    const ratio = median(up) / median(copy)
    const changesMs = Math.max(median(listing), median(diffing))
    rows.push({
      row: 13,
      what: `workspaces: a ${mb} MB PUT /api/files/content and GET of it (median of ${n}); GET /api/runs/{id}/changes (list and diff) of a run in a ${files}-file directory; a trivial run there`,
      compared_with: 'cp of the same file on the same disk; the same trivial run in an empty directory',
      measured: `upload ${round(median(up), 0)} ms (${mbps(up)} MB/s), download ${round(median(down), 0)} ms (${mbps(down)} MB/s); server peak RSS +${round(firstGrowth, 1)} MB at the first transfer, then +${round(rssGrowth, 1)} MB over ${n - 1} more; changes list ${round(median(listing), 0)} ms, diff ${round(median(diffing), 0)} ms; trivial run ${round(median(inMany), 0)} ms`,
      baseline: `cp ${round(median(copy), 0)} ms (${mbps(copy)} MB/s); trivial run in an empty directory ${round(median(inEmpty), 0)} ms`,
      figure: round(ratio, 2),
      unit: '× (upload vs cp)',
      budget: 'RSS grows < 16 MB (after the first transfer); changes < 1 s',
      pass: rssGrowth < 16 && changesMs < 1000,
      smoke_pass: rssGrowth < 64 && changesMs < 5000,
      details: {
        upload_ms: up.map(x => round(x, 1)),
        download_ms: down.map(x => round(x, 1)),
        cp_ms: copy.map(x => round(x, 1)),
        rss_peak_growth_first_mb: round(firstGrowth, 1),
        rss_peak_growth_after_first_mb: round(rssGrowth, 1),
        changes_list_ms: listing.map(x => round(x, 1)),
        changes_diff_ms: diffing.map(x => round(x, 1)),
        run_in_many_files_ms: inMany.map(x => round(x, 1)),
        run_in_empty_dir_ms: inEmpty.map(x => round(x, 1))
      }
    })
  } finally {
    await srv.stop()
    // The shared run directory as it was: later rows' runs would record all of this before and after.
    for (let i = 0; i < n; i++) {
      rmSync(join(runs, `bench-${i}.bin`), { force: true })
      rmSync(join(runs, `cp-${i}.bin`), { force: true })
    }
    rmSync(join(runs, 'many'), { recursive: true, force: true })
    rmSync(join(runs, 'empty'), { recursive: true, force: true })
  }
}

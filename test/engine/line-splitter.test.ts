import { test } from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { LineSplitter } from '../../src/engine/line-splitter.js'

/** A splitter that records what it emits. */
function collect (maxLineBytes = 1024) {
  const lines: string[] = []
  const oversize: number[] = []
  const splitter = new LineSplitter(maxLineBytes, l => lines.push(l), n => oversize.push(n))
  return { splitter, lines, oversize }
}

test('a line split across chunks arrives whole, and several lines in one chunk arrive separately', async t => {
  const { splitter, lines, oversize } = collect()
  splitter.push(Buffer.from('{"type":"sys'))
  splitter.push(Buffer.from('tem"}\n{"a":1}\n{"b"'))
  t.same(lines, ['{"type":"system"}', '{"a":1}'], 'the partial third line is held back')
  splitter.push(Buffer.from(':2}\n'))
  t.same(lines, ['{"type":"system"}', '{"a":1}', '{"b":2}'])
  t.same(oversize, [])
})

test('a multi-byte UTF-8 character split between two chunks decodes whole', async t => {
  const { splitter, lines } = collect()
  const text = 'héllo 😀 wörld'
  const bytes = Buffer.from(`${text}\n`)
  // Cut inside the 4-byte emoji and inside the 2-byte é.
  const emojiAt = bytes.indexOf(Buffer.from('😀'))
  const eAt = bytes.indexOf(Buffer.from('é'))
  splitter.push(bytes.subarray(0, eAt + 1))
  splitter.push(bytes.subarray(eAt + 1, emojiAt + 2))
  splitter.push(bytes.subarray(emojiAt + 2))
  t.same(lines, [text])
  t.notOk(lines[0]!.includes('\uFFFD'), 'no replacement characters')
})

test('CRLF line endings are stripped', async t => {
  const { splitter, lines } = collect()
  splitter.push(Buffer.from('one\r\ntwo\r'))
  splitter.push(Buffer.from('\nthree\r\n'))
  t.same(lines, ['one', 'two', 'three'])
})

test('a final line without a newline is flushed by end()', async t => {
  const { splitter, lines } = collect()
  splitter.push(Buffer.from('first\nlast line'))
  t.same(lines, ['first'])
  splitter.end()
  t.same(lines, ['first', 'last line'])
  splitter.end()
  t.same(lines, ['first', 'last line'], 'a second end() emits nothing more')
})

test('empty lines are skipped', async t => {
  const { splitter, lines } = collect()
  splitter.push(Buffer.from('\n\na\n\n\nb\n\n'))
  splitter.end()
  t.same(lines, ['a', 'b'])
})

test('blank CRLF lines are skipped too', async t => {
  const { splitter, lines } = collect()
  splitter.push(Buffer.from('a\r\n\r\nb\r\n'))
  splitter.end()
  t.same(lines, ['a', 'b'])
})

test('a line at the cap passes; one byte over is dropped, reported with its size, and the next line still arrives', async t => {
  const { splitter, lines, oversize } = collect(10)
  splitter.push(Buffer.from('0123456789\n'))
  t.same(lines, ['0123456789'], 'exactly maxLineBytes is kept')
  splitter.push(Buffer.from('0123'))
  splitter.push(Buffer.from('4567890'))
  splitter.push(Buffer.from('abc\nnext\n'))
  t.same(lines, ['0123456789', 'next'])
  t.same(oversize, [14], 'the dropped line is reported once with its byte count')
})

test('an oversize final line without newline is reported by end()', async t => {
  const { splitter, lines, oversize } = collect(4)
  splitter.push(Buffer.from('ok\ntoo long'))
  splitter.end()
  t.same(lines, ['ok'])
  t.same(oversize, [8])
})

test('a 50 MB line fed in 64 KiB chunks is dropped with bounded memory', async t => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const cap = 1024 * 1024
  const chunkSize = 64 * 1024
  const total = 50 * 1024 * 1024
  const { splitter, lines, oversize } = collect(cap)
  splitter.push(Buffer.from('{"before":true}\n'))
  gc()
  const before = process.memoryUsage().arrayBuffers
  let peak = 0
  for (let sent = 0; sent < total; sent += chunkSize) {
    // A fresh buffer per chunk: if the splitter kept them, the memory would show it.
    splitter.push(Buffer.alloc(chunkSize, 0x78))
    if (sent % (8 * 1024 * 1024) === 0) {
      gc()
      peak = Math.max(peak, process.memoryUsage().arrayBuffers - before)
    }
  }
  gc()
  peak = Math.max(peak, process.memoryUsage().arrayBuffers - before)
  // The cap is 1 MiB; anything far below the 50 MB fed proves the chunks are not kept (gc timing adds noise).
  t.ok(peak < 20 * 1024 * 1024, `retained ${(peak / 1024 / 1024).toFixed(1)} MiB while reading a 50 MB line`)
  t.same(oversize, [], 'nothing reported before the line ends')
  splitter.push(Buffer.from('\n{"after":true}\n'))
  t.same(oversize, [total], 'reported once, with the full byte count')
  t.same(lines, ['{"before":true}', '{"after":true}'], 'nothing of the long line is emitted; the next line arrives')
})

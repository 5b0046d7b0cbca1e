import { test } from 'tap'
import { JsonShrinker } from '../../src/engine/json-shrinker.js'

/** Feed `text` in chunks of `size` bytes and return the shrinker. */
function shrink (text: string, maxString: number, size = 7, maxOut = 1 << 20): JsonShrinker {
  const s = new JsonShrinker(maxString, maxOut)
  const buf = Buffer.from(text)
  for (let i = 0; i < buf.length; i += size) s.push(buf.subarray(i, i + size))
  return s
}

test('long strings are cut, structure and other fields kept, at any chunking', async t => {
  const obj = { type: 'result', result: 'a'.repeat(1000), after: [1, 2, { x: 'short' }], n: 3.5, ok: true, nil: null }
  for (const size of [1, 2, 3, 7, 64, 5000]) {
    const s = shrink(JSON.stringify(obj), 10, size)
    const back = JSON.parse(s.result()!)
    t.equal(back.result, 'a'.repeat(10), `chunk ${size}: cut to 10`)
    t.same(back.after, obj.after, `chunk ${size}: later fields intact`)
    t.equal(back.n, 3.5)
    t.equal(back.ok, true)
    t.equal(back.nil, null)
    t.equal(s.shrunk, true)
  }
})

test('escapes are never split: quotes, backslashes and \\u sequences inside cut strings', async t => {
  const nasty = 'x\\"y\n\u00e9\u4e2d' + '\\\\"'.repeat(50) + '\u{1F600}'.repeat(20) + '"end'
  for (let max = 0; max < 40; max++) {
    for (const size of [1, 3, 5]) {
      const text = JSON.stringify({ s: nasty, keep: 'me', arr: [nasty, 'tail'] })
      const out = shrink(text, max, size).result()!
      let back: any
      t.doesNotThrow(() => { back = JSON.parse(out) }, `max ${max} chunk ${size}: still JSON`)
      t.equal(back.keep, 'me'.slice(0, max), 'short values are cut only past the limit')
      t.equal(back.arr[1], 'tail'.slice(0, max))
      t.same(Object.keys(back), ['s', 'keep', 'arr'], 'keys are never cut')
      t.ok(nasty.startsWith(back.s), `max ${max}: a prefix of the original`)
      t.notOk(back.s.includes('\uFFFD'), 'no broken character')
    }
  }
})

test('strings within the limit and text without long strings pass unchanged', async t => {
  const text = JSON.stringify({ a: 'short', b: ['x', 'y'], c: { d: 'é✓' } })
  const s = shrink(text, 100)
  t.equal(s.result(), text)
  t.equal(s.shrunk, false)
})

test('output over maxOutputBytes gives up (null), without holding the input', async t => {
  const many = JSON.stringify(Array.from({ length: 1000 }, (_, i) => `item-${i}`))
  const s = shrink(many, 100, 64, 500)
  t.equal(s.overflow, true)
  t.equal(s.result(), null)
})

test('a 50 MB string is skipped quickly', async t => {
  const s = new JsonShrinker(1000, 1 << 20)
  s.push(Buffer.from('{"type":"result","result":"'))
  const chunk = Buffer.alloc(64 * 1024, 0x61)
  const started = performance.now()
  for (let i = 0; i < 800; i++) s.push(chunk)
  s.push(Buffer.from('","num_turns":2}'))
  const ms = performance.now() - started
  const back = JSON.parse(s.result()!)
  t.equal(back.result.length, 1000)
  t.equal(back.num_turns, 2)
  t.ok(ms < 2000, `50 MB in ${ms.toFixed(0)} ms`)
})

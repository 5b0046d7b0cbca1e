import { StringDecoder } from 'node:string_decoder'

/**
 * Shrinks a JSON text read in chunks by cutting every string value (never a key) longer than `maxStringBytes`,
 * keeping the text valid JSON. Used for CLI output lines too long to hold whole (a 200 MB
 * `result`): the line's structure and every other field survive, the giant string is cut at a
 * character boundary, and memory stays bounded by `maxOutputBytes`.
 */
export class JsonShrinker {
  // Decoded as it goes (a multi-byte character split across pieces is held back by the decoder),
  // so the output exists once, as a string, rather than as buffers plus their concatenation.
  private readonly decoder = new StringDecoder('utf8')
  private readonly out: string[] = []
  private outBytes = 0
  private inString = false
  private escape = false
  /** Hex digits still to come in a `\uXXXX` escape. */
  private hex = 0
  private stringBytes = 0
  private cutting = false
  /** Open containers (true: object), and whether the next string in the object is a key. */
  private readonly stack: boolean[] = []
  private expectKey = false
  private isKey = false
  /** Some string was cut. */
  shrunk = false
  /** The output outgrew `maxOutputBytes`: give up on this line. */
  overflow = false

  constructor (private readonly maxStringBytes: number, private readonly maxOutputBytes: number) {}

  push (chunk: Buffer): void {
    if (this.overflow) return
    let keepFrom = 0
    let i = 0
    const n = chunk.length
    // Next quote / backslash at or after i, cached so skipping a cut string stays linear.
    let quote = -1
    let slash = -1
    const find = (byte: number, from: number): number => {
      const k = chunk.indexOf(byte, from)
      return k === -1 ? n : k
    }
    while (i < n) {
      if (this.cutting) {
        if (this.escape) {
          this.escape = false
          i++
          continue
        }
        if (quote < i) quote = find(0x22, i)
        if (slash < i) slash = find(0x5c, i)
        i = Math.min(quote, slash)
        if (i >= n) break
        if (i === slash) {
          this.escape = true
          i++
          continue
        }
        // The closing quote: copy from it on.
        this.cutting = false
        this.inString = false
        keepFrom = i
        i++
        continue
      }
      const c = chunk[i]!
      if (!this.inString) {
        if (c === 0x22) {
          this.inString = true
          this.stringBytes = 0
          this.isKey = this.expectKey && this.stack.at(-1) === true
        } else if (c === 0x7b) { // {
          this.stack.push(true)
          this.expectKey = true
        } else if (c === 0x5b) { // [
          this.stack.push(false)
        } else if (c === 0x7d || c === 0x5d) { // } ]
          this.stack.pop()
        } else if (c === 0x2c) { // ,
          this.expectKey = this.stack.at(-1) === true
        } else if (c === 0x3a) { // :
          this.expectKey = false
        }
        i++
        continue
      }
      if (this.escape) {
        this.escape = false
        if (c === 0x75) this.hex = 4
        this.stringBytes++
        i++
        continue
      }
      if (this.hex > 0) {
        this.hex--
        this.stringBytes++
        i++
        continue
      }
      if (c === 0x22) {
        this.inString = false
        i++
        continue
      }
      // At the start of a character (not a UTF-8 continuation byte, not inside an escape): cut here?
      if (this.stringBytes >= this.maxStringBytes && !this.isKey && (c & 0xc0) !== 0x80) {
        this.emit(chunk.subarray(keepFrom, i))
        this.cutting = true
        this.shrunk = true
        if (c === 0x5c) this.escape = true
        i++
        continue
      }
      if (c === 0x5c) this.escape = true
      this.stringBytes++
      i++
    }
    if (!this.cutting) this.emit(chunk.subarray(keepFrom, n))
  }

  /** The shrunk text (null after an overflow). */
  result (): string | null {
    if (this.overflow) return null
    return this.out.join('') + this.decoder.end()
  }

  private emit (piece: Buffer): void {
    if (piece.length === 0 || this.overflow) return
    if (this.outBytes + piece.length > this.maxOutputBytes) {
      this.overflow = true
      this.out.length = 0
      return
    }
    this.out.push(this.decoder.write(piece))
    this.outBytes += piece.length
  }
}

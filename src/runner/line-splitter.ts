import { JsonShrinker } from './json-shrinker.js'

/**
 * Splits a byte stream into lines without ever holding more than `maxLineBytes` of one line.
 * Works on bytes, so a multi-byte character split across chunks is decoded whole. A line longer
 * than the cap is, with `maxStringBytes` set, shrunk as JSON (strings over that cut, structure
 * kept; `onLine` is told it was shrunk), else dropped (`onOversize`); reading resumes at the next
 * newline either way.
 */
export class LineSplitter {
  private parts: Buffer[] = []
  private size = 0
  private skipping = false
  private skipped = 0
  private shrinker: JsonShrinker | undefined

  constructor (
    private readonly maxLineBytes: number,
    private readonly onLine: (line: string, shrunk: boolean) => void,
    private readonly onOversize: (bytes: number) => void,
    private readonly maxStringBytes?: number
  ) {}

  push (chunk: Buffer): void {
    let start = 0
    while (start < chunk.length) {
      const nl = chunk.indexOf(10, start)
      const end = nl === -1 ? chunk.length : nl
      this.take(chunk.subarray(start, end))
      if (nl === -1) return
      this.finishLine()
      start = nl + 1
    }
  }

  /** Flush a final line that had no trailing newline. */
  end (): void {
    if (this.size > 0 || this.skipping) this.finishLine()
  }

  private take (piece: Buffer): void {
    if (piece.length === 0) return
    if (this.skipping) {
      this.skipped += piece.length
      this.shrinker?.push(piece)
      return
    }
    if (this.size + piece.length > this.maxLineBytes) {
      this.skipping = true
      this.skipped = this.size + piece.length
      if (this.maxStringBytes !== undefined) {
        this.shrinker = new JsonShrinker(this.maxStringBytes, this.maxLineBytes)
        for (const p of this.parts) this.shrinker.push(p)
        this.shrinker.push(piece)
      }
      this.parts = []
      this.size = 0
      return
    }
    this.parts.push(piece)
    this.size += piece.length
  }

  private finishLine (): void {
    if (this.skipping) {
      const n = this.skipped
      const shrunk = this.shrinker?.result() ?? null
      this.skipping = false
      this.skipped = 0
      this.shrinker = undefined
      if (shrunk !== null) this.onLine(shrunk, true)
      else this.onOversize(n)
      return
    }
    const line = this.parts.length === 1 ? this.parts[0]!.toString('utf8') : Buffer.concat(this.parts, this.size).toString('utf8')
    this.parts = []
    this.size = 0
    const text = line.endsWith('\r') ? line.slice(0, -1) : line
    if (text.length > 0) this.onLine(text, false)
  }
}

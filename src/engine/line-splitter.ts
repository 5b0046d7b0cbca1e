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
  private preview: JsonShrinker | undefined

  constructor (
    private readonly maxLineBytes: number,
    /** `preview`: for a shrunk line, the same line with strings cut to `previewStringBytes`. */
    private readonly onLine: (line: string, shrunk: boolean, preview?: string) => void,
    private readonly onOversize: (bytes: number) => void,
    private readonly maxStringBytes?: number,
    /** With `maxStringBytes`: lines longer than this are streamed through the shrinker rather than held whole. */
    private readonly shrinkAboveBytes = maxLineBytes,
    private readonly previewStringBytes?: number
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
      this.preview?.push(piece)
      return
    }
    const limit = this.maxStringBytes !== undefined ? Math.min(this.shrinkAboveBytes, this.maxLineBytes) : this.maxLineBytes
    if (this.size + piece.length > limit) {
      this.skipping = true
      this.skipped = this.size + piece.length
      if (this.maxStringBytes !== undefined) {
        // Room for one string at the cap plus the line's structure.
        this.shrinker = new JsonShrinker(this.maxStringBytes, this.maxLineBytes + this.maxStringBytes)
        if (this.previewStringBytes !== undefined) this.preview = new JsonShrinker(this.previewStringBytes, this.maxLineBytes + this.previewStringBytes)
        for (const p of [...this.parts, piece]) {
          this.shrinker.push(p)
          this.preview?.push(p)
        }
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
      const preview = this.preview?.result() ?? undefined
      this.skipping = false
      this.skipped = 0
      this.shrinker = undefined
      this.preview = undefined
      if (shrunk !== null) this.onLine(shrunk, true, preview)
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

/**
 * Splits a byte stream into lines without ever holding more than `maxLineBytes` of one line.
 * Works on bytes, so a multi-byte character split across chunks is decoded whole. A line longer
 * than the cap is dropped (reported through `onOversize`) and reading resumes at the next newline.
 */
export class LineSplitter {
  private parts: Buffer[] = []
  private size = 0
  private skipping = false
  private skipped = 0

  constructor (
    private readonly maxLineBytes: number,
    private readonly onLine: (line: string) => void,
    private readonly onOversize: (bytes: number) => void
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
      return
    }
    if (this.size + piece.length > this.maxLineBytes) {
      this.skipping = true
      this.skipped = this.size + piece.length
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
      this.skipping = false
      this.skipped = 0
      this.onOversize(n)
      return
    }
    const line = this.parts.length === 1 ? this.parts[0]!.toString('utf8') : Buffer.concat(this.parts, this.size).toString('utf8')
    this.parts = []
    this.size = 0
    const text = line.endsWith('\r') ? line.slice(0, -1) : line
    if (text.length > 0) this.onLine(text)
  }
}

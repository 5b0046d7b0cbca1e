/**
 * Whether CLIs can be launched the way runs launch them (identity, sandbox, broker): what
 * `/health` reports as `isolation.error`. A failed start-up self-check, or a run of failures of
 * runs and spares to start, makes it an error; the next launch that works clears it.
 */
export class LaunchHealth {
  /** Consecutive failures of runs or spares to start that make `/health` degraded. */
  static readonly THRESHOLD = 2
  private failures = 0
  private last: string | null = null
  private check: string | null = null

  /** A CLI started (printed its first line, parked, or passed the self-check). */
  worked (): void {
    this.failures = 0
    this.last = null
    this.check = null
  }

  /** A CLI could not start: why, as a person can act on it. */
  failed (why: string): void {
    this.failures++
    this.last = why
  }

  /** The start-up self-check failed. */
  checkFailed (why: string): void {
    this.check = why
  }

  /** What keeps runs from starting, or null. */
  get error (): string | null {
    if (this.check !== null) return this.check
    if (this.failures < LaunchHealth.THRESHOLD) return null
    return `the last ${this.failures} runs or warm spares could not start their CLI: ${this.last ?? 'unknown error'}`
  }
}

/** Lines of the launch itself (the sandbox, the identity switch), as opposed to the CLI's own. */
const LAUNCH_LINE = /^(bwrap|setpriv|unshare|mount|umount|mkdir|ccapi-sandbox|ccapi-enter)\b.*:/

/**
 * Why a CLI could not be launched, from what the launch itself said (a spawn error, or a line of
 * bubblewrap, setpriv, mount or the server's own launch scripts), or null when the CLI started and
 * failed on its own: what an agent does to its own configuration is no reason for `/health`, nor
 * text for everyone to read there.
 */
export function launchFailureReason (stderr: string, spawnError?: string): string | null {
  if (spawnError !== undefined) return spawnError.slice(0, 500)
  const line = stderr.split('\n').map(l => l.trim()).find(l => LAUNCH_LINE.test(l))
  return line === undefined ? null : line.slice(0, 500)
}

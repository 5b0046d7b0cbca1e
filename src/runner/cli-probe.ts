import { execa } from 'execa'

export interface CliStatus {
  available: boolean
  version: string | null
  checkedAt: number
  error?: string
}

/**
 * Knows whether the CLI can be run, without spawning per request: probed at start and refreshed
 * on an unref'd timer, so `/health` stays cheap under any load.
 */
export class CliProbe {
  status: CliStatus = { available: false, version: null, checkedAt: 0, error: 'not probed yet' }
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly cliPath: string, private readonly env: Record<string, string>) {}

  /** Probe now; resolves with the new status. Never throws. */
  async refresh (): Promise<CliStatus> {
    try {
      const { stdout } = await execa(this.cliPath, ['--version'], { env: this.env, extendEnv: false, timeout: 10_000, stdin: 'ignore' })
      const version = /\d+\.\d+\.\d+\S*/.exec(stdout)?.[0] ?? stdout.trim()
      this.status = { available: true, version, checkedAt: Date.now() }
    } catch (err) {
      this.status = { available: false, version: null, checkedAt: Date.now(), error: (err as Error).message.split('\n')[0] }
    }
    return this.status
  }

  /** Refresh every `intervalS` seconds in the background until `stop()`. */
  startBackground (intervalS: number): void {
    this.timer = setInterval(() => { void this.refresh() }, intervalS * 1000)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }
}

import { execa } from 'execa'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

/** Whether the CLI will find a Claude credential: `unknown` until probed, or when it cannot say. */
export type CredentialStatus = 'ok' | 'missing' | 'unknown'

export interface CliStatus {
  available: boolean
  version: string | null
  credentials: CredentialStatus
  checkedAt: number
  error?: string
}

/** Variables that give the CLI a credential, or send it to a provider with credentials of its own. */
const CREDENTIAL_VARS = ['ANTHROPIC_API_KEY', 'ANTHROPIC_AUTH_TOKEN', 'CLAUDE_CODE_OAUTH_TOKEN', 'CLAUDE_CODE_USE_BEDROCK', 'CLAUDE_CODE_USE_VERTEX', 'CLAUDE_CODE_USE_FOUNDRY']

/**
 * A guess from the environment and the config directory, for a CLI that cannot answer
 * `claude auth status` itself: a credential variable, or a stored login.
 */
export function credentialsFromEnvironment (env: Record<string, string>): CredentialStatus {
  if (CREDENTIAL_VARS.some(v => (env[v] ?? '') !== '')) return 'ok'
  const configDir = env.CLAUDE_CONFIG_DIR ?? join(env.HOME ?? '/', '.claude')
  return existsSync(join(configDir, '.credentials.json')) ? 'ok' : 'missing'
}

/**
 * Knows whether the CLI can be run and has a credential, without spawning per request: probed at
 * start and refreshed on an unref'd timer, so `/health` stays cheap under any load.
 */
export class CliProbe {
  status: CliStatus = { available: false, version: null, credentials: 'unknown', checkedAt: 0, error: 'not probed yet' }
  private timer: NodeJS.Timeout | undefined

  constructor (readonly cli: string, private readonly env: Record<string, string>) {}

  /** Probe now; resolves with the new status. Never throws. */
  async refresh (): Promise<CliStatus> {
    const opts = { env: this.env, extendEnv: false, timeout: 10_000, stdin: 'ignore' } as const
    const [version, auth] = await Promise.allSettled([
      execa(this.cli, ['--version'], opts),
      // Exits 1 when logged out; the JSON says so either way.
      execa(this.cli, ['auth', 'status', '--json'], { ...opts, reject: false })
    ])
    if (version.status === 'rejected') {
      this.status = { available: false, version: null, credentials: 'unknown', checkedAt: Date.now(), error: (version.reason as Error).message.split('\n')[0] }
      return this.status
    }
    const stdout = version.value.stdout
    this.status = {
      available: true,
      version: /\d+\.\d+\.\d+\S*/.exec(stdout)?.[0] ?? stdout.trim(),
      credentials: auth.status === 'fulfilled' ? readAuthStatus(auth.value.stdout) ?? credentialsFromEnvironment(this.env) : credentialsFromEnvironment(this.env),
      checkedAt: Date.now()
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

/** `claude auth status --json`: `{ loggedIn, authMethod, apiProvider }`; null when it is not that. */
function readAuthStatus (stdout: string): CredentialStatus | null {
  try {
    const s = JSON.parse(stdout) as { loggedIn?: unknown, apiProvider?: unknown }
    if (typeof s.loggedIn !== 'boolean') return null
    // Bedrock, Vertex and the like bring their own credentials, which the CLI does not check here.
    if (s.loggedIn || (typeof s.apiProvider === 'string' && s.apiProvider !== 'firstParty')) return 'ok'
    return 'missing'
  } catch {
    return null
  }
}

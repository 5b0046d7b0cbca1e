import type { AgentIdentity } from '../isolation/identities.js'
import type { Environment } from '../config.js'
import { RUN_MARKER_VAR } from '../isolation/proc.js'

/**
 * Names taken from the server's environment into the CLI's: operator credentials and routing for
 * Claude, and what a shell needs to work. Everything else the server has (its own API key first of
 * all) stays out, because commands the model runs can read the whole environment.
 */
const PASS_EXACT = new Set([
  'PATH', 'HOME', 'USER', 'LOGNAME', 'SHELL', 'LANG', 'LANGUAGE', 'TZ', 'TERM', 'TMPDIR',
  'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'http_proxy', 'https_proxy', 'no_proxy',
  'NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE', 'SSL_CERT_DIR',
  'CLAUDE_CONFIG_DIR', 'DISABLE_AUTOUPDATER', 'DISABLE_TELEMETRY', 'DISABLE_ERROR_REPORTING',
  'API_TIMEOUT_MS', 'MAX_THINKING_TOKENS', 'BASH_DEFAULT_TIMEOUT_MS', 'BASH_MAX_TIMEOUT_MS',
  'GOOGLE_APPLICATION_CREDENTIALS', 'CLOUD_ML_REGION', 'IS_SANDBOX'
])
const PASS_PREFIXES = ['ANTHROPIC_', 'CLAUDE_CODE_', 'AWS_', 'VERTEX_REGION_', 'LC_']
/** Server settings that happen to share a prefix with the above and must not leak. */
const NEVER_PASS = new Set(['CLAUDE_API_KEY', 'CLAUDE_CODE_PATH'])

/**
 * What a request may not set. Matched on the upper-cased name, so `http_proxy` is caught too.
 * These steer credentials, routing, code loading, the shell, or the CLI's sandbox.
 */
const DENY_PREFIXES = [
  'ANTHROPIC_', 'CLAUDE_', 'AWS_', 'GOOGLE_', 'GCLOUD_', 'AZURE_', 'VERTEX_', 'OTEL_', 'LD_', 'DYLD_',
  'NODE_', 'NPM_CONFIG_', 'BUN_', 'DENO_', 'SSL_', 'GIT_', 'PYTHON', 'PERL', 'RUBY', 'JAVA_', '_JAVA_',
  'XDG_', 'MCP_', 'DISABLE_', 'BASH_FUNC_', 'LC_'
]
const DENY_SUFFIXES = ['_PROXY']
const DENY_EXACT = new Set([
  'PATH', 'HOME', 'SHELL', 'BASH_ENV', 'ENV', 'TMPDIR', 'TMP', 'TEMP', 'IS_SANDBOX', 'IFS', 'PS4',
  'PROMPT_COMMAND', 'ZDOTDIR', 'CDPATH', 'GLOBIGNORE', 'SHELLOPTS', 'BASHOPTS', 'GCONV_PATH',
  'CLOUD_ML_REGION', 'API_TIMEOUT_MS', 'MAX_THINKING_TOKENS', 'CURL_CA_BUNDLE', 'REQUESTS_CA_BUNDLE',
  'USER', 'LOGNAME', 'CLASSPATH', 'MALLOC_CONF', 'GLIBC_TUNABLES', 'LANG', 'LANGUAGE', RUN_MARKER_VAR
])

/** Why a request's variable name is refused, or null when it may be set. */
export function refusedEnvName (name: string): string | null {
  const upper = name.toUpperCase()
  if (DENY_EXACT.has(upper)) return `${name} is reserved`
  const prefix = DENY_PREFIXES.find(p => upper.startsWith(p))
  if (prefix !== undefined) return `${name} matches the refused pattern ${prefix}*`
  const suffix = DENY_SUFFIXES.find(s => upper.endsWith(s))
  if (suffix !== undefined) return `${name} matches the refused pattern *${suffix}`
  return null
}

/**
 * Build the CLI's environment from an allow-list of the server's own variables, the operator's
 * extra names (`PASS_ENV`), the request's variables (already checked) and the run marker.
 */
export function buildChildEnv (
  serverEnv: Environment,
  requestEnv: Record<string, string>,
  marker: string,
  passEnv: readonly string[] = []
): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(serverEnv)) {
    // An empty value (`KEY=` in .env) means unset: an empty credential must not shadow another one.
    if (value === undefined || value === '' || NEVER_PASS.has(name)) continue
    if (PASS_EXACT.has(name) || PASS_PREFIXES.some(p => name.startsWith(p)) || passEnv.includes(name)) {
      env[name] = value
    }
  }
  // The CLI must never update itself under a running server.
  env.DISABLE_AUTOUPDATER ??= '1'
  Object.assign(env, requestEnv)
  env[RUN_MARKER_VAR] = marker
  return env
}

/**
 * The user, home, Claude config and temp directory of an agent identity, in a CLI's environment.
 * The CLI keeps its per-uid directories (`claude-<uid>`, `cc-socks-<uid>`) in `CLAUDE_CODE_TMPDIR`,
 * else in `TMPDIR`, else in /tmp, where any other user could make them first and break its runs.
 */
export function identityEnv (identity: AgentIdentity): Record<string, string> {
  return {
    HOME: identity.home,
    CLAUDE_CONFIG_DIR: identity.configDir,
    TMPDIR: identity.tmpDir,
    CLAUDE_CODE_TMPDIR: identity.tmpDir,
    USER: `agent-${identity.key}`,
    LOGNAME: `agent-${identity.key}`
  }
}

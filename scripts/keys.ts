/**
 * Manage named API keys in an `API_KEYS_FILE` (JSON, or YAML for .yaml/.yml); see USAGE.
 * `add` prints the new key once; only its SHA-256 is written.
 */
import { existsSync, readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { generateKey, readKeyFile, SCOPES, sha256Hex, writeKeyFile, type KeyEntry, type Scope } from '../src/auth/keys.js'
import { parseDotenv } from '../src/dotenv.js'
import { DEFAULT_KEYS_FILE } from '../src/config.js'

/**
 * The file a server started here reads: API_KEYS_FILE from the environment, else from `.env`, else
 * ./api-keys.json (which the server reads whenever it exists and API_KEYS_FILE is unset).
 */
const serverKeysFile = (): string => {
  const fromEnv = process.env.API_KEYS_FILE
  if (fromEnv !== undefined && fromEnv.trim() !== '') return fromEnv
  const fromDotenv = existsSync('.env') ? parseDotenv(readFileSync('.env', 'utf8')).values.API_KEYS_FILE : undefined
  return fromDotenv !== undefined && fromDotenv.trim() !== '' ? fromDotenv : DEFAULT_KEYS_FILE
}

const USAGE = `Manage the server's named API keys (only their SHA-256 is stored).

Usage:
  npm run keys -- add NAME [--scopes SCOPES] [--max-concurrent N] [--daily-budget USD]
                           [--rate-limit PER_MIN] [--file PATH]
  npm run keys -- list [--file PATH]
  npm run keys -- remove NAME [--file PATH]
  npm run keys -- --help

  add      create a key and print it once (default scopes: runs:write,runs:read)
  list     show every key's name, scopes and limits
  remove   delete a key (the server drops it at its next start)

Scopes: ${SCOPES.join(', ')}
  runs:write     start and cancel runs            runs:read      read its own runs
  runs:read_all  read every key's runs (dashboards) admin        everything, every key's runs
  approvals:write  answer approvals of the runs it may read (a person deciding for a bot)

--file defaults to API_KEYS_FILE (from the environment or .env), else ./api-keys.json, which
a server started in this directory without API_KEYS_FILE reads.
`

function fail (message: string): never {
  process.stderr.write(message + '\n')
  process.exit(2)
}

function args (): ReturnType<typeof parseOptions> {
  try {
    return parseOptions()
  } catch (err) {
    fail((err as Error).message)
  }
}
const parseOptions = () => parseArgs({
  allowPositionals: true,
  options: {
    file: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
    scopes: { type: 'string', default: 'runs:write,runs:read' },
    'max-concurrent': { type: 'string' },
    'daily-budget': { type: 'string' },
    'rate-limit': { type: 'string' }
  }
})
const { values, positionals } = args()
const [command, name] = positionals
if (values.help === true || command === 'help') {
  process.stdout.write(USAGE)
  process.exit(0)
}
const file = values.file ?? serverKeysFile()
let keys: KeyEntry[]
try {
  keys = readKeyFile(file).keys
} catch (err) {
  fail((err as Error).message)
}

const positiveInt = (flag: string, v: string | undefined): number | undefined => {
  if (v === undefined) return undefined
  if (!/^[1-9]\d*$/.test(v)) fail(`--${flag} must be a positive integer`)
  return Number(v)
}

switch (command) {
  case 'add': {
    if (name === undefined || !/^(?!\.+$)[A-Za-z0-9_.-]{1,64}$/.test(name)) fail('usage: keys add NAME (letters, digits, _ . -)')
    if (keys.some(k => k.name === name)) fail(`a key named ${name} exists already in ${file}`)
    const scopes = values.scopes.split(',').map(s => s.trim()).filter(s => s !== '')
    for (const s of scopes) if (!(SCOPES as readonly string[]).includes(s)) fail(`unknown scope ${s} (known: ${SCOPES.join(', ')})`)
    const key = generateKey()
    const entry: KeyEntry = { name, key_sha256: sha256Hex(key), scopes: scopes as Scope[] }
    const max = positiveInt('max-concurrent', values['max-concurrent'])
    const rate = positiveInt('rate-limit', values['rate-limit'])
    if (max !== undefined) entry.max_concurrent_runs = max
    if (rate !== undefined) entry.rate_limit_per_min = rate
    if (values['daily-budget'] !== undefined) {
      const budget = Number(values['daily-budget'])
      if (!(budget > 0)) fail('--daily-budget must be a positive number of USD')
      entry.daily_budget_usd = budget
    }
    await writeKeyFile(file, { keys: [...keys, entry] })
    process.stdout.write(`Added key ${name} (${scopes.join(', ')}) to ${file}. It is shown only now:\n\n  ${key}\n\n`)
    // A file of its own is read only where the server is told of it.
    if (resolve(file) !== resolve(serverKeysFile())) process.stdout.write(`A server started here does not read ${file}: start it with API_KEYS_FILE=${resolve(file)}.\n`)
    break
  }
  case 'list':
    if (!existsSync(file)) fail(`no key file at ${file}; create one with: npm run keys -- add NAME --file ${file}`)
    for (const k of keys) {
      const limits = [
        k.max_concurrent_runs !== undefined ? `max_concurrent_runs=${k.max_concurrent_runs}` : '',
        k.daily_budget_usd !== undefined ? `daily_budget_usd=${k.daily_budget_usd}` : '',
        k.rate_limit_per_min !== undefined ? `rate_limit_per_min=${k.rate_limit_per_min}` : ''
      ].filter(x => x !== '').join(' ')
      process.stdout.write(`${k.name}\t${k.scopes.join(',')}\t${limits}\n`)
    }
    break
  case 'remove': {
    if (name === undefined) fail('usage: keys remove NAME')
    if (!keys.some(k => k.name === name)) fail(`no key named ${name} in ${file}`)
    await writeKeyFile(file, { keys: keys.filter(k => k.name !== name) })
    process.stdout.write(`Removed key ${name} from ${file}.\n`)
    break
  }
  default:
    fail(command === undefined ? USAGE : `unknown command ${command}\n\n${USAGE}`)
}

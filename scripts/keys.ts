/**
 * Manage named API keys in an `API_KEYS_FILE` (JSON, or YAML for .yaml/.yml):
 *
 *   npm run keys -- add NAME [--scopes runs:write,runs:read] [--max-concurrent N]
 *                            [--daily-budget USD] [--rate-limit PER_MIN] [--file PATH]
 *   npm run keys -- list [--file PATH]
 *   npm run keys -- remove NAME [--file PATH]
 *
 * `add` prints the new key once; only its SHA-256 is written. The default file is ./api-keys.json.
 */
import { parseArgs } from 'node:util'
import { generateKey, readKeyFile, SCOPES, sha256Hex, writeKeyFile, type KeyEntry, type Scope } from '../src/auth/keys.js'

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
    file: { type: 'string', default: 'api-keys.json' },
    scopes: { type: 'string', default: 'runs:write,runs:read' },
    'max-concurrent': { type: 'string' },
    'daily-budget': { type: 'string' },
    'rate-limit': { type: 'string' }
  }
})
const { values, positionals } = args()
const [command, name] = positionals
const file = values.file
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
    if (name === undefined || !/^[A-Za-z0-9_.-]{1,64}$/.test(name)) fail('usage: keys add NAME (letters, digits, _ . -)')
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
    break
  }
  case 'list':
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
    fail('usage: keys add NAME [--scopes …] [--max-concurrent N] [--daily-budget USD] [--rate-limit N] [--file PATH] | keys list | keys remove NAME')
}

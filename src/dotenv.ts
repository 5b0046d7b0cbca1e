/**
 * The `.env` file, read the way `.env.example` documents it: `NAME=value` per line, `#` starts a
 * comment only at the beginning of a line, and an unquoted value is everything after `=` (trimmed),
 * `#` included, so `CLAUDE_API_KEY=s3cr#t-key` keeps its whole key. A value may be quoted with `'`
 * (taken literally) or `"` (with `\n`, `\t`, `\"` and `\\` escapes) to keep leading or trailing spaces.
 * Node's own `parseEnv` and dotenv treat ` #` as the start of a comment and cut such values.
 */

export interface DotenvResult {
  /** The variables, in file order (a later line wins). */
  values: Record<string, string>
  /** Lines that are kept but look like a mistake, each naming its line and variable. */
  warnings: string[]
}

const NAME = /^[A-Za-z_][A-Za-z0-9_.]*$/

const unescapeDouble = (s: string): string =>
  s.replace(/\\([nrt"\\$])/g, (_m, c: string) => c === 'n' ? '\n' : c === 'r' ? '\r' : c === 't' ? '\t' : c)

/** Parse the text of a `.env` file. Never throws: a line it cannot read is skipped with a warning. */
export function parseDotenv (text: string, file = '.env'): DotenvResult {
  const values: Record<string, string> = {}
  const warnings: string[] = []
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim()
    if (line === '' || line.startsWith('#')) continue
    const where = `${file} line ${i + 1}`
    const body = line.startsWith('export ') ? line.slice(7).trimStart() : line
    const eq = body.indexOf('=')
    const name = eq < 0 ? body : body.slice(0, eq).trim()
    if (eq < 0 || !NAME.test(name)) {
      warnings.push(`${where} is not NAME=value and was ignored`)
      continue
    }
    let value = body.slice(eq + 1).trim()
    const quote = value[0]
    if ((quote === '"' || quote === '\'') && value.length >= 2 && value.endsWith(quote)) {
      value = value.slice(1, -1)
      if (quote === '"') value = unescapeDouble(value)
    } else if (quote === '"' || quote === '\'') {
      // An opening quote without its closing one on the same line: kept as written, but said.
      warnings.push(`${where}: ${name} starts with ${quote} but does not end with it; the value is kept as written, quotes included`)
    } else if (/\s#/.test(value)) {
      warnings.push(`${where}: ${name} contains " #"; it is kept as part of the value (comments go on their own line)`)
    }
    values[name] = value
  }
  return { values, warnings }
}

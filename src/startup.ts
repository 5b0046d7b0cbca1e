import { ConfigError, ConfigSchema, type Environment } from './config.js'

/** One failed check of the configuration schema, as ajv (through env-schema) reports it. */
interface SchemaError {
  instancePath: string
  keyword: string
  params: Record<string, unknown>
  message?: string
}

const isSchemaFailure = (err: unknown): err is Error & { errors: SchemaError[] } =>
  err instanceof Error && Array.isArray((err as { errors?: unknown }).errors) &&
  ((err as unknown) as { errors: unknown[] }).errors.every(e => typeof (e as SchemaError)?.instancePath === 'string')

/** What a variable accepts, said so a person can fix it. */
function expected (name: string, e: SchemaError): string {
  const prop = (ConfigSchema.properties as Record<string, { anyOf?: Array<{ const?: unknown }>, minimum?: number, maximum?: number, type?: string }>)[name]
  if (prop?.anyOf !== undefined) return `one of ${prop.anyOf.map(c => String(c.const)).join(', ')}`
  if (e.keyword === 'type') return e.params.type === 'integer' ? 'a whole number' : e.params.type === 'boolean' ? 'true or false' : `a ${String(e.params.type)}`
  if (e.keyword === 'minimum' || e.keyword === 'maximum' || e.keyword === 'exclusiveMinimum') {
    const parts = [prop?.minimum !== undefined ? `>= ${prop.minimum}` : '', prop?.maximum !== undefined ? `<= ${prop.maximum}` : '']
      .filter(p => p !== '')
    return parts.length > 0 ? `a number ${parts.join(' and ')}` : `a number that ${e.message ?? 'is in range'}`
  }
  return `a value that ${e.message ?? 'is valid'}`
}

/** Schema failures as one line: each variable once, with its value and what it takes. */
function describeSchemaFailure (errors: SchemaError[], env: Environment): string {
  const seen = new Set<string>()
  const parts: string[] = []
  for (const e of errors) {
    const name = e.instancePath.replace(/^\//, '')
    if (name === '' || seen.has(name)) continue
    seen.add(name)
    parts.push(`${name}=${env[name] ?? ''} is not valid: set ${name} to ${expected(name, e)}`)
  }
  return parts.length > 0 ? parts.join('; ') : 'the configuration is not valid'
}

/** Where the server was asked to listen, for the message about a port it cannot have. */
export interface ListenTarget {
  host: string
  port: number
}

/**
 * Any error that stops the server from starting, as the one plain line it prints: the variable,
 * the value and the fix. No stack trace: a configuration mistake is not a crash.
 */
export function startupErrorLine (err: unknown, env: Environment, listen?: ListenTarget): string {
  if (isSchemaFailure(err)) return `Cannot start: ${describeSchemaFailure(err.errors, env)}.`
  if (err instanceof ConfigError) return `Cannot start: ${err.message}.`.replace(/\.\.$/, '.')
  const code = (err as NodeJS.ErrnoException)?.code
  if (listen !== undefined) {
    const where = `HOST=${listen.host} PORT=${listen.port}`
    if (code === 'EADDRINUSE') return `Cannot start: ${where}: the port is already in use by another process; stop it or set PORT to a free port.`
    if (code === 'EACCES') return `Cannot start: ${where}: not allowed to listen on this port; set PORT to a port above 1023.`
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return `Cannot start: ${where}: HOST is not an address of this machine; set HOST to 0.0.0.0, 127.0.0.1 or one of its addresses.`
  }
  const message = err instanceof Error ? err.message : String(err)
  return `Cannot start: ${message.split('\n')[0]}`
}

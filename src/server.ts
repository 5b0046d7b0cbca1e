import Fastify from 'fastify'
import closeWithGrace from 'close-with-grace'
import { existsSync, readFileSync } from 'node:fs'
import envSchema from 'env-schema'
import app, { serverOptions } from './app.js'
import { ConfigSchema, parseTrustProxy, type Environment, type RawConfig } from './config.js'
import { parseDotenv } from './dotenv.js'
import { startupErrorLine, type ListenTarget } from './startup.js'

/**
 * Entry point: read the environment (plus `.env` if present, the environment winning), build the
 * app, listen, and shut down cleanly on SIGTERM/SIGINT: stop admitting, end every run's process
 * tree, then exit. Anything that stops the start is one plain line on stderr and exit code 1.
 */
const dotenv = existsSync('.env') ? parseDotenv(readFileSync('.env', 'utf8')) : { values: {}, warnings: [] }
for (const w of dotenv.warnings) process.stderr.write(`Warning: ${w}\n`)
const env: Environment = { ...dotenv.values, ...process.env }

let target: ListenTarget | undefined
const cannotStart = (err: unknown): never => {
  process.stderr.write(startupErrorLine(err, env, target) + '\n')
  process.exit(1)
}

const readListenSettings = (): RawConfig => {
  try {
    return envSchema<RawConfig>({ schema: structuredClone(ConfigSchema), data: env, env: false, dotenv: false })
  } catch (err) {
    return cannotStart(err)
  }
}
const listen = readListenSettings()

const server = Fastify(serverOptions(listen.LOG_LEVEL, parseTrustProxy(listen.TRUST_PROXY), listen.REQUEST_TIMEOUT_S))
server.register(app, { env })

// A promise nobody awaited that failed is a bug in one request's path: it is logged loudly, and
// the server, and every other run, goes on (an uncaught exception still shuts down).
process.on('unhandledRejection', (err) => { server.log.error({ err }, 'unhandled rejection (a bug: please report it)') })

// Time for the drain (SHUTDOWN_GRACE_S) plus killing what is left; a second signal exits at once.
closeWithGrace({ delay: (listen.SHUTDOWN_GRACE_S + 15) * 1000, skip: ['unhandledRejection'] }, async ({ signal, err }) => {
  if (err !== undefined) server.log.error({ err }, 'shutting down after an error')
  else server.log.info({ signal }, 'shutting down')
  await server.close()
})

try {
  await server.ready()
} catch (err) {
  cannotStart(err)
}
try {
  target = { host: listen.HOST, port: listen.PORT }
  await server.listen({ host: listen.HOST, port: listen.PORT })
} catch (err) {
  cannotStart(err)
}

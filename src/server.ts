import Fastify from 'fastify'
import closeWithGrace from 'close-with-grace'
import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'
import envSchema from 'env-schema'
import app, { serverOptions } from './app.js'
import { ConfigSchema, parseTrustProxy, type Environment, type RawConfig } from './config.js'

/**
 * Entry point: read the environment (plus `.env` if present, the environment winning), build the
 * app, listen, and shut down cleanly on SIGTERM/SIGINT: stop admitting, end every run's process
 * tree, then exit.
 */
const env: Environment = {
  ...(existsSync('.env') ? parseEnv(readFileSync('.env', 'utf8')) : {}),
  ...process.env
}
let listen: RawConfig
try {
  listen = envSchema<RawConfig>({ schema: structuredClone(ConfigSchema), data: env, env: false, dotenv: false })
} catch (err) {
  process.stderr.write(`Invalid configuration: ${(err as Error).message}\n`)
  process.exit(1)
}

const server = Fastify(serverOptions(listen.LOG_LEVEL, parseTrustProxy(listen.TRUST_PROXY)))
server.register(app, { env })

// Time for the drain (SHUTDOWN_GRACE_S) plus killing what is left; a second signal exits at once.
closeWithGrace({ delay: (listen.SHUTDOWN_GRACE_S + 15) * 1000 }, async ({ signal, err }) => {
  if (err !== undefined) server.log.error({ err }, 'shutting down after an error')
  else server.log.info({ signal }, 'shutting down')
  await server.close()
})

try {
  await server.listen({ host: listen.HOST, port: listen.PORT })
} catch (err) {
  server.log.error({ err }, 'could not start')
  process.exit(1)
}

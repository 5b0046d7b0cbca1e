import fp from 'fastify-plugin'
import fastifyEnv from '@fastify/env'
import { ConfigSchema, toSettings, type Environment, type RawConfig, type Settings } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The raw, validated environment (as `@fastify/env` decorates it). */
    rawConfig: RawConfig
    /** Parsed settings: lists split, directories resolved. */
    config: Settings
  }
}

export interface ConfigPluginOptions {
  /** The environment to read; the server passes its own (plus `.env`), tests pass their own. */
  env: Environment
  /** Directory relative paths are resolved from. Default: the process's cwd. */
  cwd?: string
}

/** Reads and validates every setting once, through `ConfigSchema`. */
export default fp<ConfigPluginOptions>(async (fastify, opts) => {
  await fastify.register(fastifyEnv, { schema: ConfigSchema, data: opts.env, env: false, dotenv: false, confKey: 'rawConfig' })
  fastify.decorate('config', toSettings(fastify.rawConfig, opts.env, opts.cwd ?? process.cwd()))
}, { name: 'config' })

import fp from 'fastify-plugin'
import cors from '@fastify/cors'

/** CORS for the origins in `CORS_ORIGINS`; none configured means no CORS headers at all. */
export default fp(async (fastify) => {
  const origins = fastify.config.corsOrigins
  if (origins.length === 0) return
  await fastify.register(cors, {
    origin: origins.includes('*') ? true : origins,
    methods: ['GET', 'POST', 'OPTIONS'],
    allowedHeaders: ['Content-Type', 'X-API-Key', 'Authorization', 'Last-Event-ID'],
    exposedHeaders: ['Retry-After', 'Location'],
    maxAge: 600
  })
}, { name: 'cors', dependencies: ['config'] })

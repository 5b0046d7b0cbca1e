/**
 * The baseline for `/health`: a bare Fastify app answering the same JSON shape, started the same
 * way as the server (its own process, same logger level), so the comparison isolates what our
 * plugins and hooks cost.
 */
import Fastify from 'fastify'

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'warn' } })
const startedAt = Date.now()
app.get('/health', async () => ({
  status: 'healthy',
  version: '1.0.0',
  claude_code_available: true,
  claude_code_version: '2.1.197',
  uptime_s: Math.round((Date.now() - startedAt) / 100) / 10,
  runs: { active: 0, queued: 0 }
}))
await app.listen({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 8001) })

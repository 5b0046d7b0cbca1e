import fp from 'fastify-plugin'
import { WebhookSender } from '../src/webhooks.js'

/** Sends each run's webhook (if it named one) when the run ends. */
export default fp(async (fastify) => {
  const { config, engine, store } = fastify
  if (config.webhookSecret === undefined || config.webhookAllowedHosts.length === 0) return
  const sender = new WebhookSender({
    secret: config.webhookSecret,
    maxAttempts: config.webhookMaxAttempts,
    backoffMs: config.webhookBackoffMs,
    timeoutMs: config.webhookTimeoutMs
  }, store, fastify.log.child({ component: 'webhooks' }))
  engine.on('finished', (run, result) => {
    if (run.webhookUrl !== undefined) sender.deliver(run.webhookUrl, run.id, run.keyName, result)
  })
  engine.on('approval', (run, approval) => {
    if (run.webhookUrl !== undefined) sender.approvalRequested(run.webhookUrl, run.id, run.keyName, approval)
  })
  // After a restart: the retries a previous process had scheduled go on at their times.
  fastify.addHook('onReady', async () => { await sender.resume() })
  fastify.addHook('onClose', async () => sender.close())
}, { name: 'webhooks', dependencies: ['config', 'store', 'engine'] })

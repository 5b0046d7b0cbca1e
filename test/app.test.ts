import { test } from 'tap'
import Fastify from 'fastify'
import { PLUGIN_TIMEOUT_MS, serverOptions } from '../src/app.js'

test('plugins get 120 s to start, not Fastify\'s 10 s: a start-up slowed by a loaded machine is not a failed start', async t => {
  t.equal(PLUGIN_TIMEOUT_MS, 120_000)
  const fastify = Fastify(serverOptions('silent'))
  t.teardown(() => fastify.close())
  t.equal(fastify.initialConfig.pluginTimeout, 120_000, 'the server and the test helper both build with serverOptions')
})

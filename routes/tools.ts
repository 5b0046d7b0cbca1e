import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { problemResponses } from '../src/schemas/problem.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]

const McpServersSchema = Type.Object({
  mcp_servers: Type.Array(Type.Object({
    name: Type.String({ description: 'What a request names in `mcp_servers`; its tools are `mcp__<name>__<tool>`.' }),
    transport: Type.Union([Type.Literal('stdio'), Type.Literal('http'), Type.Literal('sse')], { description: '`stdio`: a process of the run (inside its isolation and limits); `http`/`sse`: a remote server.' })
  })),
  inline_hosts: Type.Array(Type.String(), { description: 'Hosts an inline remote server of a request may be on (`MCP_ALLOWED_HOSTS`); empty: none.' })
})
const ModelsSchema = Type.Object({
  models: Type.Array(Type.Object({
    id: Type.String({ description: 'What a run\'s `model` may be: an alias (`sonnet`) or a full id.' }),
    resolved: Type.Optional(Type.String({ description: 'The model id an alias stands for.' })),
    name: Type.String(),
    description: Type.String()
  }))
})

/**
 * What runs may use besides their prompt: the operator's MCP servers the key may name (never their
 * commands, arguments, environment, URLs or headers: those may carry secrets), and the models.
 */
const tools: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, engine } = fastify

  fastify.get('/mcp-servers', {
    config: { scope: ['runs:write', 'runs:read'] },
    schema: {
      tags: ['execute'],
      summary: 'List the MCP servers a run may name',
      description: 'The operator\'s MCP servers (`MCP_CONFIG_FILE`) this key may name in `mcp_servers`, with their transport; and the hosts inline remote servers may be on.',
      operationId: 'listMcpServers',
      security,
      response: { 200: McpServersSchema, 401: problemResponses[401], 403: problemResponses[403] }
    }
  }, async (request) => {
    const may = request.apiKey?.mcpServers
    return {
      mcp_servers: Object.entries(config.mcpServers)
        .filter(([name]) => may === undefined || may.includes(name) || fastify.isAdmin(request))
        .map(([name, def]) => ({ name, transport: def.type }))
        .sort((a, b) => a.name.localeCompare(b.name)),
      inline_hosts: config.mcpAllowedHosts
    }
  })

  fastify.get('/models', {
    config: { scope: ['runs:write', 'runs:read'] },
    schema: {
      tags: ['execute'],
      summary: 'List the models a run may use',
      description: 'The models the Claude Code CLI lists (its aliases and the ids they resolve to): what a run\'s `model` and `fallback_model` may be. The same list as `GET /v1/models`.',
      operationId: 'listModels',
      security,
      response: { 200: ModelsSchema, 401: problemResponses[401], 403: problemResponses[403], 503: problemResponses[503] }
    }
  }, async () => ({ models: await engine.catalog.models() }))
}

export default tools

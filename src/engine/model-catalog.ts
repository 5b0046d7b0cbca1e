import { query, type ModelInfo } from '@anthropic-ai/claude-agent-sdk'

/** How long the CLI's model list is kept before it is asked again. */
const KEEP_MS = 10 * 60_000
/** After a failure to ask, how long until the CLI is asked again. */
const FAILED_RETRY_MS = 60_000
/** How long asking may take before the last known list (or none) is used. */
const ASK_TIMEOUT_MS = 30_000

/** One model a run may name: the CLI's `value` (an alias or an id) and the id it resolves to. */
export interface CatalogModel { id: string, resolved?: string, name: string, description: string }

/**
 * The models runs may use, as the CLI itself lists them (the Agent SDK's `supportedModels()`,
 * answered at its initialisation, before any model call), asked once and kept for ten minutes.
 * The CLI is started as the server's own probe is, with no prompt, and closed at once.
 */
export class ModelCatalog {
  private list: CatalogModel[] | undefined
  private at = 0
  private asking: Promise<CatalogModel[]> | undefined
  private readonly running = new Set<Promise<void>>()

  constructor (private readonly cli: string, private readonly env: Record<string, string>) {}

  /** The list (empty when the CLI could not be asked and never was). Never throws. */
  async models (): Promise<CatalogModel[]> {
    if (this.list !== undefined && Date.now() - this.at < KEEP_MS) return this.list
    this.asking ??= this.ask().then(list => {
      this.list = list
      this.at = Date.now()
      return list
    }, () => {
      // Could not be asked: the last list (or none) is answered, and the CLI asked again in a minute.
      this.list ??= []
      this.at = Date.now() - KEEP_MS + FAILED_RETRY_MS
      return this.list
    }).finally(() => { this.asking = undefined })
    return await this.asking
  }

  /** Wait for a CLI that was asked to be gone (at shutdown). */
  async close (): Promise<void> {
    await this.asking?.catch(() => {})
    await Promise.all([...this.running])
  }

  private async ask (): Promise<CatalogModel[]> {
    let release: () => void = () => {}
    const held = new Promise<void>(resolve => { release = resolve })
    // A prompt that never comes: the CLI initialises, answers the list, and is closed.
    async function * nothing (): AsyncGenerator<never> { await held }
    const q = query({ prompt: nothing(), options: { pathToClaudeCodeExecutable: this.cli, env: this.env, settingSources: [], strictMcpConfig: true } })
    // Read to its end, which comes when the CLI has exited: `close()` waits for that.
    const ended = (async () => { while ((await q.next()).done !== true) { /* nothing is asked */ } })().catch(() => {})
    this.running.add(ended)
    void ended.finally(() => this.running.delete(ended))
    let timer: NodeJS.Timeout | undefined
    try {
      const infos = await Promise.race([
        q.supportedModels(),
        new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('the CLI did not list its models in time')), ASK_TIMEOUT_MS) })
      ])
      return infos.map((m: ModelInfo) => ({ id: m.value, ...(m.resolvedModel !== undefined ? { resolved: m.resolvedModel } : {}), name: m.displayName, description: m.description }))
    } finally {
      clearTimeout(timer)
      release()
      q.close()
    }
  }
}

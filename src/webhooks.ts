import { createHmac, randomUUID } from 'node:crypto'
import type { RunResult } from './runner/types.js'
import type { RunStore } from './store/store.js'
import { capUtf8 } from './runner/result.js'

export interface WebhookOptions {
  secret: string
  maxAttempts: number
  /** First retry after this; doubling, at most 5 minutes. */
  backoffMs: number
  timeoutMs: number
}

/** The signature of a webhook body: `sha256=` and the hex HMAC-SHA256 of the exact bytes. */
export function sign (secret: string, body: string): string {
  return 'sha256=' + createHmac('sha256', secret).update(body).digest('hex')
}

/** Retry on network errors, timeouts, 408, 429 and 5xx; other answers are final. */
const retryable = (status: number | null): boolean => status === null || status === 408 || status === 429 || status >= 500

/**
 * Delivers a run's summary to its `webhook_url` when it ends: POST, JSON, signed with
 * HMAC-SHA256 over the exact body (`X-Signature-256`), whose `timestamp` (also in
 * `X-Webhook-Timestamp`) lets receivers refuse replays. Retried with exponential backoff; every
 * attempt is recorded on the run.
 */
export class WebhookSender {
  private readonly pending = new Set<NodeJS.Timeout>()
  private closed = false

  constructor (
    private readonly opts: WebhookOptions,
    private readonly store: RunStore,
    private readonly log: { warn: (o: object, m: string) => void, info: (o: object, m: string) => void }
  ) {}

  /** Start delivering (returns at once; retries happen in the background). */
  deliver (url: string, runId: string, keyName: string | null, result: RunResult): void {
    const { text: output, truncated } = capUtf8(result.output, 64 * 1024)
    const timestamp = new Date().toISOString()
    const body = JSON.stringify({
      event: 'run.finished',
      delivery_id: randomUUID(),
      timestamp,
      run: {
        id: runId,
        key_name: keyName,
        status: result.status,
        session_id: result.session_id,
        success: result.success,
        error_code: result.error_code,
        error: result.error,
        exit_code: result.exit_code,
        execution_time: result.execution_time,
        num_turns: result.num_turns,
        total_cost_usd: result.total_cost_usd,
        usage: result.usage,
        output,
        output_truncated: truncated || result.truncated,
        url: `/api/runs/${runId}`
      }
    })
    const headers = {
      'content-type': 'application/json',
      'user-agent': 'claude-code-api-webhook',
      'x-signature-256': sign(this.opts.secret, body),
      'x-webhook-timestamp': String(Math.floor(Date.parse(timestamp) / 1000)),
      'x-webhook-event': 'run.finished'
    }
    void this.attempt(url, runId, body, headers, 1)
  }

  /** Stop retrying (deliveries under way finish; none are scheduled anew). */
  close (): void {
    this.closed = true
    for (const t of this.pending) clearTimeout(t)
    this.pending.clear()
  }

  private async attempt (url: string, runId: string, body: string, headers: Record<string, string>, attempt: number): Promise<void> {
    if (this.closed) return
    const started = Date.now()
    let status: number | null = null
    let error: string | null = null
    try {
      const res = await fetch(url, { method: 'POST', headers, body, redirect: 'manual', signal: AbortSignal.timeout(this.opts.timeoutMs) })
      status = res.status
      await res.body?.cancel()
      if (status < 200 || status >= 300) error = `answered ${status}`
    } catch (err) {
      error = (err as Error).name === 'TimeoutError' ? `no answer within ${this.opts.timeoutMs} ms` : (err as Error).message
    }
    const delivery = { attempt, attemptedAt: started, url, statusCode: status, error, durationMs: Date.now() - started }
    try {
      await this.store.recordDelivery(runId, delivery)
    } catch {
      // The store is closed (shutdown): the attempt happened all the same.
    }
    if (error === null) {
      this.log.info({ run_id: runId, attempt, status }, 'webhook delivered')
      return
    }
    if (!retryable(status) || attempt >= this.opts.maxAttempts || this.closed) {
      this.log.warn({ run_id: runId, attempt, status, error }, 'webhook not delivered; giving up')
      return
    }
    const delay = Math.min(300_000, this.opts.backoffMs * 2 ** (attempt - 1))
    this.log.warn({ run_id: runId, attempt, status, error, retry_in_ms: delay }, 'webhook not delivered; will retry')
    const timer = setTimeout(() => {
      this.pending.delete(timer)
      void this.attempt(url, runId, body, headers, attempt + 1)
    }, delay)
    timer.unref()
    this.pending.add(timer)
  }
}

import { createHmac, randomUUID } from 'node:crypto'
import type { RunResult } from './domain/run.js'
import type { ApprovalRecord, PendingWebhook } from './domain/records.js'
import type { RunStore } from './store/store.js'
import { capUtf8 } from './engine/result.js'

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
  private readonly timers = new Map<string, NodeJS.Timeout>()
  /** Runs whose webhook is scheduled or being sent by this process. */
  private readonly active = new Set<string>()
  private closed = false

  constructor (
    private readonly opts: WebhookOptions,
    private readonly store: RunStore,
    private readonly log: { warn: (o: object, m: string) => void, info: (o: object, m: string) => void }
  ) {}

  /**
   * Start delivering (returns at once; retries happen in the background). The webhook is in the
   * store before the first attempt, so a restart resumes it.
   */
  deliver (url: string, runId: string, keyName: string | null, result: RunResult): void {
    const { text: output, truncated } = capUtf8(result.output, 64 * 1024)
    this.send(url, runId, 'run.finished', {
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
  }

  /** Tell `url` that a run waits for an approval (a chat bot can then ask a person). */
  approvalRequested (url: string, runId: string, keyName: string | null, a: ApprovalRecord): void {
    this.send(url, runId, 'approval.requested', {
      run: { id: runId, key_name: keyName, url: `/api/runs/${runId}` },
      approval: {
        approval_id: a.id,
        tool_name: a.toolName,
        input: a.input,
        title: a.title,
        description: a.description,
        expires_at: new Date(a.expiresAt).toISOString(),
        url: `/api/runs/${runId}/approvals/${a.id}`
      }
    })
  }

  private send (url: string, runId: string, event: string, payload: Record<string, unknown>): void {
    const id = randomUUID()
    const body = JSON.stringify({ event, delivery_id: id, timestamp: new Date().toISOString(), ...payload })
    const w: PendingWebhook = { id, runId, event, url, body, attempt: 1, dueAt: Date.now() }
    this.active.add(id)
    void this.save(w).then(async () => await this.attempt(w))
  }

  /** Resume the webhooks a previous process left pending, each at its scheduled time. */
  async resume (): Promise<number> {
    const pending = (await this.store.pendingWebhooks()).filter(w => !this.active.has(w.id))
    for (const w of pending) this.schedule(w)
    if (pending.length > 0) this.log.info({ webhooks: pending.length }, 'resuming pending webhooks')
    return pending.length
  }

  /** Stop retrying (deliveries under way finish; none are scheduled anew). Pending ones stay stored. */
  close (): void {
    this.closed = true
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
  }

  private schedule (w: PendingWebhook): void {
    if (this.closed) return
    this.active.add(w.id)
    const timer = setTimeout(() => {
      this.timers.delete(w.id)
      void this.attempt(w)
    }, Math.max(0, w.dueAt - Date.now()))
    timer.unref()
    this.timers.set(w.id, timer)
  }

  /** Store the webhook's state; a store that cannot write (full disk) only costs durability. */
  private async save (w: PendingWebhook | { done: string }): Promise<void> {
    try {
      if ('done' in w) await this.store.webhookDone(w.done)
      else await this.store.queueWebhook(w)
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not record a webhook\'s schedule')
    }
  }

  private async attempt (w: PendingWebhook): Promise<void> {
    if (this.closed) return
    const { runId, url, body, attempt } = w
    const timestamp = (JSON.parse(body) as { timestamp: string }).timestamp
    const headers = {
      'content-type': 'application/json',
      'user-agent': 'claude-code-api-webhook',
      'x-signature-256': sign(this.opts.secret, body),
      'x-webhook-timestamp': String(Math.floor(Date.parse(timestamp) / 1000)),
      'x-webhook-event': w.event
    }
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
    const delivery = { deliveryId: w.id, event: w.event, attempt, attemptedAt: started, url, statusCode: status, error, durationMs: Date.now() - started }
    try {
      await this.store.recordDelivery(runId, delivery)
    } catch {
      // The store is closed (shutdown) or full: the attempt happened all the same.
    }
    if (error === null || !retryable(status) || attempt >= this.opts.maxAttempts) {
      if (error === null) this.log.info({ run_id: runId, attempt, status }, 'webhook delivered')
      else this.log.warn({ run_id: runId, attempt, status, error }, 'webhook not delivered; giving up')
      await this.save({ done: w.id })
      this.active.delete(w.id)
      return
    }
    const delay = Math.min(300_000, this.opts.backoffMs * 2 ** (attempt - 1))
    this.log.warn({ run_id: runId, attempt, status, error, retry_in_ms: delay }, 'webhook not delivered; will retry')
    const next = { ...w, attempt: attempt + 1, dueAt: Date.now() + delay }
    // Stored before it is scheduled: a restart from here on resumes at the same time.
    await this.save(next)
    this.schedule(next)
  }
}

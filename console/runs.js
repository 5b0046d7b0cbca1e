// Runs: the list with its filter, the new-run form, and a run's page with its events as they
// stream, approvals inline, follow-up messages, interrupt, cancel, result and changes.

import { api, attachmentsOf, followRun, ApiError } from './api.js'
import { alertBox, append, asText, cost, field, h, replace, when } from './dom.js'

export const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted']
const ENDED = new Set(['succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted'])
const PERMISSION_MODES = ['default', 'acceptEdits', 'plan', 'dontAsk', 'bypassPermissions']

export const statusBadge = (status) => h('span', { class: `badge status-${status}`, text: status.replace('_', ' ') })

function promptOf (run) {
  const p = run.request?.prompt
  return typeof p === 'string' && p !== '' ? p : '(no prompt)'
}

function shorten (text, n = 140) {
  const one = text.replace(/\s+/g, ' ').trim()
  return one.length > n ? one.slice(0, n - 1) + '…' : one
}

/** The new-run form; `extra` fields go into the request (e.g. a session to continue). */
function newRunForm (ctx) {
  const alert = alertBox()
  const prompt = h('textarea', { name: 'prompt', rows: 4, required: true })
  const dir = h('input', { type: 'text', name: 'working_directory', autocomplete: 'off', placeholder: 'server default' })
  const model = h('input', { type: 'text', name: 'model', autocomplete: 'off', placeholder: 'server default' })
  const mode = h('select', { name: 'permission_mode' },
    h('option', { value: '', text: 'server default' }),
    PERMISSION_MODES.map(m => h('option', { value: m, text: m })))
  const ask = h('input', { type: 'checkbox', name: 'approvals' })
  const images = h('input', { type: 'file', name: 'images', accept: 'image/png,image/jpeg,image/gif,image/webp', multiple: true })
  const button = h('button', { type: 'submit', text: 'Run' })
  return h('form', {
    class: 'card',
    onsubmit: async (event) => {
      event.preventDefault()
      alert.clear()
      if (prompt.value.trim() === '') return
      button.disabled = true
      try {
        const attachments = await attachmentsOf(images.files ?? [])
        const body = {
          prompt: prompt.value,
          ...(dir.value.trim() !== '' ? { working_directory: dir.value.trim() } : {}),
          ...(model.value.trim() !== '' ? { model: model.value.trim() } : {}),
          ...(mode.value !== '' ? { permission_mode: mode.value } : {}),
          ...(ask.checked ? { approvals: 'ask' } : {}),
          ...(attachments.length > 0 ? { attachments } : {})
        }
        const run = await api('/runs', { method: 'POST', body })
        ctx.go(`#/runs/${run.id}`)
      } catch (err) {
        alert.show(`The run was not started: ${err.message}`)
      } finally {
        button.disabled = false
      }
    }
  },
  h('h2', { text: 'New run' }),
  field('Prompt', prompt),
  h('div', { class: 'row' },
    field('Working directory', dir),
    field('Model', model),
    field('Permission mode', mode)),
  field('Ask before tools run', ask),
  field('Images', images),
  alert.el,
  button)
}

/** `#/runs`: the new-run form and the list, refreshed every few seconds. */
export function runsPage (main, _params, ctx) {
  document.title = 'Runs · Claude Code console'
  const alert = alertBox()
  const status = h('select', { name: 'status', onchange: () => { void load() } },
    h('option', { value: '', text: 'All' }),
    STATUSES.map(s => h('option', { value: s, text: s.replace('_', ' ') })))
  const body = h('tbody')
  const table = h('div', { class: 'scroll' }, h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, ['Status', 'Key', 'Prompt', 'Started', 'Cost'].map(t => h('th', { scope: 'col', text: t })))),
    body))

  async function load () {
    try {
      const q = new URLSearchParams({ limit: '50' })
      if (status.value !== '') q.set('status', status.value)
      const { runs } = await api(`/runs?${q}`, { signal: ctx.signal })
      alert.clear()
      replace(body, runs.length === 0
        ? h('tr', {}, h('td', { colspan: 5, class: 'empty', text: 'No runs yet.' }))
        : runs.map(r => h('tr', {},
          h('td', {}, statusBadge(r.status), r.pending_approvals > 0 ? h('span', { class: 'badge warn', text: `${r.pending_approvals} to approve` }) : null),
          h('td', { text: r.key_name ?? '—' }),
          h('td', { class: 'prompt' }, h('a', { href: `#/runs/${r.id}`, text: shorten(promptOf(r)) })),
          h('td', { text: when(r.started_at ?? r.created_at) }),
          h('td', { text: cost(r.result?.total_cost_usd) }))))
    } catch (err) {
      if (!ctx.signal.aborted) alert.show(`Could not list runs: ${err.message}`)
    }
  }

  append(main,
    h('h1', { text: 'Runs' }),
    newRunForm(ctx),
    h('section', { class: 'card' },
      h('div', { class: 'heading' }, h('h2', { text: 'Recent runs' }), field('Status', status)),
      alert.el,
      table))
  void load()
  ctx.every(3000, load)
}

/** Approve / Deny / Always allow for one approval; `done(answered)` after an answer. */
export function approvalButtons (runId, approvalId, done) {
  const alert = alertBox()
  const answer = async (decision, always = false) => {
    for (const b of buttons) b.disabled = true
    alert.clear()
    try {
      const answered = await api(`/runs/${runId}/approvals/${approvalId}`, {
        method: 'POST',
        body: { decision, ...(always ? { always: true } : {}) }
      })
      done(answered)
    } catch (err) {
      if (err instanceof ApiError && err.code === 'approval_resolved') done(null)
      else {
        alert.show(`Not answered: ${err.message}`)
        for (const b of buttons) b.disabled = false
      }
    }
  }
  const buttons = [
    h('button', { type: 'button', class: 'ok', text: 'Approve', onclick: () => answer('allow') }),
    h('button', { type: 'button', class: 'danger', text: 'Deny', onclick: () => answer('deny') }),
    h('button', { type: 'button', class: 'secondary', text: 'Always allow', title: 'Allow, and do not ask again for this tool in this session', onclick: () => answer('allow', true) })
  ]
  return h('div', { class: 'actions' }, buttons, alert.el)
}

/** What a tool_result block holds, as text. */
function resultText (content) {
  if (typeof content === 'string') return content
  if (Array.isArray(content)) return content.map(b => b?.type === 'text' ? b.text : asText(b)).join('\n')
  return asText(content)
}

/** `#/runs/<id>`: the run and its events as they stream. */
export function runPage (main, [id], ctx) {
  id = id.toLowerCase()
  document.title = `Run ${id.slice(0, 8)} · Claude Code console`
  const alert = alertBox()
  const info = h('dl', { class: 'facts' })
  const state = h('span', { class: 'stream-state', role: 'status' })
  const log = h('div', { class: 'log', 'aria-label': 'Run events' })
  const resultBox = h('section', { class: 'card result', hidden: true })
  const changesBox = h('section', { class: 'card changes', hidden: true })
  const toolNames = new Map() // tool_use_id → tool name
  const approvalCards = new Map() // approval_id → { card, actions, status }
  let textBlock = null
  let partial = false
  let run = null
  let changesShown = false

  const message = h('textarea', { name: 'message', rows: 2, required: true })
  const messageAlert = alertBox()
  const send = h('button', { type: 'submit', text: 'Send' })
  const interrupt = h('button', { type: 'button', class: 'secondary', text: 'Interrupt', onclick: () => act('interrupt') })
  const cancel = h('button', { type: 'button', class: 'danger', text: 'Cancel run', onclick: () => act('cancel') })
  const controls = h('section', { class: 'card controls' },
    h('form', {
      onsubmit: async (event) => {
        event.preventDefault()
        messageAlert.clear()
        if (message.value.trim() === '') return
        send.disabled = true
        try {
          await api(`/runs/${id}/messages`, { method: 'POST', body: { prompt: message.value } })
          message.value = ''
        } catch (err) {
          messageAlert.show(`Not sent: ${err.message}`)
        } finally {
          send.disabled = false
        }
      }
    }, field('Message', message, 'The agent reads it as its next turn.'), messageAlert.el, h('div', { class: 'actions' }, send, interrupt, cancel)))

  async function act (what) {
    messageAlert.clear()
    interrupt.disabled = cancel.disabled = true
    try {
      await api(`/runs/${id}/${what}`, { method: 'POST', ...(what === 'interrupt' ? { body: {} } : {}) })
      await refresh()
    } catch (err) {
      messageAlert.show(`${what === 'cancel' ? 'Not cancelled' : 'Not interrupted'}: ${err.message}`)
    } finally {
      interrupt.disabled = cancel.disabled = false
    }
  }

  async function refresh () {
    try {
      run = await api(`/runs/${id}`, { signal: ctx.signal })
    } catch (err) {
      if (!ctx.signal.aborted) alert.show(err instanceof ApiError && err.status === 404 ? 'No such run (or not one this key may see).' : `Could not load the run: ${err.message}`)
      return
    }
    partial = run.request?.include_partial_messages === true
    replace(info,
      h('dt', { text: 'Status' }), h('dd', {}, statusBadge(run.status), run.queue_position !== null ? ` (position ${run.queue_position} in the queue)` : ''),
      h('dt', { text: 'Prompt' }), h('dd', { class: 'pre', text: promptOf(run) }),
      h('dt', { text: 'Working directory' }), h('dd', { text: run.working_directory }),
      h('dt', { text: 'Session' }), h('dd', {}, h('a', { href: `#/sessions/${run.session_id}`, text: run.session_id })),
      h('dt', { text: 'Key' }), h('dd', { text: run.key_name ?? '—' }),
      h('dt', { text: 'Started' }), h('dd', { text: when(run.started_at ?? run.created_at) }),
      h('dt', { text: 'Ended' }), h('dd', { text: when(run.ended_at) }),
      h('dt', { text: 'Cost' }), h('dd', { text: cost(run.result?.total_cost_usd) }))
    const ended = ENDED.has(run.status)
    controls.hidden = ended
    if (ended) void showChanges()
  }

  async function showChanges () {
    if (changesShown) return
    changesShown = true
    try {
      const diff = await api(`/runs/${id}/changes`, { accept: 'text/x-diff', signal: ctx.signal })
      replace(changesBox, h('h2', { text: 'Changes' }),
        typeof diff === 'string' && diff.trim() !== '' ? h('pre', { class: 'diff', text: diff }) : h('p', { class: 'muted', text: 'The run changed no files.' }))
      changesBox.hidden = false
    } catch (err) {
      // Not recorded on this server, or not this key's to read: say why, quietly.
      replace(changesBox, h('h2', { text: 'Changes' }), h('p', { class: 'muted', text: `No diff: ${err.message}` }))
      changesBox.hidden = false
    }
  }

  function entry (kind, ...children) {
    textBlock = null
    const el = h('div', { class: `entry ${kind}` }, children)
    log.append(el)
    return el
  }

  function folded (summary, body, kind = 'tool') {
    return entry(kind, h('details', {}, h('summary', { text: summary }), h('pre', { text: body })))
  }

  function onMessage (m) {
    if (m === null || typeof m !== 'object') return
    if (m.type === 'system' && m.subtype === 'init') {
      entry('note', `Session ${m.session_id ?? ''} started${m.model ? ` · model ${m.model}` : ''}`)
      return
    }
    const content = m.message?.content
    if (!Array.isArray(content)) return
    for (const b of content) {
      if (m.type === 'assistant' && b?.type === 'tool_use') {
        toolNames.set(b.id, b.name)
        folded(String(b.name), asText(b.input))
      } else if (m.type === 'user' && b?.type === 'tool_result') {
        const name = toolNames.get(b.tool_use_id) ?? 'tool'
        folded(`${name} result${b.is_error === true ? ' (error)' : ''}`, resultText(b.content), b.is_error === true ? 'tool error' : 'tool')
      }
    }
  }

  function onApprovalRequested (a) {
    const status = h('p', { class: 'muted', text: a.expires_at ? `Waiting for an answer until ${when(a.expires_at)}.` : 'Waiting for an answer.' })
    const actions = approvalButtons(id, a.approval_id, (answered) => {
      if (answered !== null) resolved(a.approval_id, answered.status === 'allowed' ? 'allow' : 'deny', 'answered')
      ctx.refreshApprovals()
    })
    const card = entry('approval',
      h('h3', { text: `Approval: ${a.tool_name}` }),
      a.title ? h('p', { text: a.title }) : null,
      a.description ? h('p', { class: 'muted', text: a.description }) : null,
      h('pre', { text: asText(a.input) }),
      status, actions)
    approvalCards.set(a.approval_id, { card, actions, status })
  }

  function resolved (approvalId, decision, reason) {
    const c = approvalCards.get(approvalId)
    if (c === undefined) return
    c.actions.remove()
    c.card.classList.add(decision === 'allow' ? 'allowed' : 'denied')
    c.status.textContent = `${decision === 'allow' ? 'Allowed' : 'Denied'}${reason && reason !== 'answered' ? ` (${reason.replace('_', ' ')})` : ''}.`
  }

  function onResult (r) {
    textBlock = null
    replace(resultBox,
      h('h2', { text: 'Result' }),
      h('p', {}, statusBadge(r.status ?? (r.success ? 'succeeded' : 'failed')),
        ` ${r.num_turns ?? '?'} turns · ${typeof r.duration_ms === 'number' ? (r.duration_ms / 1000).toFixed(1) + ' s' : '—'} · ${cost(r.total_cost_usd)}`),
      r.error ? h('p', { class: 'alert-text', text: r.error }) : null,
      r.output ? h('pre', { class: 'output', text: r.output }) : null)
    resultBox.hidden = false
    void refresh()
  }

  function onEvent ({ event, data }) {
    switch (event) {
      case 'run':
        entry('note', `Run started in ${data.working_directory ?? '?'}`)
        break
      case 'text':
        if (textBlock === null) {
          textBlock = h('div', { class: 'entry assistant' })
          log.append(textBlock)
        } else if (!partial) textBlock.append('\n\n')
        textBlock.append(String(data.text ?? ''))
        break
      case 'message':
        onMessage(data)
        break
      case 'approval_requested':
        onApprovalRequested(data)
        break
      case 'approval_resolved':
        resolved(data.approval_id, data.decision, data.reason)
        ctx.refreshApprovals()
        break
      case 'user_message':
        entry('user', h('strong', { text: 'Message: ' }), String(data.prompt ?? ''))
        break
      case 'result':
        onResult(data)
        break
      default:
        entry('note', `${event}: ${asText(data)}`)
    }
  }

  append(main,
    h('p', {}, h('a', { href: '#/runs', text: '← All runs' })),
    h('h1', { text: `Run ${id}` }),
    alert.el,
    h('section', { class: 'card' }, info),
    controls,
    h('section', { class: 'card' }, h('div', { class: 'heading' }, h('h2', { text: 'Events' }), state), log),
    resultBox,
    changesBox)

  void refresh()
  ctx.every(5000, async () => { if (run === null || !ENDED.has(run.status)) await refresh() })
  followRun(id, {
    signal: ctx.signal,
    onEvent,
    onState: (s) => { state.textContent = s === 'live' ? 'live' : s === 'ended' ? 'ended' : 'reconnecting…' }
  }).catch(err => { if (!ctx.signal.aborted) alert.show(`Could not follow the run: ${err.message}`) })
}

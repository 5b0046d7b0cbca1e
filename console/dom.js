/* global Node */
// Building the DOM without markup strings: everything a run, a prompt or a file holds goes in as
// text nodes (textContent), never through innerHTML, so it can never become markup or script.

/**
 * Create an element. Props: `class`, `text` (its textContent), `on<event>` listeners, DOM properties
 * for non-string values (checked, disabled, files…), attributes for the rest. Children: nodes or
 * strings (strings become text nodes).
 */
export function h (tag, props = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') el.className = v
    else if (k === 'text') el.textContent = String(v)
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v)
    else if (typeof v !== 'string' && k in el) el[k] = v
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  append(el, children)
  return el
}

/** Append children (nodes, strings, nested arrays; null and false skipped). */
export function append (el, ...children) {
  for (const c of [children].flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue
    el.append(c instanceof Node ? c : String(c))
  }
  return el
}

/** Replace all children of `el`. */
export function replace (el, ...children) {
  el.replaceChildren()
  return append(el, children)
}

let ids = 0
/** A unique element id, for label/input pairs. */
export function uid (prefix = 'f') {
  return `${prefix}-${++ids}`
}

/** A labelled form control: `<div class="field"><label for>…</label>control</div>`. */
export function field (label, control, hint) {
  if (control.id === '') control.id = uid()
  return h('div', { class: control.type === 'checkbox' ? 'field check' : 'field' },
    control.type === 'checkbox' ? [control, h('label', { for: control.id, text: label })] : [h('label', { for: control.id, text: label }), control],
    hint !== undefined ? h('small', { class: 'hint', text: hint }) : null)
}

/** An alert region (role=alert) that shows `message`, or hides when it is empty. */
export function alertBox () {
  const el = h('p', { class: 'alert', role: 'alert', hidden: true })
  return {
    el,
    show (message) {
      el.textContent = message
      el.hidden = message === '' || message === undefined || message === null
    },
    clear () { this.show('') }
  }
}

/** A date (ISO string or ms) as local text, '—' when absent. */
export function when (value) {
  if (value === undefined || value === null) return '—'
  const d = new Date(value)
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString()
}

/** A cost in USD as text, '—' when absent. */
export function cost (usd) {
  return typeof usd === 'number' ? `$${usd.toFixed(4)}` : '—'
}

/** Any value as readable text: strings as they are, the rest as indented JSON. */
export function asText (value) {
  if (typeof value === 'string') return value
  try {
    return JSON.stringify(value, null, 2) ?? ''
  } catch {
    return String(value)
  }
}

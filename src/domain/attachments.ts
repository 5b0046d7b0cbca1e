import { InvalidRequest, withProblem } from './errors.js'
import type { Attachment } from './run.js'

/** The largest image the model takes, decoded. */
export const MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
export const MEDIA_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'] as const

/** The first bytes of each image format. */
const MAGIC: Record<Attachment['media_type'], (b: Buffer) => boolean> = {
  'image/png': b => b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
  'image/jpeg': b => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  'image/gif': b => b.subarray(0, 4).toString('latin1') === 'GIF8',
  'image/webp': b => b.subarray(0, 4).toString('latin1') === 'RIFF' && b.subarray(8, 12).toString('latin1') === 'WEBP'
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

/**
 * Check images before a run or message is accepted: real base64, at most 5 MiB decoded, and bytes
 * that are what `media_type` says. Refused with 400 naming the item (`/attachments/2/data`).
 * Returns them with the whitespace of their base64 taken out, as the model gets them.
 */
export function checkAttachments (list: Attachment[] | undefined, path = '/attachments'): Attachment[] | undefined {
  return list?.map((a, i) => {
    const refuse = (field: string, message: string): never => {
      throw withProblem(new InvalidRequest(`attachments[${i}].${field} ${message}`), { problem: { errors: [{ path: `${path}/${i}/${field}`, message }] } })
    }
    if (!(MEDIA_TYPES as readonly string[]).includes(a.media_type)) refuse('media_type', `must be one of ${MEDIA_TYPES.join(', ')}`)
    const data = a.data.replace(/\s+/g, '')
    if (data.length === 0 || data.length % 4 !== 0 || !BASE64.test(data)) refuse('data', 'is not valid base64')
    const bytes = Buffer.from(data, 'base64')
    if (bytes.length > MAX_ATTACHMENT_BYTES) refuse('data', `is ${bytes.length} bytes decoded; at most ${MAX_ATTACHMENT_BYTES}`)
    if (!MAGIC[a.media_type](bytes)) refuse('data', `is not a ${a.media_type} image`)
    return { ...a, data }
  })
}

/** Attachments as stored with a request: what they were, not their bytes. */
export function describeAttachments (list: Attachment[]): Array<{ type: 'image', media_type: string, bytes: number }> {
  return list.map(a => ({ type: 'image', media_type: a.media_type, bytes: Math.floor(a.data.replace(/\s+/g, '').length * 3 / 4) }))
}

/** A user turn as the model reads it: the images (as `checkAttachments` returned them) first, then the text. */
export function userContent (prompt: string, attachments: Attachment[] | undefined): string | Array<Record<string, unknown>> {
  if (attachments === undefined || attachments.length === 0) return prompt
  return [
    ...attachments.map(a => ({ type: 'image', source: { type: 'base64', media_type: a.media_type, data: a.data } })),
    { type: 'text', text: prompt }
  ]
}

import { test } from 'tap'
import { parseDotenv } from '../src/dotenv.js'

test('a # inside a value is part of it; comments are whole lines', async t => {
  const { values, warnings } = parseDotenv([
    '# a comment',
    'CLAUDE_API_KEY=s3cr#t-key',
    '  # an indented comment',
    'EMPTY=',
    'SPACED =  value with spaces  ',
    'export EXPORTED=yes',
    ''
  ].join('\n'))
  t.same(values, { CLAUDE_API_KEY: 's3cr#t-key', EMPTY: '', SPACED: 'value with spaces', EXPORTED: 'yes' })
  t.same(warnings, [])
})

test('quotes keep spaces and # literally; double quotes take escapes', async t => {
  const { values } = parseDotenv([
    'A=" padded # not a comment "',
    'B=\'single $HOME \\n\'',
    'C="line\\nbreak \\"quoted\\""',
    'D=a"b"c'
  ].join('\r\n'))
  t.equal(values.A, ' padded # not a comment ')
  t.equal(values.B, 'single $HOME \\n', 'single quotes: literal')
  t.equal(values.C, 'line\nbreak "quoted"')
  t.equal(values.D, 'a"b"c', 'quotes inside a value are kept')
})

test('a value that looks cut or a line that is not NAME=value is kept or skipped with a warning naming its line', async t => {
  const { values, warnings } = parseDotenv([
    'PORT=8000 # the port',
    'not a variable',
    'OPEN="unclosed',
    '1BAD=x'
  ].join('\n'), '.env')
  t.equal(values.PORT, '8000 # the port', 'kept as written, as .env.example says')
  t.equal(values.OPEN, '"unclosed')
  t.notOk('1BAD' in values)
  t.equal(warnings.length, 4)
  t.match(warnings[0], /^\.env line 1: PORT contains " #"/)
  t.match(warnings[1], /^\.env line 2 is not NAME=value/)
  t.match(warnings[2], /^\.env line 3: OPEN starts with "/)
  t.match(warnings[3], /^\.env line 4 is not NAME=value/)
})

test('a later line wins, and a byte-order mark is ignored', async t => {
  const { values } = parseDotenv('\uFEFFX=1\nX=2\n')
  t.same(values, { X: '2' })
})

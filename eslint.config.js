import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'coverage/**', '.tap/**', 'node_modules/**', 'test/generated/**', 'data/**', 'bench/results/**']
  }),
  {
    rules: {
      // `void promise` marks a deliberately unawaited promise; as a statement it is clear.
      'no-void': ['error', { allowAsStatement: true }]
    }
  }
]

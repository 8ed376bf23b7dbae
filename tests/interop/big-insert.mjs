// A 1 MiB string inserted into a Y.Text in one transaction reaches a connected provider (as one
// update) and a provider that joins afterwards (in its sync step 2).
//   node big-insert.mjs <server url of a room>

import { assertEqual, args, connect, main, rng, stepTo, waitFor } from './lib.mjs'

const [base] = args(1, '<ws://HOST/v1/rooms/ROOM/yjs>')
const DOC = 'big/insert'
const SIZE = 1024 * 1024

main('big-insert', async () => {
  stepTo('a (v3) and b (v2) connect')
  const a = await connect(base, DOC, { version: 3, name: 'a(v3)' })
  const b = await connect(base, DOC, { version: 2, name: 'b(v2)' })

  stepTo(`a inserts ${SIZE} characters`)
  const random = rng(42)
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 '
  const chars = new Array(SIZE)
  for (let i = 0; i < SIZE; i++) chars[i] = alphabet[Math.floor(random() * alphabet.length)]
  const big = chars.join('')
  a.doc.getText('text').insert(0, big)

  stepTo('b receives it')
  await waitFor(`b's text to reach ${SIZE} characters`, () => b.doc.getText('text').length >= SIZE, {
    sources: [b],
    detail: () => `  b has ${b.doc.getText('text').length} characters`
  })
  assertEqual(b.doc.getText('text').toString(), big, 'b\'s text')

  stepTo('c (v3) joins and gets it in its sync step 2')
  const c = await connect(base, DOC, { version: 3, name: 'c(v3)' })
  assertEqual(c.doc.getText('text').toString(), big, 'c\'s text')
})

// A v2 provider writes a lot of content in thousands of transactions (inserts and deletes in a
// Y.Text, entries in a Y.Map and a Y.Array) and disconnects; a v3 provider that joins afterwards
// has the whole state as soon as it is synced.
//   node late-joiner.mjs <server url of a room>

import { assertEqual, assertSameJSON, args, connect, main, stateVector, stepTo } from './lib.mjs'

const [base] = args(1, '<ws://HOST/v1/rooms/ROOM/yjs>')
const DOC = 'late/joiner'
const STEPS = 4000

main('late-joiner', async () => {
  stepTo('the writer connects')
  const writer = await connect(base, DOC, { version: 2, name: 'writer(v2)' })
  const text = writer.doc.getText('text')
  const map = writer.doc.getMap('map')
  const array = writer.doc.getArray('array')

  stepTo(`the writer makes ${STEPS} edits`)
  // The same edits applied to a plain string give the expected text.
  let want = ''
  for (let i = 0; i < STEPS; i++) {
    const chunk = `<${i}>`
    const at = (i * 7919) % (want.length + 1)
    text.insert(at, chunk)
    want = want.slice(0, at) + chunk + want.slice(at)
    if (i % 10 === 9) {
      const from = (i * 104729) % (want.length - 3)
      text.delete(from, 3)
      want = want.slice(0, from) + want.slice(from + 3)
    }
    if (i % 4 === 0) map.set(`key-${i % 500}`, i)
    if (i % 8 === 0) array.push([{ i, s: `item ${i}` }])
  }
  assertEqual(text.toString(), want, 'the writer\'s own text')
  const mapWant = map.toJSON()
  const arrayWant = array.toJSON()
  const svWant = stateVector(writer)

  stepTo('the writer disconnects and its socket closes')
  const ws = writer.provider.ws
  const closed = new Promise((resolve) => ws.once('close', resolve))
  writer.provider.destroy()
  await closed

  stepTo('a late v3 client joins')
  const late = await connect(base, DOC, { version: 3, name: 'late(v3)' })
  // No waiting for updates: everything must be in the sync step 2.
  assertEqual(late.doc.getText('text').toString(), want, 'the late client\'s text')
  assertSameJSON(late.doc.getMap('map').toJSON(), mapWant, 'the late client\'s map')
  assertSameJSON(late.doc.getArray('array').toJSON(), arrayWant, 'the late client\'s array')
  assertSameJSON(stateVector(late), svWant, 'the late client\'s state vector')
})

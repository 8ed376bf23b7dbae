// Persistence across a server restart, in two runs of this script:
//   node restart.mjs write <server url of a room>   writes known content to two documents and
//                                                   waits until a second client sees it
//   node restart.mjs check <server url of a room>   (after the restart, on the same data) a fresh
//                                                   client of each document has that content
// The documents are written through many small transactions plus deletes and map entries.

import { Y, assertEqual, assertSameJSON, args, connect, main, stepTo, waitFor } from './lib.mjs'

const [phase, base] = args(2, 'write|check <ws://HOST/v1/rooms/ROOM/yjs>')
const DOCS = ['persisted', 'persisted/nested/doc']

/** The content every document gets, built by the same edits the write phase makes. */
function write (doc, name) {
  const text = doc.getText('text')
  for (let i = 0; i < 200; i++) text.insert(text.length, `line ${i} of ${name}\n`)
  text.delete(0, `line 0 of ${name}\n`.length)
  doc.getMap('meta').set('name', name)
  doc.getMap('meta').set('lines', 199)
  doc.getArray('list').push(['x', 'y', { z: [1, 2, 3] }])
}

function expected (name) {
  const doc = new Y.Doc()
  write(doc, name)
  return {
    text: doc.getText('text').toString(),
    meta: doc.getMap('meta').toJSON(),
    list: doc.getArray('list').toJSON()
  }
}

const contentOf = (c) => ({
  text: c.doc.getText('text').toString(),
  meta: c.doc.getMap('meta').toJSON(),
  list: c.doc.getArray('list').toJSON()
})

main(`restart-${phase}`, async () => {
  if (phase === 'write') {
    for (const [i, name] of DOCS.entries()) {
      stepTo(`writing ${name}`)
      const writer = await connect(base, name, { version: i % 2 === 0 ? 3 : 2, name: `writer ${name}` })
      write(writer.doc, name)
      // The server forwards an update only after appending it to the document's log.
      const observer = await connect(base, name, { version: 3, name: `observer ${name}` })
      const want = JSON.stringify(expected(name))
      await waitFor(`the observer of ${name} to see the content`,
        () => JSON.stringify(contentOf(observer)) === want, { sources: [observer] })
    }
  } else if (phase === 'check') {
    for (const [i, name] of DOCS.entries()) {
      stepTo(`checking ${name}`)
      const c = await connect(base, name, { version: i % 2 === 0 ? 2 : 3, name: `reader ${name}` })
      const got = contentOf(c)
      const want = expected(name)
      assertEqual(got.text, want.text, `${name}'s text after the restart`)
      assertSameJSON(got.meta, want.meta, `${name}'s map after the restart`)
      assertSameJSON(got.list, want.list, `${name}'s array after the restart`)
    }
  } else {
    throw new Error(`unknown phase ${JSON.stringify(phase)}: expected write or check`)
  }
})

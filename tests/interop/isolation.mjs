// Isolation: 50 documents in two rooms, with names that contain `/`, that extend another
// document's name, and that exist in both rooms, each get distinct content; a fresh client of
// each document sees exactly its own document's content and nothing else.
//   node isolation.mjs <server url of room 1> <server url of room 2>

import {
  assertEqual, assertSameJSON, args, connect, main, stateVector, stepTo, waitFor
} from './lib.mjs'

const [room1, room2] = args(2, '<ws://HOST/v1/rooms/ROOM1/yjs> <ws://HOST/v1/rooms/ROOM2/yjs>')

/** 25 names, each used in both rooms. */
const names = []
for (let j = 0; j < 25; j++) {
  switch (j % 5) {
    case 0: names.push(`doc-${j}`); break
    case 1: names.push(`notes/${j}`); break
    case 2: names.push(`notes/${j - 1}/today`); break // extends the previous name
    case 3: names.push(`a/b/c/d-${j}`); break
    case 4: names.push(`doc-${j - 4}/sub`); break // extends an earlier name
  }
}
const docs = names.flatMap((name, j) => [
  { base: room1, room: 'room 1', name, version: j % 2 === 0 ? 3 : 2 },
  { base: room2, room: 'room 2', name, version: j % 2 === 0 ? 2 : 3 }
])
const content = (d) => `${d.room} | ${d.name} | only here`

main('isolation', async () => {
  stepTo(`writing ${docs.length} documents`)
  const writers = await Promise.all(docs.map((d) =>
    connect(d.base, d.name, { version: d.version, name: `writer ${d.room}:${d.name}` })))
  writers.forEach((w, i) => {
    w.doc.getText('text').insert(0, content(docs[i]))
    w.doc.getMap('meta').set('name', docs[i].name)
    w.doc.getMap('meta').set('room', docs[i].room)
  })

  stepTo('a fresh reader of every document')
  const readers = await Promise.all(docs.map((d) =>
    connect(d.base, d.name, { version: d.version === 3 ? 2 : 3, name: `reader ${d.room}:${d.name}` })))
  await waitFor('every reader to have its document\'s content', () =>
    readers.every((r, i) => r.doc.getText('text').toString() === content(docs[i])), {
    sources: readers,
    detail: () => readers
      .filter((r, i) => r.doc.getText('text').toString() !== content(docs[i]))
      .map((r) => `  ${r.name}: ${JSON.stringify(r.doc.getText('text').toString())}`).join('\n')
  })

  stepTo('checking that no reader holds anything from another document')
  readers.forEach((r, i) => {
    const d = docs[i]
    assertEqual(r.doc.getText('text').toString(), content(d), `${r.name}'s text`)
    assertSameJSON(r.doc.getMap('meta').toJSON(), { name: d.name, room: d.room }, `${r.name}'s map`)
    // Only the writer of this document ever wrote to it.
    assertSameJSON(Object.keys(stateVector(r)), [String(writers[i].doc.clientID)],
      `the clients that wrote ${r.name}'s document`)
  })
})

// A stock y-websocket editor makes numbered edits, one transaction each, for an agent that
// follows the document over the room protocol; it waits until the agent writes back that it
// has seen them all.
//   node edits.mjs <ws://HOST/v1/rooms/ROOM/yjs> <document> <token> <count>

import { args, connect, main, stepTo, waitFor } from './lib.mjs'

const [base, path, token, countText] = args(4, '<ws://HOST/v1/rooms/ROOM/yjs> <document> <token> <count>')
const count = Number(countText)

main('edits', async () => {
  const editor = await connect(base, path, { name: 'editor', options: { params: { token } } })
  stepTo(`make ${count} edits`)
  const edits = editor.doc.getArray('edits')
  for (let i = 0; i < count; i++) {
    edits.push([i])
  }
  stepTo('wait for the agent to have seen them all')
  await waitFor('the agent to report every edit seen', () =>
    editor.doc.getMap('agent').get('seen') === count, {
    sources: [editor],
    detail: () => `  the agent reports ${editor.doc.getMap('agent').get('seen')}`
  })
}, { overallMs: 120_000 })

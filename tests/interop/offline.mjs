// Offline editing: two synced providers; one disconnects, both edit while apart, it reconnects,
// and both converge with both sides' edits. Done once with the v3 provider going offline and
// once with the v2 provider.
//   node offline.mjs <server url of a room>

import {
  assertEqual, assertSameJSON, args, connect, main, stepTo, textsConverge, waitFor, synced
} from './lib.mjs'

const [base] = args(1, '<ws://HOST/v1/rooms/ROOM/yjs>')
const DOC = 'offline/doc'

main('offline', async () => {
  stepTo('a (v3) and b (v2) connect; a writes the base text')
  const a = await connect(base, DOC, { version: 3, name: 'a(v3)' })
  const b = await connect(base, DOC, { version: 2, name: 'b(v2)' })
  a.doc.getText('text').insert(0, 'base')
  assertEqual(await textsConverge([a, b]), 'base', 'the shared text before going offline')

  // Edits at different ends of the text, so the merged result is known exactly.
  const rounds = [
    { away: a, stay: b, awayEdit: '[a offline]', stayEdit: '[b online]' },
    { away: b, stay: a, awayEdit: '[b offline]', stayEdit: '[a online]' }
  ]
  for (const { away, stay, awayEdit, stayEdit } of rounds) {
    stepTo(`${away.name} disconnects and its socket closes`)
    const before = away.doc.getText('text').toString()
    const ws = away.provider.ws
    // The v2 provider still reads a closing socket: wait until it is closed for good.
    const closed = new Promise((resolve) => ws.once('close', resolve))
    away.provider.disconnect()
    await closed
    assertEqual(away.provider.wsconnected, false, `${away.name} is disconnected`)

    stepTo('both edit while apart')
    away.doc.getText('text').insert(0, awayEdit)
    away.doc.getMap('map').set(away.name, awayEdit)
    const t = stay.doc.getText('text')
    t.insert(t.length, stayEdit)
    stay.doc.getMap('map').set(stay.name, stayEdit)
    // The remaining client's edit reaches the server while the other is away: a third client
    // that connects now sees it and not the offline edit.
    const witness = await connect(base, DOC, { version: 3, name: 'witness(v3)' })
    await waitFor('the witness to see the online edit', () =>
      witness.doc.getText('text').toString() === before + stayEdit, { sources: [witness] })
    witness.provider.destroy()
    assertEqual(away.doc.getText('text').toString(), awayEdit + before,
      `${away.name}'s text while offline`)

    stepTo(`${away.name} reconnects; both converge`)
    away.provider.connect()
    await synced(away)
    const want = awayEdit + before + stayEdit
    assertEqual(await textsConverge([away, stay]), want, 'the merged text')
    await waitFor('the maps to hold both edits', () =>
      [away, stay].every((c) => c.doc.getMap('map').get(away.name) === awayEdit &&
        c.doc.getMap('map').get(stay.name) === stayEdit), { sources: [away, stay] })
    assertSameJSON(away.doc.getMap('map').toJSON(), stay.doc.getMap('map').toJSON(), 'the maps')
  }
  assertEqual(a.doc.getText('text').toString(), '[b offline][a offline]base[b online][a online]',
    'the final text')
})

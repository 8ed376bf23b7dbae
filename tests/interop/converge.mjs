// Three providers (v3, v2, v3) edit one document concurrently (a Y.Text and a Y.Map) and must
// converge to identical content that holds every edit.
//   node converge.mjs <server url of a room>

import {
  args, assert, assertEqual, assertSameJSON, canonical, connect, main, preview, rng, stateVector,
  stepTo, textsConverge, waitFor
} from './lib.mjs'

const [base] = args(1, '<ws://HOST/v1/rooms/ROOM/yjs>')
const DOC = 'shared/converge'
const ROUNDS = 20
const EDITS_PER_ROUND = 5

main('converge', async () => {
  stepTo('connecting three providers (v3, v2, v3)')
  const clients = [
    await connect(base, DOC, { version: 3, name: 'a(v3)' }),
    await connect(base, DOC, { version: 2, name: 'b(v2)' }),
    await connect(base, DOC, { version: 3, name: 'c(v3)' })
  ]

  stepTo('concurrent edits')
  const random = rng(0xc0ffee)
  const tokens = []
  const mapWant = {}
  for (let round = 0; round < ROUNDS; round++) {
    // Within a round no message is processed between the clients' edits: they are concurrent.
    clients.forEach((c, i) => {
      const text = c.doc.getText('text')
      const map = c.doc.getMap('map')
      for (let k = 0; k < EDITS_PER_ROUND; k++) {
        const token = `<${i}.${round}.${k}>`
        tokens.push(token)
        // Only between tokens (or at an end), so that no token splits another.
        const s = text.toString()
        const gaps = [0]
        for (let at = 1; at <= s.length; at++) if (s[at - 1] === '>') gaps.push(at)
        text.insert(gaps[Math.floor(random() * gaps.length)], token)
        map.set(`c${i}-r${round}-k${k}`, { by: i, round, k })
        mapWant[`c${i}-r${round}-k${k}`] = { by: i, round, k }
      }
      // Every client also writes the same key: exactly one value must win everywhere.
      map.set('contested', `client ${i} round ${round}`)
    })
    // Let the network interleave with the next round.
    await new Promise((resolve) => setImmediate(resolve))
  }

  stepTo('waiting for the texts to converge')
  await waitFor(`every client to hold all ${tokens.length} tokens`, () =>
    clients.every((c) => c.doc.getText('text').length === tokens.join('').length), {
    sources: clients,
    detail: () => clients.map((c) => `  ${c.name}: ${c.doc.getText('text').length} chars`).join('\n')
  })
  const text = await textsConverge(clients)

  stepTo('checking the converged content')
  for (const token of tokens) {
    assertEqual(text.split(token).length - 1, 1, `occurrences of ${token} in the converged text`)
  }
  assertEqual(text.length, tokens.join('').length, 'converged text length')
  const maps = () => clients.map((c) => canonical(c.doc.getMap('map').toJSON()))
  await waitFor('the maps to converge', () =>
    maps().every((m) => m === maps()[0]) &&
    clients[0].doc.getMap('map').size === Object.keys(mapWant).length + 1, {
    sources: clients,
    detail: () => clients.map((c, i) => `  ${c.name}: ${c.doc.getMap('map').size} keys, ${preview(maps()[i], 100)}`).join('\n')
  })
  // The last edits may still be on their way to some clients: every state vector must become
  // the same (and stay so), not merely the content the assertions above look at.
  const vectors = () => clients.map((c) => JSON.stringify(stateVector(c)))
  await waitFor('the state vectors to converge', () => vectors().every((v) => v === vectors()[0]), {
    sources: clients,
    detail: () => clients.map((c, i) => `  ${c.name}: ${vectors()[i]}`).join('\n')
  })
  const contested = clients[0].doc.getMap('map').get('contested')
  assert(/^client [0-2] round 19$/.test(contested), `the contested key holds a last-round value (got ${contested})`)
  for (const c of clients) {
    const map = c.doc.getMap('map').toJSON()
    assertEqual(map.contested, contested, `${c.name}'s contested key`)
    delete map.contested
    assertSameJSON(map, mapWant, `${c.name}'s map`)
    assertSameJSON(stateVector(c), stateVector(clients[0]), `${c.name}'s state vector`)
  }

  stepTo('a fresh client gets the same state from the server')
  const late = await connect(base, DOC, { version: 3, name: 'late(v3)' })
  assertEqual(late.doc.getText('text').toString(), text, 'the late client\'s text')
  assertSameJSON(late.doc.getMap('map').toJSON(), clients[0].doc.getMap('map').toJSON(), 'the late client\'s map')
})

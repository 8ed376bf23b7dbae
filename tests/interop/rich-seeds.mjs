// Seeded rich-text runs through the server: three clients make random formatted inserts, formats,
// deletes, embeds, map writes, undo and redo, and go offline and back; then a late joiner
// connects, and all four must hold the same content, formatting, state vector and delete set.
// Seeds run a few at a time, each on its own document; a failure names its seed.
//   node rich-seeds.mjs <server url of a room> <first seed> <count> [parallel]

import { Y, args, connect, main, rng, stepTo, synced } from './lib.mjs'
import { assertReplicasEqual, quiesce } from './replicas.mjs'

const [base, firstArg, countArg, parallelArg = '4'] =
  args(3, '<ws://HOST/v1/rooms/ROOM/yjs> <first seed> <count> [parallel]')
const first = Number(firstArg)
const count = Number(countArg)
const parallel = Number(parallelArg)
const OPS = 40
const ATTRS = [
  null, null, { bold: true }, { italic: true }, { color: 'red' }, { bold: true, color: 'blue' }
]
const FORMATS = [{ bold: true }, { bold: null }, { italic: true }, { italic: null }, { color: 'green' },
  { color: null }]

/** Lets the sockets deliver for a few turns of the event loop. */
async function yieldTurns (n) {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve))
}

async function goOffline (c) {
  c.closing = true
  c.provider.disconnect()
}

async function goOnline (c) {
  c.provider.connect()
  await synced(c)
  c.closing = false
}

async function runSeed (seed) {
  const random = rng(seed)
  const pick = (xs) => xs[Math.floor(random() * xs.length)]
  const upTo = (n) => Math.floor(random() * (n + 1))
  const doc = `seed/${seed}`
  const cs = []
  for (const name of ['a', 'b', 'c']) cs.push(await connect(base, doc, { name: `${name}@${seed}` }))
  const undo = cs.map((c) => new Y.UndoManager([c.doc.getText('text'), c.doc.getMap('map')],
    { captureTimeout: 0 }))
  const offline = new Set()
  for (let op = 0; op < OPS; op++) {
    const i = Math.floor(random() * cs.length)
    const text = cs[i].doc.getText('text')
    const r = random()
    if (r < 0.25) {
      const attrs = pick(ATTRS)
      const s = 'xyzw'.slice(0, 1 + upTo(3)) + op
      if (attrs) text.insert(upTo(text.length), s, attrs)
      else text.insert(upTo(text.length), s)
    } else if (r < 0.4) {
      const at = upTo(text.length)
      text.format(at, upTo(Math.min(6, text.length - at)), pick(FORMATS))
    } else if (r < 0.55) {
      const at = upTo(text.length)
      text.delete(at, upTo(Math.min(5, text.length - at)))
    } else if (r < 0.6) {
      text.insertEmbed(upTo(text.length), { image: `img${op}` }, random() < 0.5 ? { bold: true } : {})
    } else if (r < 0.65) {
      cs[i].doc.getMap('map').set(pick(['k1', 'k2', 'k3']), pick([op, `v${op}`, { nested: op }]))
    } else if (r < 0.75) {
      undo[i].undo()
    } else if (r < 0.8) {
      undo[i].redo()
    } else if (r < 0.88) {
      if (offline.has(i)) {
        offline.delete(i)
        await goOnline(cs[i])
      } else {
        offline.add(i)
        await goOffline(cs[i])
      }
    } else {
      await yieldTurns(1 + upTo(3))
    }
  }
  for (const i of offline) await goOnline(cs[i])
  await quiesce(cs)
  cs.push(await connect(base, doc, { name: `d@${seed}` }))
  await quiesce(cs)
  try {
    assertReplicasEqual(cs, ['text'], ['map'])
  } catch (err) {
    throw new Error(`seed ${seed}: ${err.message}`)
  }
  for (const c of cs) {
    c.closing = true
    c.provider.destroy()
  }
}

main('rich-seeds', async () => {
  stepTo(`seeds ${first}..${first + count - 1}, ${parallel} at a time`)
  // With KEEP_GOING=1 every seed runs and the diverged ones are counted, instead of stopping at
  // the first.
  const keepGoing = process.env.KEEP_GOING === '1'
  const diverged = []
  let next = first
  const end = first + count
  const worker = async () => {
    while (next < end) {
      const seed = next++
      try {
        await runSeed(seed)
      } catch (err) {
        if (!keepGoing) throw err
        diverged.push(seed)
        console.error(err.message.split('\n')[0])
      }
    }
  }
  await Promise.all(Array.from({ length: parallel }, worker))
  if (diverged.length > 0) {
    throw new Error(`${diverged.length} of ${count} seeds diverged: ${diverged.sort((x, y) => x - y).join(' ')}`)
  }
  stepTo(`${count} seeds converged`)
}, { overallMs: Number(process.env.OVERALL_MS ?? 50_000) })

// The official `e2b` npm package (pinned in package.json), unchanged, against skiff's
// E2B-compatible API. Run by sdk/python/tests/test_e2b.py, which starts the daemon, makes the
// template (a pool) and sets E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY and E2B_TEMPLATE.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import {
  AuthenticationError,
  CommandExitError,
  NotFoundError,
  Sandbox,
  SandboxError,
  SandboxNotFoundError,
  TimeoutError,
} from 'e2b'

const template = process.env.E2B_TEMPLATE
assert.ok(template, 'E2B_TEMPLATE names the pool to create sandboxes from')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Wait until `check()` is true, for at most `ms`.
async function eventually(check, ms) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) return false
    await sleep(100)
  }
  return true
}

test('commands stream their output, take envs and cwd, and exit codes raise', async () => {
  const sbx = await Sandbox.create(template, {
    timeoutMs: 120_000,
    envs: { TEAM: 'blue' },
    metadata: { suite: 'js' },
  })
  try {
    const seen = []
    const r = await sbx.commands.run('echo out; echo err >&2; echo $TEAM $EXTRA; pwd', {
      envs: { EXTRA: 'x' },
      cwd: '/tmp',
      onStdout: (data) => seen.push(data),
    })
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'out\nblue x\n/tmp\n')
    assert.equal(r.stderr, 'err\n')
    assert.equal(seen.join(''), r.stdout, 'onStdout saw the output as it came')

    await assert.rejects(sbx.commands.run('echo partial; exit 7'), (e) => {
      assert.ok(e instanceof CommandExitError, `${e}`)
      assert.equal(e.exitCode, 7)
      assert.equal(e.stdout, 'partial\n')
      return true
    })
    const started = Date.now()
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 3_000 }), (e) => {
      assert.ok(e instanceof TimeoutError, `${e}`)
      return true
    })
    assert.ok(Date.now() - started < 20_000, 'the timeout ended the command')

    // Background: stdin fed and closed, listed, killed from another client.
    const cat = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(cat.pid, 'fed through stdin\n')
    await sbx.commands.closeStdin(cat.pid)
    assert.equal((await cat.wait()).stdout, 'fed through stdin\n')
    const sleeper = await sbx.commands.run('sleep 120', { background: true })
    assert.ok((await sbx.commands.list()).some((p) => p.pid === sleeper.pid))
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await again.commands.kill(sleeper.pid), true)
    await assert.rejects(sleeper.wait(), (e) => {
      assert.ok(e instanceof CommandExitError, `${e}`)
      assert.equal(e.exitCode, -1)
      return true
    })
    assert.equal(await sbx.commands.kill(sleeper.pid), false, 'gone: nothing to kill')
  } finally {
    assert.equal(await sbx.kill(), true)
  }
})

test('a pty runs an interactive shell that echoes, resizes and is killed', async () => {
  const sbx = await Sandbox.create(template, { timeoutMs: 120_000 })
  try {
    const decoder = new TextDecoder()
    let screen = ''
    const pty = await sbx.pty.create({
      cols: 80,
      rows: 24,
      onData: (data) => {
        screen += decoder.decode(data, { stream: true })
      },
    })
    await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 })
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; echo pty-$((6*7))\n'))
    const answered = await eventually(() => screen.includes('30 100') && screen.includes('pty-42'), 15_000)
    assert.ok(answered, `the shell answered through the pty: ${JSON.stringify(screen)}`)
    assert.equal(await sbx.pty.kill(pty.pid), true)
    await assert.rejects(pty.wait(), CommandExitError)
  } finally {
    await sbx.kill()
  }
})

test('files are written, read, listed, watched, moved and removed', async () => {
  const sbx = await Sandbox.create(template, { timeoutMs: 300_000 })
  try {
    const info = await sbx.files.write('/work/notes/a.txt', 'first line\n')
    assert.deepEqual([info.path, info.name], ['/work/notes/a.txt', 'a.txt'])
    assert.equal(await sbx.files.read('/work/notes/a.txt'), 'first line\n')
    await sbx.files.write([
      { path: '/work/b.bin', data: new Uint8Array([0, 1, 2]).buffer },
      { path: '/work/notes/c.txt', data: 'c' },
    ])
    assert.deepEqual(Array.from(await sbx.files.read('/work/b.bin', { format: 'bytes' })), [0, 1, 2])
    const listed = (await sbx.files.list('/work', { depth: 2 })).map((e) => [e.path, e.type]).sort()
    assert.deepEqual(listed, [
      ['/work/b.bin', 'file'],
      ['/work/notes', 'dir'],
      ['/work/notes/a.txt', 'file'],
      ['/work/notes/c.txt', 'file'],
    ])
    const entry = await sbx.files.getInfo('/work/notes/a.txt')
    assert.deepEqual([entry.size, entry.permissions, entry.owner], [11, '-rw-r--r--', 'root'])
    assert.equal(await sbx.files.makeDir('/work/new/deep'), true)
    assert.equal(await sbx.files.makeDir('/work/new/deep'), false, 'it exists')
    const moved = await sbx.files.rename('/work/notes/c.txt', '/work/elsewhere/c2.txt')
    assert.equal(moved.path, '/work/elsewhere/c2.txt')
    assert.equal(await sbx.files.exists('/work/elsewhere/c2.txt'), true)
    assert.equal(await sbx.files.exists('/work/notes/c.txt'), false)
    await assert.rejects(sbx.files.read('/work/missing.txt'), NotFoundError)

    // A watch sees what a command in the guest does.
    const events = []
    const watch = await sbx.files.watchDir('/work/notes', (e) => events.push([e.name, e.type]))
    await sbx.commands.run('echo x > /work/notes/watched.txt; rm /work/notes/a.txt')
    const has = (name, type) => events.some(([n, t]) => n === name && t === type)
    const seen = await eventually(() => has('watched.txt', 'create') && has('a.txt', 'remove'), 10_000)
    await watch.stop()
    assert.ok(seen, `the watch saw the create and the remove: ${JSON.stringify(events)}`)

    // 20 MiB through the agent, both ways, and checked in the guest.
    const big = randomBytes(20 << 20)
    await sbx.files.write('/tmp/big.bin', new Blob([big]))
    const back = await sbx.files.read('/tmp/big.bin', { format: 'bytes' })
    assert.equal(Buffer.compare(Buffer.from(back), big), 0, 'the same bytes came back')
    const digest = (await sbx.commands.run('sha256sum /tmp/big.bin')).stdout.split(' ')[0]
    assert.equal(digest, createHash('sha256').update(big).digest('hex'))

    await sbx.files.remove('/work')
    assert.equal(await sbx.files.exists('/work/b.bin'), false)
  } finally {
    await sbx.kill()
  }
})

test('sandboxes are listed, extended and killed, and belong to their key', async () => {
  const sbx = await Sandbox.create(template, { timeoutMs: 60_000, metadata: { suite: 'js-list' } })
  try {
    const listed = await Sandbox.list({ query: { metadata: { suite: 'js-list' } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.deepEqual(listed[0].metadata, { suite: 'js-list' })
    // JavaScript's own filters: template, states, start time, and the order.
    const ids = async (opts) => (await Sandbox.list(opts).nextItems()).map((s) => s.sandboxId)
    const query = { metadata: { suite: 'js-list' } }
    await sleep(1_100) // start times are in whole seconds
    const later = await Sandbox.create(template, { timeoutMs: 60_000, metadata: { suite: 'js-list' } })
    try {
      assert.deepEqual(await ids({ query }), [later.sandboxId, sbx.sandboxId], 'newest first')
      assert.deepEqual(await ids({ query, order: 'asc' }), [sbx.sandboxId, later.sandboxId])
      const both = await ids({ query: { ...query, state: ['running', 'paused'], template } })
      assert.equal(both.length, 2)
      assert.deepEqual(await ids({ query: { ...query, state: ['paused'] } }), [], 'none sleeps')
      assert.deepEqual(await ids({ query: { ...query, template: 'another-template' } }), [])
      const future = new Date(Date.now() + 3_600_000)
      assert.deepEqual(await ids({ query: { ...query, startedAfter: future } }), [])
    } finally {
      await later.kill()
    }
    const [metric] = await sbx.getMetrics()
    assert.ok(metric.memUsed > 0 && metric.memUsed < metric.memTotal, JSON.stringify(metric))
    assert.ok(metric.cpuUsedPct >= 0 && metric.cpuUsedPct <= 100 && metric.cpuCount >= 1)
    const before = await sbx.getInfo()
    await sbx.setTimeout(600_000)
    const after = await sbx.getInfo()
    assert.ok(after.endAt.getTime() - before.endAt.getTime() > 400_000, 'the lifetime grew')
    // To another key it does not exist.
    await assert.rejects(
      Sandbox.connect(sbx.sandboxId, { apiKey: process.env.E2B_OTHER_KEY }),
      SandboxNotFoundError,
    )
    assert.equal(await Sandbox.kill(sbx.sandboxId, { apiKey: process.env.E2B_OTHER_KEY }), false)
  } finally {
    assert.equal(await Sandbox.kill(sbx.sandboxId), true)
  }
  assert.equal(await Sandbox.kill(sbx.sandboxId), false, 'killed once')
  // The SDK passes a create's 404 on as a SandboxError with the status.
  await assert.rejects(Sandbox.create('no-such-template'), (e) => {
    assert.ok(e instanceof SandboxError, `${e}`)
    assert.match(e.message, /no-such-template/)
    return true
  })
  await assert.rejects(
    Sandbox.create(template, { apiKey: 'wrong_key_0123456789abcdef' }),
    AuthenticationError,
  )
})

// TCP and UDP sockets (issue #9): redis-server with 100k keys comes back
// listening on its port with every key; a client connection held open
// inside a MULTI across the checkpoint (--tcp-established) gets the right
// answer to EXEC on the same connection; a snapshot left running does not
// disturb its clients; an IPv6 TCP connection with bytes queued both ways
// loses and doubles nothing, and so does a UDP pair with datagrams queued
// both ways (senders outside the tree refused); a port taken at restart is refused by name;
// socket options come back, state that does not is refused by name; stasis
// dying with connections in repair mode leaves them working.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import dgram from 'node:dgram';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, restartVerified, assertLeftRunning, alive, cli, editImage, untilTrue } from './harness';
import { checkpointSync } from '../src';
import { listFds } from '../src/proc';
import { loadImage } from '../src/image/load';

const procs = new Procs();
after(() => procs.cleanup());

/** Checkpoint with --kill (connections taken along), restart verified, then tell the program to go on: it must say ok. */
async function killRestartAndGo(pid: number, img: string, fifo: string, out: string): Promise<void> {
  checkpointSync(pid, img, { kill: true, tcpEstablished: true });
  await waitGone(pid, procs);
  procs.addTree(restartVerified(img).pid);
  fs.writeFileSync(fifo, 'g');
  assert.match(await waitFor(out, /^(ok|FAIL.*)$/m), /^ok$/m);
}

const REDIS = '/usr/bin/redis-server';

/** A port nothing listens on now (the kernel's choice, released at once). */
async function freePort(host: string): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, host, r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A small RESP client on one connection: commands out, replies parsed in order. */
class Redis {
  readonly sock: net.Socket;
  private buf = Buffer.alloc(0);
  private waiting: Array<(v: unknown) => void> = [];

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (;;) {
        const r = parse(this.buf, 0);
        if (!r || !this.waiting.length) break;
        this.buf = this.buf.subarray(r.end);
        this.waiting.shift()!(r.value);
      }
    });
  }

  static connect(port: number): Promise<Redis> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Redis(s)));
      s.once('error', reject);
    });
  }

  /** Send commands (pipelined); resolves with their replies. */
  send(...cmds: string[][]): Promise<unknown[]> {
    const out = cmds.map((c) => `*${c.length}\r\n${c.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`).join('');
    const replies = cmds.map(() => new Promise<unknown>((r) => this.waiting.push(r)));
    this.sock.write(out);
    return Promise.all(replies);
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.sock.end(r));
    this.sock.destroy();
  }
}

function parse(b: Buffer, at: number): { value: unknown; end: number } | null {
  const nl = b.indexOf('\r\n', at);
  if (nl < 0) return null;
  const line = b.toString('utf8', at + 1, nl);
  switch (String.fromCharCode(b[at])) {
    case '+': return { value: line, end: nl + 2 };
    case '-': return { value: new Error(line), end: nl + 2 };
    case ':': return { value: Number(line), end: nl + 2 };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, end: nl + 2 };
      if (b.length < nl + 2 + n + 2) return null;
      return { value: b.toString('utf8', nl + 2, nl + 2 + n), end: nl + 2 + n + 2 };
    }
    case '*': {
      const n = Number(line);
      const out: unknown[] = [];
      let end = nl + 2;
      for (let i = 0; i < n; i++) {
        const r = parse(b, end);
        if (!r) return null;
        out.push(r.value);
        end = r.end;
      }
      return { value: out, end };
    }
    default: throw new Error(`unexpected reply byte ${b[at]}`);
  }
}

const sockets = (pid: number) => listFds(pid).filter((f) => f.target.startsWith('socket:')).length;

/** redis-server on 127.0.0.1 at a free port, in a directory of its own, saving nothing. */
async function startRedis(tag: string): Promise<{ pid: number; port: number; dir: string }> {
  const dir = tmpdir(tag);
  const port = await freePort('127.0.0.1');
  const out = path.join(dir, 'out');
  const pid = procs.start(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no'], out, { cwd: dir });
  await waitFor(out, /Ready to accept connections/);
  return { pid, port, dir };
}

test('redis-server with 100k keys: checkpoint --kill, restart; every key is back and new clients connect', async () => {
  const { pid, port, dir } = await startRedis('redis-keys');
  const c = await Redis.connect(port);
  const N = 100_000, BATCH = 1000;
  for (let i = 0; i < N; i += BATCH) {
    const args = ['MSET'];
    for (let k = i; k < i + BATCH; k++) args.push(`key:${k}`, `value:${k}:${'x'.repeat(k % 50)}`);
    assert.equal((await c.send(args))[0], 'OK');
  }
  await c.close();
  // The server closes its end once it reads ours: then only the listener is left.
  await untilTrue('redis to close the loading connection', () => sockets(pid) === 1);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  const d = await Redis.connect(port);
  assert.deepEqual(await d.send(['DBSIZE']), [N]);
  for (const k of [0, 1, 4999, 77777, N - 1]) {
    assert.deepEqual(await d.send(['GET', `key:${k}`]), [`value:${k}:${'x'.repeat(k % 50)}`]);
  }
  assert.deepEqual(await d.send(['SET', 'after', 'restart'], ['GET', 'after']), ['OK', 'restart']);
  await d.close();
  // redis-cli, another client program, too.
  assert.equal(execFileSync('redis-cli', ['-p', String(port), 'GET', 'key:42'], { encoding: 'utf8' }).trim(), 'value:42:' + 'x'.repeat(42));
});

test('a client inside MULTI across checkpoint --kill --tcp-established gets the right EXEC reply on the same connection', async () => {
  const { pid, port, dir } = await startRedis('redis-multi');
  const c = await Redis.connect(port);
  assert.deepEqual(await c.send(['SET', 'n', '41'], ['MULTI'], ['INCR', 'n'], ['SET', 'k', 'v'], ['GET', 'k']), ['OK', 'OK', 'QUEUED', 'QUEUED', 'QUEUED']);
  let closed = false;
  c.sock.on('close', () => { closed = true; });
  const img = path.join(dir, 'image');
  // Without --tcp-established the connection is refused by name, and redis left as it was.
  assert.throws(() => checkpointSync(pid, img, { kill: true }), /established connection tcp 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+: pass --tcp-established/);
  assertLeftRunning(pid);
  checkpointSync(pid, img, { kill: true, tcpEstablished: true });
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.deepEqual(await c.send(['EXEC']), [[42, 'OK', 'v']]);
  assert.deepEqual(await c.send(['GET', 'n']), ['42']);
  assert.equal(closed, false);
  const d = await Redis.connect(port);
  assert.deepEqual(await d.send(['GET', 'k']), ['v']);
  await d.close();
  await c.close();
});

test('a snapshot left running (--tcp-established, no --kill) does not disturb the clients of a server', async () => {
  const { pid, port, dir } = await startRedis('redis-snapshot');
  const c = await Redis.connect(port);
  assert.deepEqual(await c.send(['MULTI'], ['INCR', 'hits'], ['INCR', 'hits']), ['OK', 'QUEUED', 'QUEUED']);
  let closed = false;
  c.sock.on('close', () => { closed = true; });
  checkpointSync(pid, path.join(dir, 'image'), { tcpEstablished: true });
  assertLeftRunning(pid);
  assert.deepEqual(await c.send(['EXEC']), [[1, 2]]);
  assert.deepEqual(await c.send(['PING']), ['PONG']);
  const d = await Redis.connect(port);
  assert.deepEqual(await d.send(['GET', 'hits']), ['2']);
  await d.close();
  assert.equal(closed, false);
  await c.close();
});

test('a restart whose port is taken is refused naming the address, with nothing left running', async () => {
  const { pid, port, dir } = await startRedis('redis-taken');
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(port, '127.0.0.1', r));
  try {
    assert.throws(() => restartVerified(img), new RegExp(`cannot bind tcp 127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\)`));
    assert.equal(alive(pid), false);
  } finally {
    await new Promise((r) => blocker.close(r));
  }
  // Freed, the same image restarts.
  const r = restartVerified(img);
  procs.addTree(r.pid);
  const d = await Redis.connect(port);
  assert.deepEqual(await d.send(['PING']), ['PONG']);
  await d.close();
});

test('an IPv6 TCP connection with bytes queued both ways loses and doubles nothing (--kill --tcp-established)', async () => {
  const dir = tmpdir('inet-pair');
  const out = path.join(dir, 'out');
  const fifo = path.join(dir, 'go');
  execFileSync('mkfifo', [fifo]);
  const pid = procs.start(build('inet_pair'), [fifo], out, { cwd: dir });
  const ready = await waitFor(out, /^ready (\d+) (\d+)$/m);
  const [, toServer, toClient] = /^ready (\d+) (\d+)$/m.exec(ready)!.map(Number);
  assert.ok(toServer > 0 && toClient > 0);
  const img = path.join(dir, 'image');
  await killRestartAndGo(pid, img, fifo, out);
});

test('a bound and a connected UDP socket (IPv6) come back bound and connected', async () => {
  const dir = tmpdir('inet-udp');
  const out = path.join(dir, 'out');
  const fifo = path.join(dir, 'go');
  execFileSync('mkfifo', [fifo]);
  const pid = procs.start(build('inet_pair'), [fifo, 'udp-after'], out, { cwd: dir });
  await waitFor(out, /^ready /m);
  const img = path.join(dir, 'image');
  await killRestartAndGo(pid, img, fifo, out);
});

for (const [family, mode] of [['IPv6', 'udp'], ['IPv4', 'udp4']] as const) {
  test(`a UDP request/response pair (${family}) with datagrams queued both ways loses, doubles and reorders nothing (--kill)`, async () => {
    const dir = tmpdir(`inet-${mode}-queued`);
    const out = path.join(dir, 'out');
    const fifo = path.join(dir, 'go');
    execFileSync('mkfifo', [fifo]);
    const pid = procs.start(build('inet_pair'), [fifo, mode], out, { cwd: dir });
    await waitFor(out, /^ready /m);
    const img = path.join(dir, 'image');
    checkpointSync(pid, img, { kill: true, tcpEstablished: true });
    await waitGone(pid, procs);
    // The image holds the 20 datagrams of each direction, in order, each with its sender.
    const udp = loadImage(img).processes[0].fds.flatMap((f) => (f.kind === 'inet' && f.inet.queued ? [f.inet] : []));
    assert.equal(udp.length, 2);
    for (const s of udp) {
      const dir = s.state === 'connected' ? 1 : 0;
      assert.deepEqual(s.queued!.map((d) => Buffer.from(d.data, 'base64').toString()), Array.from({ length: 20 }, (_, i) => `datagram ${i} of ${dir}`));
      const sender = udp.find((o) => o !== s)!;
      for (const d of s.queued!) assert.deepEqual(d.from, sender.local);
    }
    // A crafted image whose datagram names a sender no socket of the image is bound to: one line, before any process exists.
    const crafted = path.join(dir, 'crafted');
    editImage(img, crafted, (p) => {
      const f = p.fds.find((x: { inet?: { queued?: unknown } }) => x.inet?.queued);
      f.inet.queued[0].from.port = f.inet.queued[0].from.port === 1 ? 2 : 1;
    });
    assert.throws(() => loadImage(crafted), /field fds\[\d+\]\.inet\.queued\[0\]\.from: no inet6? UDP socket of the image is bound to (::1|127\.0\.0\.1) port \d+ to send it again$/);
    const r = restartVerified(img);
    procs.addTree(r.pid);
    // Each side reads exactly its queued datagrams, from the right sender, then one more each way.
    fs.writeFileSync(fifo, 'g');
    assert.match(await waitFor(out, /^(ok|FAIL.*)$/m), /^ok$/m);
  });
}

test('a datagram queued from a sender outside the tree, or of zero length, is refused by name; the program finds every datagram still queued', async () => {
  const dir = tmpdir('inet-udp-outside');
  const out = path.join(dir, 'out');
  const fifo = path.join(dir, 'go');
  execFileSync('mkfifo', [fifo]);
  const pid = procs.start(build('inet_pair'), [fifo, 'udp'], out, { cwd: dir });
  const port = Number(/^udp (\d+) \d+$/m.exec(await waitFor(out, /^ready /m))![1]);
  const outsider = dgram.createSocket('udp6');
  try {
    await new Promise<void>((res, rej) => outsider.send('from outside', port, '::1', (e) => (e ? rej(e) : res())));
    const from = (outsider.address() as net.AddressInfo).port;
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image'), { kill: true, tcpEstablished: true }), new RegExp(`: udp \\[::1\\]:${port} has a datagram queued from \\[::1\\]:${from}, which is no inet6 UDP socket of the tree .*; not supported yet`));
  } finally {
    outsider.close();
  }
  assertLeftRunning(pid);
  // Nothing consumed: the program reads its 20 datagrams, then finds the outsider's one more.
  fs.writeFileSync(fifo, 'g');
  assert.match(await waitFor(out, /^(ok|FAIL.*)$/m), /^FAIL: udp 0: more than 20 datagrams$/m);

  // A zero-length datagram queued (a peek marks it, and no later peek sees it): refused.
  const dir2 = tmpdir('inet-udp-empty');
  const out2 = path.join(dir2, 'out');
  const fifo2 = path.join(dir2, 'go');
  execFileSync('mkfifo', [fifo2]);
  const pid2 = procs.start(build('inet_pair'), [fifo2, 'udp-empty'], out2, { cwd: dir2 });
  await waitFor(out2, /^ready /m);
  assert.throws(() => checkpointSync(pid2, path.join(dir2, 'image'), { kill: true, tcpEstablished: true }), /: udp \[::1\]:\d+: a zero-length datagram is queued for the program to read; not supported yet/);
  assertLeftRunning(pid2);
  fs.writeFileSync(fifo2, 'g');
  assert.match(await waitFor(out2, /^(ok|FAIL.*)$/m), /^ok$/m);
});


/** inet_opts with `mode`, ready and waiting on its fifo. */
async function startOpts(tag: string, mode?: string): Promise<{ pid: number; dir: string; out: string; fifo: string }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out');
  const fifo = path.join(dir, 'go');
  execFileSync('mkfifo', [fifo]);
  const pid = procs.start(build('inet_opts'), [fifo, ...(mode ? [mode] : [])], out, { cwd: dir });
  await waitFor(out, /^(ready|FAIL.*)$/m);
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
  return { pid, dir, out, fifo };
}

test('socket options (timeouts, congestion control, ancillary-data and multicast options, TCP tuning) come back as the program set them', async () => {
  const { pid, dir, out, fifo } = await startOpts('inet-opts');
  const img = path.join(dir, 'image');
  await killRestartAndGo(pid, img, fifo, out);
});

test('multicast memberships, TCP MD5 keys, SO_TIMESTAMPING ids and IP_OPTIONS are refused by name; the program goes on', async () => {
  const cases: Array<[string, RegExp]> = [
    ['mcast', /udp 127\.0\.0\.1:\d+: member of the multicast group\(s\) 239\.7\.7\.7 on lo \(IP_ADD_MEMBERSHIP\/MCAST_JOIN_GROUP\); not supported yet/],
    ['mcast6', /udp \[::\]:0: member of the multicast group\(s\) ff15::7 on lo /],
    ['md5', /tcp 127\.0\.0\.1:\d+: 1 TCP MD5 signature key\(s\) \(TCP_MD5SIG, RFC 2385\); not supported yet/],
    ['tsid', /SOF_TIMESTAMPING_OPT_ID numbers its packets with a counter that cannot be restored/],
    ['ipopts', /udp 127\.0\.0\.1:\d+: IPv4 header options set with IP_OPTIONS; not supported yet/],
  ];
  for (const [mode, refusal] of cases) {
    const { pid, dir, out, fifo } = await startOpts(`inet-refuse-${mode}`, mode);
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image'), { kill: true, tcpEstablished: true }), refusal, mode);
    assertLeftRunning(pid);
    // Its connection (held in repair mode until the refusal) and sockets still work.
    fs.writeFileSync(fifo, 'g');
    assert.match(await waitFor(out, /^(ok|FAIL.*)$/m), /^ok$/m, mode);
  }
});

test('stasis killed while connections are in repair mode: its guards take them out, and the connection carries data both ways again', async () => {
  const { pid, port, dir } = await startRedis('redis-die-in-repair');
  const c = await Redis.connect(port);
  assert.deepEqual(await c.send(['SET', 'k', 'before']), ['OK']);
  let closed = false;
  c.sock.on('close', () => { closed = true; });
  process.env.STASIS_TEST_DIE_IN_REPAIR = '1';
  let run;
  try {
    run = cli(['checkpoint', String(pid), '-o', path.join(dir, 'image'), '--tcp-established']);
  } finally {
    delete process.env.STASIS_TEST_DIE_IN_REPAIR;
  }
  const r = await run;
  assert.equal(r.signal, 'SIGKILL', r.stderr);
  // The freeze watchdog thaws redis; the guard has taken its connection out of repair mode.
  await untilTrue('redis to be thawed and untraced', () => {
    try { assertLeftRunning(pid); return true; } catch { return false; }
  });
  const answer = c.send(['GET', 'k'], ['SET', 'k', 'after'], ['GET', 'k']);
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('the connection stalled: no answer in 10 s (still in repair mode?)')), 10000).unref());
  assert.deepEqual(await Promise.race([answer, timeout]), ['before', 'OK', 'after']);
  assert.equal(closed, false);
  await c.close();
});

// Datagrams are queued again at restart from their senders: the bytes and
// the sender come back, not the arrival time or the address they were sent
// to, which a program asking for them would read wrong.
for (const [mode, what] of [['stamp', /1 queued datagram\(s\) on a socket that asks for their arrival time \(timestamp\), which a restart cannot give them; not supported/], ['pktinfo', /1 queued datagram\(s\) on a socket bound to the wildcard that asks for their destination address \(pktinfo\), which a restart cannot give them; not supported/]] as const) {
  test(`a UDP datagram queued on a socket asking for its ${mode === 'stamp' ? 'arrival time' : 'destination address'} is refused by name and keeps it`, async () => {
    const dir = tmpdir(`udp-${mode}`);
    const out = path.join(dir, 'out');
    const pid = procs.start(build('udp_ancillary'), [mode], out);
    await waitFor(out, /^ready$/m);
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), what);
    assertLeftRunning(pid);
    process.kill(pid, 'SIGUSR1');
    const text = await waitFor(out, /^(ok|FAIL.*)$/m);
    assert.doesNotMatch(text, /FAIL/);
  });
}

// Real applications, checkpointed, killed and restarted as users would:
// a Node.js service (issue #8, acceptance 1); a Node.js HTTP server on TCP
// with keep-alive clients mid-conversation (issue #9, acceptance 2).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { checkpointSync } from '../src';
import { Procs, tmpdir, waitFor, waitGone, PROGRAMS, checkpointKillRestart, restartVerified, assertLeftRunning } from './harness';

const procs = new Procs();
after(() => procs.cleanup());

interface State { pid: number; requests: number; ticks: number; hashes: number; workerCount: number }

function ask(socketPath: string): Promise<State> {
  return new Promise((resolve, reject) => {
    http.get({ socketPath, path: '/', agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve(JSON.parse(body) as State));
    }).on('error', reject);
  });
}

/** Ask until `ok` holds of the answer: the service's own counters moving on, not time passing. */
async function askUntil(socketPath: string, ok: (s: State) => boolean): Promise<State> {
  for (let i = 0; i < 2000; i++) {
    const s = await ask(socketPath);
    if (ok(s)) return s;
  }
  throw new Error('the service never reached the expected state');
}

test('a Node.js HTTP service on a unix socket, with timers, fs.watch, a worker and a busy threadpool, carries on after restart', async () => {
  const dir = tmpdir('node');
  const sock = path.join(dir, 'http.sock');
  const watched = path.join(dir, 'watched');
  fs.mkdirSync(watched);
  const out = path.join(dir, 'out');
  const pid = procs.start(process.execPath, [path.join(PROGRAMS, 'node_server.js'), sock, watched], out);
  await waitFor(out, /listening/);
  fs.writeFileSync(path.join(watched, 'before'), '1');
  await waitFor(out, /watch \w+ before/);
  const first = await askUntil(sock, (s) => s.hashes > 0 && s.workerCount > 0 && s.ticks > 0);
  // One connection per request (no agent): the service has let go of ours before the checkpoint.
  await waitFor(out, new RegExp(`^closed ${first.requests}$`, 'm'));

  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);

  // The same socket path answers; the in-memory state continued (the next request of the same process).
  const again = await ask(sock);
  assert.equal(again.pid, pid);
  assert.equal(again.requests, first.requests + 1);
  assert.ok(again.ticks >= first.ticks && again.hashes >= first.hashes && again.workerCount >= first.workerCount);
  // Timers, the threadpool and the worker keep going after restart.
  const later = await askUntil(sock, (s) => s.ticks > again.ticks && s.hashes > again.hashes && s.workerCount > again.workerCount);
  assert.equal(later.pid, pid);
  // The watcher reports a file changed after restart.
  fs.writeFileSync(path.join(watched, 'after'), '2');
  await waitFor(out, /watch \w+ after/);
});

/** One keep-alive HTTP/1.1 connection spoken by hand: what is sent when is up to the test. */
class KeepAlive {
  readonly sock: net.Socket;
  private buf = '';
  private waiting: Array<(body: Record<string, unknown>) => void> = [];
  closed = false;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      for (;;) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const len = Number(/content-length: (\d+)/i.exec(this.buf.slice(0, end))?.[1] ?? NaN);
        assert.ok(Number.isFinite(len), `a response with a length: ${this.buf.slice(0, end)}`);
        if (this.buf.length < end + 4 + len) return;
        const body = JSON.parse(this.buf.slice(end + 4, end + 4 + len)) as Record<string, unknown>;
        this.buf = this.buf.slice(end + 4 + len);
        this.waiting.shift()!(body);
      }
    });
    sock.on('close', () => { this.closed = true; });
  }

  static open(port: number): Promise<KeepAlive> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new KeepAlive(s)));
      s.once('error', reject);
    });
  }

  /** Send `text` (a request, or part of one: the rest may come later); resolves with the next response. */
  send(text: string): Promise<Record<string, unknown>> {
    const p = new Promise<Record<string, unknown>>((r) => this.waiting.push(r));
    this.sock.write(text);
    return p;
  }
}

const get = (url: string) => `GET ${url} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n`;

async function startTcpServer(tag: string): Promise<{ pid: number; port: number; dir: string }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out');
  const pid = procs.start(process.execPath, [path.join(PROGRAMS, 'node_tcp_server.js')], out);
  const text = await waitFor(out, /listening \d+/);
  return { pid, port: Number(/listening (\d+)/.exec(text)![1]), dir };
}

test('a Node.js HTTP server on TCP with keep-alive clients mid-conversation: checkpoint --kill --tcp-established, restart; the same client sockets get answers and the count continues', async () => {
  const { pid, port, dir } = await startTcpServer('node-tcp');
  const a = await KeepAlive.open(port), b = await KeepAlive.open(port);
  assert.equal((await a.send(get('/a1'))).requests, 1);
  assert.equal((await b.send(get('/b1'))).requests, 2);
  // b is mid-request at checkpoint time: a POST whose body has not all come yet.
  const bLater = b.send('POST /b2 HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhello');
  const aPort = a.sock.localPort, bPort = b.sock.localPort;
  // b's bytes are in the kernel before the freeze: read by the server, or in its receive queue.
  await new Promise<void>((r) => b.sock.write('', () => r()));
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true, tcpEstablished: true });
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  b.sock.write('world');
  const b2 = await bLater;
  assert.deepEqual([b2.pid, b2.requests, b2.url, b2.body], [pid, 3, '/b2', 'helloworld']);
  const a2 = await a.send(get('/a2'));
  assert.deepEqual([a2.pid, a2.requests], [pid, 4]);
  // The same connections: neither closed nor reconnected.
  assert.deepEqual([a.closed, b.closed, a.sock.localPort, b.sock.localPort], [false, false, aPort, bPort]);
  // New clients are served too.
  const c = await KeepAlive.open(port);
  assert.equal((await c.send(get('/c'))).requests, 5);
  for (const k of [a, b, c]) k.sock.destroy();
});

test('a snapshot (no --kill) of a Node.js HTTP server with established keep-alive connections does not disturb its clients', async () => {
  const { pid, port, dir } = await startTcpServer('node-tcp-snap');
  const a = await KeepAlive.open(port);
  assert.equal((await a.send(get('/1'))).requests, 1);
  const partial = a.send('GET /2 HTTP/1.1\r\nHost: te');
  await new Promise<void>((r) => a.sock.write('', () => r()));
  checkpointSync(pid, path.join(dir, 'image'), { tcpEstablished: true });
  assertLeftRunning(pid);
  a.sock.write('st\r\n\r\n');
  assert.deepEqual([(await partial).requests, (await a.send(get('/3'))).requests], [2, 3]);
  assert.equal(a.closed, false);
  a.sock.destroy();
});

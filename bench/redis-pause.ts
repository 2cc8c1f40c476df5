// The pause a connected redis client sees (issue #9, Performance): one
// client on an open connection sends PING after PING, each as soon as the
// previous answer came, while the stasis command line checkpoints
// redis-server holding `keys` keys, (a) with --kill --tcp-established and,
// at once, `stasis restart -d` of the image; (b) as a snapshot left running
// (--tcp-established, no --kill). The pause is the slowest PING of the
// window less the median PING before it. Rounds of (a) and (b) interleave.
// Every process started here is killed and reaped by pid; the images live
// in a temporary directory on /dev/shm, removed at the end.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Procs, waitFor, cli } from '../test/harness';
import { waitpidSync, __WALL } from '../src/sys/libc';

export interface RedisPause {
  keys: number;
  /** median PING round trip before the checkpoints (ms) */
  baselineMs: number;
  /** (a) checkpoint --kill then restart: the client's pause per round (ms) */
  killRestartMs: number[];
  /** (b) snapshot left running: the client's pause per round (ms) */
  snapshotMs: number[];
  /** medians of the two */
  killRestartMedianMs: number;
  snapshotMedianMs: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** One RESP connection: replies in order. */
class Client {
  private buf = '';
  private waiting: Array<() => void> = [];
  constructor(readonly sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      // Only simple replies are asked for here (+OK, +PONG, :n): one line each.
      for (let nl; (nl = this.buf.indexOf('\r\n')) >= 0;) {
        this.buf = this.buf.slice(nl + 2);
        this.waiting.shift()?.();
      }
    });
  }
  static connect(port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Client(s)));
      s.once('error', reject);
    });
  }
  /** Send raw RESP holding `replies` commands; resolves when all are answered. */
  send(raw: string, replies = 1): Promise<void> {
    const all = Array.from({ length: replies }, () => new Promise<void>((r) => this.waiting.push(r)));
    this.sock.write(raw);
    return Promise.all(all).then(() => undefined);
  }
}

const PING = '*1\r\n$4\r\nPING\r\n';

/** PING in a loop until `stop` settles; resolves with the slowest round trip (ms). */
async function slowestPing(c: Client, stop: Promise<unknown>): Promise<number> {
  let done = false, worst = 0;
  void stop.finally(() => { done = true; });
  do {
    const t0 = performance.now();
    await c.send(PING);
    worst = Math.max(worst, performance.now() - t0);
  } while (!done);
  return worst;
}

async function run(args: string[]): Promise<string> {
  const r = await cli(args);
  if (r.code !== 0) throw new Error(`stasis ${args.join(' ')} failed (${r.code ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

/** Measure (a) and (b) `rounds` times each on redis-server with `keys` keys. */
export async function redisPause(opts: { keys?: number; rounds?: number } = {}): Promise<RedisPause> {
  const keys = opts.keys ?? 100_000, rounds = opts.rounds ?? 3;
  const procs = new Procs();
  const dir = fs.mkdtempSync('/dev/shm/stasis-redis-pause-');
  try {
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise((r) => free.close(r));
    const out = path.join(dir, 'redis.out');
    let pid = procs.start('/usr/bin/redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no'], out);
    await waitFor(out, /Ready to accept connections/);
    const c = await Client.connect(port);
    for (let i = 0; i < keys; i += 1000) {
      const n = Math.min(1000, keys - i);
      let cmd = `*${1 + 2 * n}\r\n$4\r\nMSET\r\n`;
      for (let k = i; k < i + n; k++) {
        const key = `key:${k}`, val = `value:${k}:${'x'.repeat(k % 50)}`;
        cmd += `$${key.length}\r\n${key}\r\n$${val.length}\r\n${val}\r\n`;
      }
      await c.send(cmd);
    }
    const base: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      await c.send(PING);
      base.push(performance.now() - t0);
    }
    const baselineMs = median(base);
    const killRestartMs: number[] = [], snapshotMs: number[] = [];
    const img = path.join(dir, 'image');
    for (let round = 0; round < rounds; round++) {
      // (b) a snapshot left running
      fs.rmSync(img, { force: true });
      snapshotMs.push(await slowestPing(c, run(['checkpoint', String(pid), '-o', img, '--tcp-established'])) - baselineMs);
      // (a) checkpoint --kill, then at once restart
      fs.rmSync(img, { force: true });
      const old = pid;
      const cycle = (async () => {
        await run(['checkpoint', String(old), '-o', img, '--kill', '--tcp-established']);
        // Ours while it lived: reaped here so its pid is free for the restart.
        try { waitpidSync(old, __WALL); } catch { /* reaped already */ }
        pid = procs.add(Number((await run(['restart', img, '-d'])).trim()));
      })();
      killRestartMs.push(await slowestPing(c, cycle) - baselineMs);
      await cycle;
    }
    c.sock.destroy();
    return { keys, baselineMs, killRestartMs, snapshotMs, killRestartMedianMs: median(killRestartMs), snapshotMedianMs: median(snapshotMs) };
  } finally {
    procs.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// `node dist/bench/redis-pause.js`: run it alone and print the numbers.
if (require.main === module) {
  redisPause().then((r) => console.log(JSON.stringify(r, null, 2)), (e) => { console.error(e); process.exit(1); });
}

// Real applications, checkpointed, killed and restarted as users would:
// a Node.js service (issue #8, acceptance 1).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { Procs, tmpdir, waitFor, PROGRAMS, checkpointKillRestart } from './harness';

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

// Unix sockets (src/kinds/unix.ts): each program sets up its sockets and
// checks them itself after a verified restart: queued bytes and messages
// in both directions, names, peers, shutdown state, options, and that a
// listening socket accepts new connections at the same path and abstract
// name. What is not restored is refused by name with the target left
// running, and the target then checks its sockets are untouched.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir, restartVerified, assertLeftRunning } from './harness';
import { checkpointSync } from '../src';
import { listFds } from '../src/proc';

const procs = new Procs();
after(() => procs.cleanup());

async function checkpointRestart(pid: number, dir: string, opts: Parameters<typeof checkpointSync>[2] = {}, restart: Parameters<typeof restartVerified>[1] = {}): Promise<number> {
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true, ...opts });
  await waitGone(pid, procs);
  const r = restartVerified(img, restart);
  procs.addTree(r.pid);
  return r.pid;
}

test('socketpairs of every type keep the data queued both ways, message boundaries, shutdown state and options', async () => {
  const dir = tmpdir('unix-pairs');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['pairs'], out);
  await waitFor(out, /^ready$/m);
  const sockets = listFds(pid).filter((f) => f.target.startsWith('socket:')).length;
  const restored = await checkpointRestart(pid, dir);
  assert.equal(listFds(restored).filter((f) => f.target.startsWith('socket:')).length, sockets);
  process.kill(restored, 'SIGUSR1');
  const text = await waitFor(out, /^(ok|FAIL.*|setup failed.*)$/m);
  assert.doesNotMatch(text, /FAIL|setup failed/);
});

test('listening sockets at a path and an abstract name, accepted connections with data, named datagram sockets', async () => {
  const dir = tmpdir('unix-listen');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['listen', dir], out);
  await waitFor(out, /^ready$/m);
  const restored = await checkpointRestart(pid, dir);
  // The socket file is there again, and this process can connect to it too.
  assert.ok(fs.lstatSync(path.join(dir, 'srv')).isSocket());
  process.kill(restored, 'SIGUSR1');
  const text = await waitFor(out, /^(ok|FAIL.*|setup failed.*)$/m);
  assert.doesNotMatch(text, /FAIL|setup failed/);
});

test('a restart in a new pid namespace hands the sockets over too', async () => {
  const dir = tmpdir('unix-pidns');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['pairs'], out);
  await waitFor(out, /^ready$/m);
  const restored = await checkpointRestart(pid, dir, {}, { pidNs: true });
  process.kill(restored, 'SIGUSR1');
  const text = await waitFor(out, /^(ok|FAIL.*|setup failed.*)$/m);
  assert.doesNotMatch(text, /FAIL|setup failed/);
});

test('a listening socket with a connection not yet accepted is refused by name; the target goes on', async () => {
  const dir = tmpdir('unix-pending');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['pending', dir], out);
  await waitFor(out, /^ready$/m);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`fd \\d+ of pid ${pid} \\(unix socket socket:\\[\\d+\\]\\): listening socket with 1 connections not yet accepted`));
  assertLeftRunning(pid);
  assert.ok(!fs.existsSync(path.join(dir, 'image')));
  process.kill(pid, 'SIGUSR1');
  const text = await waitFor(out, /^(ok|FAIL.*)$/m);
  assert.doesNotMatch(text, /FAIL/);
});

test('an fd in flight (SCM_RIGHTS) is refused by name and stays in flight', async () => {
  const dir = tmpdir('unix-rights');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['rights'], out);
  await waitFor(out, /^ready$/m);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), /a queued message carries file descriptors \(SCM_RIGHTS\)/);
  assertLeftRunning(pid);
  process.kill(pid, 'SIGUSR1');
  const text = await waitFor(out, /^(ok|FAIL.*)$/m);
  assert.doesNotMatch(text, /FAIL/);
});

test('queued messages on a socket with SO_TIMESTAMP are refused by name and keep their arrival time', async () => {
  const dir = tmpdir('unix-stamped');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['stamped'], out);
  await waitFor(out, /^ready$/m);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), /1 queued message\(s\) on a socket with SO_TIMESTAMP\/SO_TIMESTAMPNS\/SO_TIMESTAMPING carry the time they arrived, which a restart cannot give them; not supported/);
  assertLeftRunning(pid);
  process.kill(pid, 'SIGUSR1');
  const text = await waitFor(out, /^(ok|FAIL.*)$/m);
  assert.doesNotMatch(text, /FAIL/);
});

test('a connection to a process outside the tree is refused by name unless --external, then handed in with --inherit-fd', async () => {
  const dir = tmpdir('unix-outside');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('unix_sockets'), ['serve', dir], out);
  await waitFor(out, /^listening$/m);
  const client = net.connect(path.join(dir, 'srv'));
  await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
  await waitFor(out, /^ready$/m);
  const accepted = listFds(pid).map((f) => /^socket:\[(\d+)\]$/.exec(f.target)?.[1]).filter((x) => x !== undefined);
  let err: Error | undefined;
  try {
    checkpointSync(pid, path.join(dir, 'image'));
  } catch (e) {
    err = e as Error;
  }
  const m = new RegExp(`unix socket socket:\\[(\\d+)\\] is connected to socket:\\[\\d+\\] of pid ${process.pid} outside the tree; pass --external (unix:\\[\\d+\\])`).exec(err?.message ?? '');
  assert.ok(m, err?.message);
  assert.ok(accepted.includes(m[1]));
  assertLeftRunning(pid);
  // Taken along, and at restart a socket of ours takes its place.
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true, external: [m[2]] });
  await waitGone(pid, procs);
  const pair = await socketPair();
  try {
    const r = restartVerified(img, { inheritFds: { [m[2]]: pair.theirs } });
    procs.addTree(r.pid);
    process.kill(r.pid, 'SIGUSR1');
    fs.writeSync(pair.ours, 'ping');
    await waitFor(out, /^got ping$/m);
    const b = Buffer.alloc(16);
    const n = fs.readSync(pair.ours, b);
    assert.equal(b.subarray(0, n).toString(), 'pong');
    const text = await waitFor(out, /^(ok|FAIL.*)$/m);
    assert.doesNotMatch(text, /FAIL/);
  } finally {
    fs.closeSync(pair.ours);
    fs.closeSync(pair.theirs);
    client.destroy();
  }
});

/** A connected pair of unix stream sockets in this process, as plain fds. */
async function socketPair(): Promise<{ ours: number; theirs: number }> {
  const { syscall } = await import('../src/sys/libc');
  const sv = Buffer.alloc(8);
  syscall(53, 'socketpair', 1, 1 | 0o2000000, 0, sv);
  return { ours: sv.readInt32LE(0), theirs: sv.readInt32LE(4) };
}

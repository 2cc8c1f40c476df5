// End to end: real programs are checkpointed (and killed), restarted from
// the image, and must carry on with their state intact.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, PROGRAMS, checkpointKillRestart as restartAfterKill, referenceRun as runToEnd, restartVerified } from './harness';
import { checkpointSync, loadImage } from '../src';
import type { Restarted } from '../src';
import { readStatus } from '../src/proc';

const procs = new Procs();
after(() => procs.cleanup());

/** Checkpoint with --kill and restart: it must come back under its own pid. */
async function checkpointKillRestart(pid: number, dir: string): Promise<Restarted> {
  const r = await restartAfterKill(procs, pid, dir);
  assert.equal(r.pid, pid, 'restored under its original pid, which is free again');
  return r;
}

const referenceRun = (file: string, args: string[], dir: string) => runToEnd(procs, file, args, dir);

test('memory of every kind survives and the computation goes on identically', async () => {
  const prog = build('memory');
  const dir = tmpdir('memory');
  const seed = crypto.randomBytes(64 * 1024);
  for (const name of ['data', 'shared', 'ref-data', 'ref-shared']) fs.writeFileSync(path.join(dir, name), seed);
  const reference = referenceRun(prog, ['400', 'ref-data', 'ref-shared'], dir);
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, ['400', 'data', 'shared'], out, { cwd: dir });
  await waitFor(out, /^i 100 /m);
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  const got = fs.readFileSync(out, 'utf8');
  assert.match(got, /^done /m);
  assert.equal(got, await reference);
});

/**
 * A program that prints "ready", is checkpointed, killed and restarted,
 * then checks its own state when SIGUSR1 arrives and exits 0.
 */
async function checkAfterRestart(name: string, expected: string): Promise<void> {
  const dir = tmpdir(name);
  const out = path.join(dir, 'out');
  const pid = procs.start(build(name), [], out);
  await waitFor(out, /^ready$/m);
  const r = await checkpointKillRestart(pid, dir);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), expected);
}

test('x87, zmm and opmask registers hold their values across restart', async () => {
  await checkAfterRestart('fpu', 'ready\nok\n');
});

test('a process polling read() on a file gets the data written after restart', async () => {
  const prog = build('blockers');
  const dir = tmpdir('read');
  const input = path.join(dir, 'input');
  fs.writeFileSync(input, '');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, ['read', input], out);
  await waitFor(out, /^ready$/m);
  fs.appendFileSync(input, 'before\n');
  await waitFor(out, /^before$/m);
  const r = await checkpointKillRestart(pid, dir);
  fs.appendFileSync(input, 'after\nEND\n');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nbefore\nafter\nEND\ndone\n');
});

test('a process inside nanosleep finishes its full sleep after restart', async () => {
  const prog = build('blockers');
  const dir = tmpdir('sleep');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, ['sleep', '1500'], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  assert.notEqual(loadImage(img).process.threads[0].inSyscall, null, 'it was stopped inside a system call');
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.add(r.pid);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nslept\n');
});

test('threads in clock_nanosleep, nanosleep, poll and a futex wait (restart_block calls) carry on after restart with no spurious EINTR', async () => {
  const prog = build('timed_waits');
  const dir = tmpdir('timed');
  const out = path.join(dir, 'out'), progress = path.join(dir, 'progress');
  const pid = procs.start(prog, [progress], out);
  await waitFor(out, /^ready$/m);
  const counts = (t: string) => t.trim().split(/\s+/).map(Number);
  await waitFor(progress, (t) => counts(t).length === 4 && counts(t).every((n) => n > 0));
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  // Each thread was stopped inside its call, which resumes through its restart_block.
  assert.equal(loadImage(img).process.threads.filter((t) => t.inSyscall !== null).length, 4);
  await waitGone(pid, procs);
  const before = counts(fs.readFileSync(progress, 'utf8'));
  procs.add(restartVerified(img).pid);
  await waitFor(progress, (t) => counts(t).every((n, i) => n >= before[i] + 2));
  assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/);
});

test('a process in pause() still waits after restart and wakes on a signal', async () => {
  const prog = build('blockers');
  const dir = tmpdir('pause');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, ['pause'], out);
  await waitFor(out, /^ready$/m);
  const r = await checkpointKillRestart(pid, dir);
  // Still asleep in pause(): state S and nothing printed.
  await waitFor(`/proc/${r.pid}/stat`, /\) S /);
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\n');
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nwoke\n');
});

test('handlers, masks and a blocked pending signal are restored and delivered', async () => {
  const prog = build('signals');
  const dir = tmpdir('signals');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  process.kill(pid, 'SIGUSR1');
  await waitFor(`/proc/${pid}/status`, /^ShdPnd:\s+0*200$/m);
  const r = await checkpointKillRestart(pid, dir);
  const st = readStatus(r.pid);
  assert.equal(st.shdPnd & (1n << 9n), 1n << 9n, 'SIGUSR1 pending after restart');
  assert.equal(st.sigBlk & (1n << 9n), 1n << 9n, 'SIGUSR1 blocked after restart');
  process.kill(r.pid, 'SIGUSR2');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\npending yes\nh1 ran signo=10 code=0 mask-ok flags-ok\n');
});

test('file offsets are preserved: the copy has no gap and no duplicate', async () => {
  const prog = build('files');
  const dir = tmpdir('files');
  const input = path.join(dir, 'in'), output = path.join(dir, 'copy');
  fs.writeFileSync(input, crypto.randomBytes(12000).toString('hex').slice(0, 12000));
  fs.writeFileSync(output, '');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [input, output], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  while (fs.statSync(output).size < 2000) await new Promise((res) => setTimeout(res, 5));
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\ndone\n');
  assert.ok(fs.readFileSync(output).equals(fs.readFileSync(input)), 'the copy equals the input');
});

test('a python3 computation restarts and finishes with the same result', async () => {
  const script = path.join(PROGRAMS, 'compute.py');
  const dir = tmpdir('python');
  // The interpreter itself, not a wrapper script (pyenv shims exec it).
  const real = execFileSync('python3', ['-c', 'import sys; print(sys.executable)']).toString().trim();
  const reference = referenceRun(real, [script, '300'], dir);
  const out = path.join(dir, 'out');
  const pid = procs.start(real, [script, '300'], out);
  await waitFor(out, /^i 80 /m);
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  const got = fs.readFileSync(out, 'utf8');
  assert.match(got, /^done [0-9a-f]{64}$/m);
  assert.equal(got, await reference);
});

test('checkpointing the same process twice gives two working images', async () => {
  const prog = build('counter');
  const dir = tmpdir('twice');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 2$/m);
  checkpointSync(pid, path.join(dir, 'one'));
  await waitFor(out, /^counter: 3$/m);
  checkpointSync(pid, path.join(dir, 'two'));
  // Left running, untraced, not stopped.
  await waitFor(out, /^counter: 4$/m);
  const st = readStatus(pid);
  assert.equal(st.tracerPid, 0);
  assert.match(st.state, /^[RS]/, 'running or sleeping, not stopped');
  process.kill(pid, 'SIGKILL');
  await waitGone(pid, procs);
  for (const [image, next] of [['one', 3], ['two', 4]] as const) {
    // Its stdout is in append mode: the emptied file shows from which
    // point it goes on.
    fs.truncateSync(out, 0);
    const r = restartVerified(path.join(dir, image));
    procs.add(r.pid);
    const text = await waitFor(out, new RegExp(`counter: ${next}\\ncounter: ${next + 1}\\n`));
    assert.ok(text.startsWith(`counter: ${next}\n`), text);
    process.kill(r.pid, 'SIGKILL');
    await r.wait();
  }
});

test('eventfds come back with their counters, semaphore mode and flags', async () => {
  await checkAfterRestart('eventfd', 'ready\neventfd ok\n');
});

test('signalfd and timerfds come back: the read waits for the signal, timers keep their time', async () => {
  await checkAfterRestart('waitfds', 'ready\nsignalfd ok\ntimerfd ok\nperiodic ok\n');
});

test('an epoll waiting on a pipe, an eventfd and a timerfd wakes for each after restart', async () => {
  const dir = tmpdir('epoll');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('epoll'), [], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  const ep = loadImage(img).process.fds.find((f) => f.kind === 'epoll')!;
  assert.deepEqual(ep.epoll!.map((t) => Number(BigInt(t.data))).sort(), [111, 222, 333]);
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.add(r.pid);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nepoll ok\n');
});

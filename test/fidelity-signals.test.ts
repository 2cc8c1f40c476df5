// Signals and timers come back exactly: queued signals with their siginfo,
// the signal a process is stopped by, POSIX timers with their ids and
// interval timers. Each program checks itself after restart; the test
// also reads the state from outside (/proc, and a second checkpoint of the
// restored process without --kill) and compares it field by field.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, tmpdir, checkpointKillRestart } from './harness';
import { checkpointSync, loadImage } from '../src';
import type { ImageProcess } from '../src';
import { readStat, readStatus, listThreads } from '../src/proc';
import { scanTree } from '../src/ptrace/freeze';

const procs = new Procs();
after(() => procs.cleanup());

/** Signal state of every thread as /proc shows it. SigQ's count is per user, not per process: its limit only. */
function procSignals(pid: number): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const tid of listThreads(pid)) {
    const text = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    const f = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(text)![1];
    out[tid] = { State: f('State'), SigPnd: f('SigPnd'), ShdPnd: f('ShdPnd'), SigBlk: f('SigBlk'), SigIgn: f('SigIgn'), SigCgt: f('SigCgt'), SigQlimit: f('SigQ').split('/')[1] };
  }
  return out;
}

/** What a checkpoint of the running process sees (it is left running). */
function snapshot(pid: number, dir: string, tag: string): ImageProcess[] {
  const img = path.join(dir, `image-${tag}`);
  checkpointSync(pid, img);
  return loadImage(img).processes;
}

async function start(name: string, args: string[] = []): Promise<{ pid: number; out: string; dir: string }> {
  const dir = tmpdir(name);
  const out = path.join(dir, 'out');
  const pid = procs.start(build(name), args, out);
  await waitFor(out, /^ready$/m);
  return { pid, out, dir };
}

async function exitOf(pid: number): Promise<number> {
  // The restored root is our child (restartSync makes it so): reap it.
  for (;;) {
    if (procs.reap(pid)) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  return 0;
}

test('queued signals, several of one real-time signal, come back in order with their siginfo, per thread and process-wide', async () => {
  const { pid, out, dir } = await start('fid_rtsignals');
  const before = procSignals(pid);
  assert.equal(Object.keys(before).length, 2);
  const image = snapshot(pid, dir, 'before')[0];
  assert.equal(image.sharedPending.length, 8, 'eight signals queued process-wide');
  assert.deepEqual(image.threads.map((t) => t.signals.pending.length), [3, 3]);
  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);
  assert.deepEqual(procSignals(pid), before);
  const again = snapshot(pid, dir, 'after')[0];
  assert.deepEqual(again.sharedPending, image.sharedPending, 'every process-wide siginfo, byte for byte, in order');
  assert.deepEqual(again.threads.map((t) => t.signals), image.threads.map((t) => t.signals), 'per thread: mask, queue, altstack');
  process.kill(pid, 'SIGUSR2');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nmain ok 11\nthread ok 3\n');
});

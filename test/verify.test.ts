// restart --verify: a rebuilt tree is read back with the checkpoint's own
// code before it runs. A tampered field fails the restart by name with
// nothing left running; an untampered restart (even under a new pid) passes
// and leaves no trace of the read-back in the process.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir, cli, restartVerified } from './harness';
import { checkpointSync, loadImage, restartSync } from '../src';
import { readStatus, readMaps, listThreads } from '../src/proc';

const procs = new Procs();
after(() => procs.cleanup());

/** Every pid and tid of the image: none may exist once a restart failed (zombies only until reaped). */
function imageIds(img: string): number[] {
  const l = loadImage(img);
  return [...l.processes.flatMap((p) => p.threads.map((t) => t.tid)), ...l.zombies.map((z) => z.pid)];
}

function running(pid: number): boolean {
  try {
    return readStatus(pid).state !== 'Z';
  } catch {
    return false;
  }
}

async function allGone(ids: number[]): Promise<void> {
  for (const id of ids) await waitGone(id, procs);
}

/** Run `fn` with STASIS_TEST_TAMPER set, in this test process only. */
function tampering<T>(field: string, fn: () => T): T {
  process.env.STASIS_TEST_TAMPER = field;
  try {
    return fn();
  } finally {
    delete process.env.STASIS_TEST_TAMPER;
  }
}

async function checkpointed(name: string, ready: RegExp, dir: string, kill = true): Promise<{ pid: number; img: string; out: string }> {
  const out = path.join(dir, 'out');
  const pid = procs.start(build(name), [], out);
  await waitFor(out, ready);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill });
  if (kill) await waitGone(pid, procs);
  return { pid, img, out };
}

test('stasis restart --verify fails naming a tampered umask, and nothing of the tree is left', async () => {
  const dir = tmpdir('verify-umask');
  const { pid, img } = await checkpointed('counter', /^counter: 2$/m, dir);
  const umask = loadImage(img).process.umask;
  process.env.STASIS_TEST_TAMPER = 'umask';
  let r;
  try {
    r = await cli(['restart', '--verify', img]);
  } finally {
    delete process.env.STASIS_TEST_TAMPER;
  }
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`^stasis: restart failed, nothing left running: verify: pid ${pid}: umask: image ${umask}, restored \\d+\\n$`));
  // The restored process was the command's child, killed and reaped before it exited.
  assert.equal(fs.existsSync(`/proc/${pid}`), false, `pid ${pid} is gone`);
});

test('a tampered blocked mask of one thread fails the restart by its field path; every thread is gone', async () => {
  const dir = tmpdir('verify-blocked');
  const { pid, img } = await checkpointed('threads', /^ready$/m, dir);
  const image = loadImage(img).process;
  const last = image.threads.length - 1;
  assert.ok(last > 0, 'a threaded image');
  assert.throws(() => tampering('blocked', () => restartSync(img, { verify: true })),
    new RegExp(`^StasisError: restart failed, nothing left running: verify: pid ${pid}: threads\\[${last}\\]\\.signals\\.blocked: image ${image.threads[last].signals.blocked}, restored 0x[0-9a-f]+$`));
  for (const id of imageIds(img)) assert.equal(fs.existsSync(`/proc/${id}`), false, `task ${id} is gone`);
});

test('a tampered tree with zombies fails as a whole: no process of the image keeps running', async () => {
  const dir = tmpdir('verify-tree');
  const { pid, img } = await checkpointed('tree', /^ready$/m, dir);
  assert.equal(loadImage(img).zombies.length, 2);
  assert.throws(() => tampering('umask', () => restartSync(img, { verify: true })), new RegExp(`verify: pid ${pid}: umask: `));
  const ids = imageIds(img);
  for (const id of ids) assert.equal(running(id), false, `pid ${id} is not running`);
  // Zombies made on purpose were orphaned by the kill: they go once reaped.
  await allGone(ids);
});

test('the tamper hook does nothing without --verify: the process comes back with its own umask', async () => {
  const dir = tmpdir('verify-off');
  const { img } = await checkpointed('counter', /^counter: 2$/m, dir);
  const r = tampering('umask', () => restartSync(img));
  procs.add(r.pid);
  assert.equal(readStatus(r.pid).umask, loadImage(img).process.umask);
  process.kill(r.pid, 'SIGKILL');
  await r.wait();
});

test('a verified restart under a new pid (original still running) passes, and leaves no stasis mapping behind', async () => {
  const dir = tmpdir('verify-clone');
  const { pid, img, out } = await checkpointed('counter', /^counter: 2$/m, dir, false);
  const r = restartVerified(img);
  procs.add(r.pid);
  assert.notEqual(r.pid, pid, 'the original holds its pid: restored under a new one');
  assert.equal(r.movedFrom, pid, 'the result says so');
  const want = loadImage(img).process.vmas.map((v) => `${v.start.toString(16)}-${v.end.toString(16)} ${v.prot}`);
  const got = readMaps(r.pid).map((v) => `${v.start.toString(16)}-${v.end.toString(16)} ${v.prot.read ? 'r' : '-'}${v.prot.write ? 'w' : '-'}${v.prot.exec ? 'x' : '-'}`);
  assert.deepEqual(got, want);
  assert.deepEqual(listThreads(r.pid), [r.pid]);
  // The clone counts on from where the image stopped, as the original did: some count is printed by both.
  const twice = (t: string) => {
    const seen = new Set<string>();
    return t.split('\n').some((l) => l.startsWith('counter: ') && (seen.has(l) || !seen.add(l)));
  };
  assert.ok(twice(await waitFor(out, twice)), 'both the original and the clone count on from the same value');
  process.kill(r.pid, 'SIGKILL');
  await r.wait();
});

test('an unknown tamper field is refused by name, and nothing is left', async () => {
  const dir = tmpdir('verify-unknown');
  const { pid, img } = await checkpointed('counter', /^counter: 2$/m, dir);
  assert.throws(() => tampering('nonsense', () => restartSync(img, { verify: true })), /STASIS_TEST_TAMPER=nonsense: not a known field \(umask, blocked\)/);
  assert.equal(fs.existsSync(`/proc/${pid}`), false);
});

test('memory moved next to its neighbour with mremap (split only by its page offset) restarts verified and intact', async () => {
  const dir = tmpdir('verify-mremap');
  const { pid, img, out } = await checkpointed('remapped', /^ready$/m, dir, false);
  // Two VMAs where one mmap would make one: the case --verify compares merged.
  const vmas = loadImage(img).process.vmas;
  assert.ok(vmas.some((v, i) => i > 0 && v.kind === 'anon' && vmas[i - 1].kind === 'anon' && vmas[i - 1].end === v.start && v.prot === vmas[i - 1].prot && v.offset !== v.start),
    'the moved block sits right after its neighbour');
  process.kill(pid, 'SIGKILL');
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.add(r.pid);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
});

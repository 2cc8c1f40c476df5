// Deleted files held open or mapped (ghost files): their contents travel in
// the image and they come back open, mapped and still deleted, one file
// however many fds and mappings of the tree hold it; POSIX semaphores and
// shared memory (deleted /dev/shm files) with them; Python multiprocessing
// (a shared Array, a Lock and a Queue over fork) finishes with the result of
// an uninterrupted run. What is not restored is refused by name with the
// target left running.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, PROGRAMS, restartVerified, referenceRun, assertLeftRunning, cli } from './harness';
import { checkpointSync, loadImage } from '../src';
import { scanTree } from '../src/ptrace/freeze';

const procs = new Procs();
/** Named semaphores ghost.c leaves linked until its end: removed if a test ends it first. */
const named: string[] = [];
after(() => {
  procs.cleanup();
  for (const f of named) fs.rmSync(f, { force: true });
});

test('deleted files held open and mapped, POSIX semaphores and shared memory come back deleted, with their contents, one file for parent and child; a named semaphore is mapped by its name', async () => {
  const prog = build('ghost');
  const dir = tmpdir('ghost');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [dir], out);
  named.push(`/dev/shm/sem.stasis-ghost-${pid}-named`);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  const ghosts = loadImage(img).objects.ghosts ?? [];
  // ghost.dat, offset.dat, three semaphores, the shm: each once, for both processes.
  assert.equal(ghosts.length, 6, ghosts.map((g) => g.path).join(' '));
  const dat = ghosts.find((g) => g.path === path.join(dir, 'ghost.dat'))!;
  assert.equal(dat.size, 1 << 20);
  assert.deepEqual(dat.segments.map((s) => s.offset), [0, 512 * 1024], 'the hole is not saved');
  assert.equal(dat.mode, 0o640);
  assert.equal(ghosts.filter((g) => /^\/dev\/shm\/sem\./.test(g.path)).length, 3);
  // The semaphore left linked is no deleted file: mapped by its name.
  const linked = `/dev/shm/sem.stasis-ghost-${pid}-named`;
  assert.ok(loadImage(img).process.vmas.some((v) => v.kind === 'file' && v.shared && v.file!.path === linked));
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['image', 'out'], 'nothing left in the directory: the files are deleted again');
  const maps = fs.readFileSync(`/proc/${r.pid}/maps`, 'utf8');
  assert.match(maps, new RegExp(`${dir}/ghost\\.dat \\(deleted\\)`));
  assert.equal(maps.match(/\/dev\/shm\/sem\.\S+ \(deleted\)/g)?.length, 3);
  assert.ok(maps.includes(`${linked}\n`), 'the named semaphore mapped by its name');
  const child = scanTree(r.pid).find((p) => p.pid !== r.pid)!.pid;
  // One file for both processes: the same inode behind the parent's fd and the child's mapping.
  const ino = fs.statSync(`/proc/${r.pid}/fd/3`).ino;
  const line = fs.readFileSync(`/proc/${child}/maps`, 'utf8').split('\n').find((l) => l.includes('ghost.dat') && / rw-s /.test(l))!;
  assert.equal(Number(line.split(/\s+/)[4]), ino);
  assert.equal(fs.statSync(`/proc/${r.pid}/fd/3`).nlink, 0);
  const restored = fs.statSync(`/proc/${r.pid}/fd/3`, { bigint: true });
  assert.equal(restored.mtimeNs.toString(), dat.mtimeNs, 'its modification time');
  assert.equal(restored.mode & 0o7777n, 0o640n);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nchild ok\nok\n');
  assert.ok(!fs.existsSync(linked), 'removed by the program at its end');
});

test('a deleted file larger than the ghost limit is refused by name, naming --ghost-limit; the target keeps running; a raised limit takes it', async () => {
  const prog = build('ghost');
  const dir = tmpdir('ghost-limit');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [dir], out);
  named.push(`/dev/shm/sem.stasis-ghost-${pid}-named`);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  assert.throws(() => checkpointSync(pid, img, { ghostLimit: 4096 }),
    /deleted file .*ghost\.dat: holds 8192 bytes of data, more than the ghost file limit of 4096 bytes; raise it with --ghost-limit SIZE/);
  assert.equal(fs.existsSync(img), false);
  assertLeftRunning(scanTree(pid).map((p) => p.pid));
  const ck = await cli(['checkpoint', String(pid), '-o', img, '--ghost-limit', '4k']);
  assert.equal(ck.code, 1);
  assert.match(ck.stderr, /^stasis: fd 3 of pid \d+: deleted file .*ghost\.dat: holds 8192 bytes of data, more than the ghost file limit of 4096 bytes; raise it with --ghost-limit SIZE \(at most \d+\), or keep the file linked\n$/);
  assertLeftRunning(scanTree(pid).map((p) => p.pid));
  const ok = await cli(['checkpoint', String(pid), '-o', img, '--ghost-limit', '8K']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(loadImage(img).objects.ghosts?.length, 6);
  assertLeftRunning(scanTree(pid).map((p) => p.pid));
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^ok$/m);
});

test('a deleted file still linked elsewhere, or also held outside the tree, is refused by name; the target keeps running', async () => {
  const dir = tmpdir('ghost-refused');
  const file = path.join(dir, 'held');
  fs.writeFileSync(file, 'x');
  fs.linkSync(file, path.join(dir, 'other-name'));
  const out = path.join(dir, 'out');
  // A shell holding the file on fd 3, its name removed, another name left.
  const pid = procs.start('/bin/sh', ['-c', `exec 3<"$0"; rm "$0"; echo ready; exec sleep 1000`, file], out);
  await waitFor(out, /^ready$/m);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), /fd 3 of pid \d+: deleted file .*\/held: its name was removed but it still has 1 other link\(s\) elsewhere/);
  assertLeftRunning(pid);
  fs.rmSync(path.join(dir, 'other-name'));
  // Now deleted for good, but this process holds it too (through /proc/PID/fd).
  const mine = fs.openSync(`/proc/${pid}/fd/3`, 'r');
  try {
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`deleted file .*/held is also held by fd ${mine} of pid ${process.pid} outside the tree`));
    assertLeftRunning(pid);
  } finally {
    fs.closeSync(mine);
  }
  assert.equal(fs.existsSync(path.join(dir, 'image')), false);
});

for (const method of ['fork', 'spawn']) {
  test(`Python multiprocessing (${method}: shared Array, Lock, Queue${method === 'spawn' ? ', resource tracker, semaphores left linked' : ''}) finishes with the result of an uninterrupted run`, () => pythonMultiprocessing(method));
}

async function pythonMultiprocessing(method: string): Promise<void> {
  const script = path.join(PROGRAMS, 'mp_ghosts.py');
  const dir = tmpdir('mp');
  // The interpreter itself, not a wrapper script (pyenv shims exec it).
  const python = execFileSync('python3', ['-c', 'import sys; print(sys.executable)']).toString().trim();
  // The uninterrupted run uses fork: the result may not depend on the start method either.
  const reference = referenceRun(procs, python, [script, path.join(dir, 'ref-progress'), '40'], dir);
  const out = path.join(dir, 'out');
  const progress = path.join(dir, 'progress');
  const pid = procs.start(python, [script, progress, '40', method], out);
  // Mid-way: some rounds done by every worker, most still to come.
  await waitFor(progress, (t) => /^round 4$/m.test(t));
  const img = path.join(dir, 'image');
  const tree = scanTree(pid).map((p) => p.pid);
  assert.ok(tree.length >= 3, `parent and workers: ${tree.join(' ')}`);
  checkpointSync(pid, img, { kill: true });
  const before = fs.readFileSync(progress, 'utf8');
  assert.doesNotMatch(before, /^round 40$/m, 'checkpointed mid-way');
  const image = loadImage(img);
  const sems = (image.objects.ghosts ?? []).filter((g) => /^\/dev\/shm\/sem\./.test(g.path));
  // With fork the Lock is unlinked at once: a deleted file; with spawn it keeps its name: a file mapping.
  if (method === 'fork') assert.ok(sems.length > 0, 'the Lock is a deleted /dev/shm semaphore');
  else assert.ok(image.process.vmas.some((v) => v.kind === 'file' && /^\/dev\/shm\/sem\.mp-/.test(v.file!.path)), 'the Lock is a named semaphore');
  assert.ok((image.objects.ghosts ?? []).some((g) => /^\/dev\/shm\/pym-/.test(g.path)), "the Array's heap is a deleted /dev/shm file");
  assert.ok(image.processes.some((p) => p.threads.length > 1), "the Queue's feeder thread");
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  const got = fs.readFileSync(out, 'utf8');
  assert.match(got, /^result [0-9a-f]{64}$/m);
  assert.equal(got, await reference);
  assert.match(fs.readFileSync(progress, 'utf8'), /^round 40\n$/m, 'the rounds went on after the restart');
}

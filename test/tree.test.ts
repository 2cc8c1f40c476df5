// End to end: whole process trees and multi-threaded processes, restored
// with their original pids.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, CLI, PROGRAMS, checkpointKillRestart as restartAfterKill, referenceRun as runToEnd, restartVerified, assertLeftRunning } from './harness';
import { checkpointSync, loadImage } from '../src';
import type { RestartOptions } from '../src';
import { readStat, readStatus, listChildren, listThreads } from '../src/proc';
import { scanTree } from '../src/ptrace/freeze';
import { waitpidAsync, syscall } from '../src/sys/libc';

const procs = new Procs();
const KCMP = 312, KCMP_FILE = 0;
after(() => procs.cleanup());

interface PsFacts { pid: number; ppid: number; pgid: number; sid: number; state: string }

/** What `ps -o pid,ppid,pgid,sid,stat` would say of every process of a tree. */
function psFacts(root: number): PsFacts[] {
  return scanTree(root).map(({ pid }) => {
    const st = readStat(pid);
    return { pid, ppid: pid === root ? 0 : st.ppid, pgid: st.pgrp, sid: st.session, state: st.state === 'Z' ? 'Z' : 'live' };
  }).sort((a, b) => a.pid - b.pid);
}

const checkpointKillRestart = (pid: number, dir: string, opts: RestartOptions = {}) => restartAfterKill(procs, pid, dir, opts);
const referenceRun = (file: string, args: string[], dir: string) => runToEnd(procs, file, args, dir);

test('a shell pipeline with data in flight in both pipes produces identical output', async () => {
  const producer = build('producer'), consumer = build('consumer');
  const dir = tmpdir('pipeline');
  const script = `"${producer}" 20000 | tr a-z A-Z | "${consumer}" > "$0"`;
  const reference = path.join(dir, 'reference');
  const refPid = procs.start('/bin/bash', ['-c', script, reference], path.join(dir, 'ref.log'));
  const data = path.join(dir, 'data');
  const pid = procs.start('/bin/bash', ['-c', script, data], path.join(dir, 'log'));
  while (fs.existsSync(data) ? fs.statSync(data).size < 100000 : true) await new Promise((r) => setTimeout(r, 5));
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  const image = loadImage(img);
  assert.equal(image.pipes.length, 2, 'two pipes');
  assert.ok(image.pipes.every((p) => Buffer.from(p.data, 'base64').length > 0), 'both pipes held data in flight');
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal((await waitpidAsync(refPid, 0)).status, 0);
  const got = fs.readFileSync(data);
  assert.equal(got.length, fs.readFileSync(reference).length);
  assert.ok(got.equals(fs.readFileSync(reference)), 'byte-identical to an uninterrupted run');
});

test('a tree of 8 processes in 3 groups and 2 sessions with 2 zombies comes back identical', async () => {
  const prog = build('tree');
  const dir = tmpdir('tree');
  const reference = referenceRun(prog, [], dir);
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const before = psFacts(pid);
  assert.equal(before.length, 8);
  assert.equal(before.filter((p) => p.state === 'Z').length, 2);
  assert.equal(new Set(before.map((p) => p.pgid)).size, 3);
  assert.equal(new Set(before.map((p) => p.sid)).size, 2);
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(psFacts(r.pid), before);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), await reference);
});

test('8 pthreads (counting, in a condvar, on a mutex, in nanosleep) resume and join', async () => {
  const prog = build('threads');
  const dir = tmpdir('threads');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const threads = listThreads(pid);
  assert.equal(threads.length, 9);
  const names = threads.map((t) => fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8'));
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(listThreads(r.pid), threads, 'same tids');
  assert.deepEqual(listThreads(r.pid).map((t) => fs.readFileSync(`/proc/${r.pid}/task/${t}/comm`, 'utf8')), names);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  const text = fs.readFileSync(out, 'utf8');
  assert.match(text, /^total 2500$/m);
  assert.match(text, /^joined 8$/m);
  assert.match(text, /^done$/m);
  assert.doesNotMatch(text, /FAIL/);
});

test('a python program with threading finishes with the right result', async () => {
  const script = path.join(PROGRAMS, 'pythreads.py');
  const python = execFileSync('python3', ['-c', 'import sys; print(sys.executable)']).toString().trim();
  const dir = tmpdir('pythreads');
  const reference = referenceRun(python, [script, '300'], dir);
  const out = path.join(dir, 'out');
  const pid = procs.start(python, [script, '300'], out);
  await waitFor(out, /^ready$/m);
  await new Promise((res) => setTimeout(res, 200)); // let the threads get going: any point is fine
  assert.ok(listThreads(pid).length >= 5);
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), await reference);
});

test('shared anonymous memory between parent and child stays shared', async () => {
  const prog = build('shmem');
  const dir = tmpdir('shmem');
  const reference = referenceRun(prog, [], dir);
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ping 100$/m);
  const r = await checkpointKillRestart(pid, dir);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), await reference);
});

test('original pids: refused by name when taken, restored in a new pid namespace', async () => {
  const prog = build('threads');
  const dir = tmpdir('pidns');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img); // the original keeps running: its pids are taken
  const children = listChildren(process.pid);
  assert.throws(() => restartVerified(img), new RegExp(`pid ${pid} is in use \\(by threads\\)`));
  assert.deepEqual(listChildren(process.pid), children, 'nothing left behind');
  const r = restartVerified(img, { pidNs: true });
  procs.addTree(r.pid);
  const ns = readStatus(r.pid).nsPid;
  assert.equal(ns[ns.length - 1], pid, 'the same pid inside the namespace');
  assert.notEqual(r.pid, pid);
  process.kill(r.pid, 'SIGKILL');
  await r.wait();
});

test('a failure in the middle of a tree checkpoint leaves every task running, untraced', async () => {
  const prog = build('tree_unsupported');
  const dir = tmpdir('treefail');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const tree = scanTree(pid).map((p) => p.pid);
  assert.equal(tree.length, 4);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), /fd \d+ of pid \d+: netlink socket, route \(NETLINK_ROUTE\), is not supported yet/);
  assert.equal(fs.existsSync(path.join(dir, 'image')), false);
  assertLeftRunning(tree);
  // Every process keeps counting.
  const count = (text: string) => (text.match(/^alive /gm) ?? []).length;
  const seen = count(fs.readFileSync(out, 'utf8'));
  await waitFor(out, (t) => count(t) >= seen + 4);
});

test('a fork racing with the freeze is caught: the tree checkpoints and restarts', async () => {
  const prog = build('forker');
  const dir = tmpdir('forker');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  const res = checkpointSync(pid, img, { kill: true });
  assert.ok(res.processes >= 2, 'children were taken along');
  await waitGone(pid, procs);
  const image = loadImage(img);
  assert.deepEqual(image.processes.slice(1).map((p) => p.ppid).filter((pp) => pp !== pid), []);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.equal(r.pid, pid);
  // It goes on forking and reaping.
  await waitFor(`/proc/${r.pid}/stat`, /\) [RS] /);
  process.kill(r.pid, 'SIGKILL');
  await r.wait();
});

test('a pipe to a process outside the tree: refused, or taken with --external and handed back with --inherit-fd', async () => {
  const prog = build('counter');
  const dir = tmpdir('external');
  const ends = Buffer.alloc(8);
  syscall(293 /* pipe2 */, 'pipe2', ends, 0o2000000 | 0o4000 /* O_CLOEXEC | O_NONBLOCK */);
  const [r, w] = [ends.readInt32LE(0), ends.readInt32LE(4)];
  const received: string[] = [];
  const drain = () => {
    const b = Buffer.alloc(4096);
    for (;;) {
      try {
        const n = fs.readSync(r, b, 0, b.length, null);
        if (n === 0) break;
        received.push(b.subarray(0, n).toString());
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
        throw e;
      }
    }
    return received.join('');
  };
  const until = async (re: RegExp) => {
    for (let i = 0; i < 4000 && !re.test(drain()); i++) await new Promise((res) => setTimeout(res, 5));
    assert.match(drain(), re);
  };
  try {
    const pid = procs.start(prog, [], path.join(dir, 'unused'), { stdout: w });
    fs.closeSync(w);
    await until(/counter: 2\n/);
    const name = `pipe:[${fs.fstatSync(r).ino}]`;
    const img = path.join(dir, 'image');
    assert.throws(() => checkpointSync(pid, img), new RegExp(`fd 1 of pid ${pid}: ${name.replace(/[[\]]/g, '\\$&')} is shared with pid ${process.pid} outside the tree; pass --external`));
    checkpointSync(pid, img, { kill: true, external: [name] });
    await waitGone(pid, procs);
    const seen = drain().trim().split('\n').length;
    assert.throws(() => restartVerified(img), /was connected outside the tree at checkpoint time: pass --inherit-fd/);
    const back = restartVerified(img, { inheritFds: { [name]: r } });
    procs.add(back.pid);
    await until(new RegExp(`counter: ${seen + 2}\n`));
    assert.deepEqual(drain().trim().split('\n').map((l) => Number(l.split(' ')[1])).slice(0, seen + 2), Array.from({ length: seen + 2 }, (_, i) => i + 1));
  } finally {
    fs.closeSync(r);
  }
});

test('memory still shared copy-on-write after fork is saved once and restored in both', async () => {
  const prog = build('cow');
  const dir = tmpdir('cow');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  const res = checkpointSync(pid, img, { kill: true });
  // 16 MiB in the parent, the child's own 1 MiB, a little of everything else.
  assert.ok(res.pageBytes < 20 << 20, `saved ${res.pageBytes} bytes, not twice 16 MiB`);
  const child = loadImage(img).processes[1];
  assert.ok(child.vmas.some((v) => v.inherited?.some((g) => g.from === pid)), 'the child lists pages inherited from its parent');
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nparent ok\nchild ok\ndone\n');
});

test('a sealed memfd mapped by parent and child and held as an fd comes back as one file', async () => {
  const prog = build('shmem');
  const dir = tmpdir('memfd');
  const reference = referenceRun(prog, ['memfd'], dir);
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, ['memfd'], out);
  await waitFor(out, /^ping 100$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  assert.equal(loadImage(img).memfds.length, 1);
  await waitGone(pid, procs);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.match(fs.readFileSync(`/proc/${r.pid}/maps`, 'utf8'), /\/memfd:stasis-pingpong \(deleted\)/);
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  const got = fs.readFileSync(out, 'utf8');
  assert.match(got, /^memfd ok$/m);
  assert.equal(got, await reference);
});

test('a stopped process stays stopped through checkpoint and restart, and continues on SIGCONT', async () => {
  const prog = build('counter');
  const dir = tmpdir('stopped');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 2$/m);
  process.kill(pid, 'SIGSTOP');
  await waitFor(`/proc/${pid}/stat`, /\) T /);
  const img = path.join(dir, 'image');
  const printed = fs.readFileSync(out, 'utf8');
  checkpointSync(pid, img);
  // Detached with a SIGSTOP: it is back in its stop before running any code.
  await waitFor(`/proc/${pid}/stat`, /\) T /);
  assert.equal(fs.readFileSync(out, 'utf8'), printed, 'it did not run');
  assert.equal(loadImage(img).process.stopped, true);
  const r = await checkpointKillRestart(pid, dir);
  await waitFor(`/proc/${r.pid}/stat`, /\) T /);
  const before = fs.readFileSync(out, 'utf8');
  process.kill(r.pid, 'SIGCONT');
  const seen = before.trim().split('\n').length;
  await waitFor(out, new RegExp(`^counter: ${seen + 1}$`, 'm'));
});

test('tasks left frozen by a killed stasis are thawed by the next checkpoint', async () => {
  const prog = build('counter');
  const dir = tmpdir('stale');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 1$/m);
  // What a stasis killed mid-checkpoint leaves: its freezer cgroup, frozen.
  const stale = `/sys/fs/cgroup/freezer/stasis-999999999-1`;
  fs.mkdirSync(stale);
  try {
    fs.writeFileSync(`${stale}/cgroup.procs`, String(pid));
    fs.writeFileSync(`${stale}/freezer.state`, 'FROZEN');
    await waitFor(`${stale}/freezer.state`, /FROZEN/);
    const other = procs.start(prog, [], path.join(dir, 'other'));
    await waitFor(path.join(dir, 'other'), /^counter: 1$/m);
    checkpointSync(other, path.join(dir, 'image'));
    assert.equal(fs.existsSync(stale), false, 'the stale cgroup is gone');
    assert.doesNotMatch(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8'), /freezer:\/stasis/);
    const seen = fs.readFileSync(out, 'utf8').trim().split('\n').length;
    await waitFor(out, new RegExp(`^counter: ${seen + 1}$`, 'm'));
  } finally {
    if (fs.existsSync(stale)) {
      fs.writeFileSync(`${stale}/freezer.state`, 'THAWED');
      try { fs.writeFileSync('/sys/fs/cgroup/freezer/cgroup.procs', String(pid)); } catch { /* gone */ }
      fs.rmdirSync(stale);
    }
  }
});

test('a process in a group led from outside the tree is refused by name, and the tree goes on', async () => {
  const prog = build('orphan_group');
  const dir = tmpdir('foreign');
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const tree = scanTree(pid);
  const b = tree.find((p) => p.pid !== pid)!.pid;
  const group = readStat(b).pgrp;
  // The group's other member left the tree when its parent exited: ours to end too.
  for (const d of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const st = readStat(Number(d));
      if (st.pgrp === group && st.comm === 'orphan_group' && Number(d) !== b) procs.add(Number(d));
    } catch { /* gone */ }
  }
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`pid ${b}: its process group ${group} is led by a process outside the tree`));
  for (const p of tree) assert.equal(readStatus(p.pid).tracerPid, 0);
  assert.match(readStat(pid).state, /^[RS]$/);
});

test("a child sharing its parent's fds shares them again, the last fd the restarter's RLIMIT_NOFILE allows among them", async () => {
  const dir = tmpdir('shared-fds');
  const out = path.join(dir, 'out');
  // fd 63, stdout and stderr: one open file description each in the shell
  // and its child (dash takes only fds 0-9), which may have fds 0-63
  // (prlimit execs bash).
  const pid = procs.start('/usr/bin/prlimit', ['--nofile=64:64', '--', '/bin/bash', '-c', 'exec 63</dev/null; sleep 1000 & echo ready; wait'], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const child = loadImage(img).processes[1];
  assert.equal(child.fds.find((f) => f.fd === 63)?.sharedWith?.pid, pid);
  // A restarter allowed fds 0-63: fd 63 is taken from the parent at its own number.
  const r = spawnSync('prlimit', ['--nofile=64:64', '--', process.execPath, CLI, 'restart', '-d', '--verify', img], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  procs.addTree(Number(r.stdout.trim()));
  // (The background job's stdin is its own /dev/null.)
  for (const fd of [1, 2, 63]) {
    assert.equal(syscall(KCMP, 'kcmp', pid, child.pid, KCMP_FILE, fd, fd), 0, `fd ${fd}: one open file in parent and child`);
  }
  assert.equal(fs.readlinkSync(`/proc/${child.pid}/fd/63`), '/dev/null');
});

test('a restart failing half way through a tree leaves no process behind', async () => {
  const prog = build('shmem');
  const dir = tmpdir('halfway');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  const pid = procs.start(prog, [], out, { cwd });
  await waitFor(out, /^ping 50$/m);
  const pids = scanTree(pid).map((p) => p.pid);
  assert.equal(pids.length, 2);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  for (const p of pids) await waitGone(p, procs);
  // Only found once the processes exist: their working directory is gone.
  fs.rmSync(cwd, { recursive: true });
  const children = listChildren(process.pid);
  assert.throws(() => restartVerified(img), /restart failed, nothing left running: chdir in pid \d+ failed \(cwd .*\): ENOENT/);
  assert.deepEqual(listChildren(process.pid), children);
  // Killed: those that were not our children are reaped by init, soon.
  for (const p of pids) {
    assert.ok(!fs.existsSync(`/proc/${p}`) || readStat(p).state === 'Z', `pid ${p} is not left running`);
    await waitGone(p, procs);
  }
});

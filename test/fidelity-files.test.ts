// Fidelity of file-level state: file locks (flock, POSIX, OFD), the
// signal-driven I/O owner of open files, and what processes share (fd
// tables, fs info, semaphore undo lists). Each program sets its state and
// checks it itself after restart; the test also reads the state from
// outside (/proc/locks, fdinfo, F_GETLK from this process) before and
// after and compares field by field. What is not restored is refused by
// name with the target left running, untraced and unfrozen.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, checkpointKillRestart, restartVerified, assertLeftRunning, untilTrue } from './harness';
import { checkpointSync, restartSync } from '../src';
import type { Restarted } from '../src';
import { readStatus, listFds, readFdinfo, listChildren } from '../src/proc';
import { parseLockLine } from '../src/kinds/locks';
import { syscall } from '../src/sys/libc';
import { SYS } from '../src/sys/x86';

const procs = new Procs();
after(() => procs.cleanup());

/** /proc/locks lines on the files of `dir`, without the volatile line numbers, sorted. */
function locksOn(dir: string): string[] {
  const inodes = new Set(fs.readdirSync(dir).map((f) => fs.statSync(path.join(dir, f)).ino));
  return fs.readFileSync('/proc/locks', 'utf8').split('\n').map(parseLockLine)
    .filter((l) => l !== null && inodes.has(Number(l.inode.split(':')[2])))
    .map((l) => `${l!.waiter ? '-> ' : ''}${l!.kind} ${l!.mode} ${l!.type} pid=${l!.pid} ${l!.inode} ${l!.start}-${l!.end ?? 'EOF'}`)
    .sort();
}

/** Every fd of a process with its fdinfo flags and lock lines (line numbers dropped). */
function fdFacts(pid: number): string[] {
  return listFds(pid).map(({ fd, target }) => {
    const info = readFdinfo(pid, fd);
    const locks = info.lines.filter((l) => l.startsWith('lock:')).map((l) => l.replace(/^lock:\s*\d+:\s*/, ''));
    return `${fd} ${target} flags=${info.flags.toString(8)} pos=${info.pos} ${locks.join(' | ')}`;
  });
}

/** What F_GETLK says, from this process (outside the tree), of a write lock request on one byte. */
function getlk(file: string, at: number): { type: number; pid: number; start: number; len: number } {
  const fd = fs.openSync(file, 'r+');
  try {
    const fl = Buffer.alloc(32);
    fl.writeInt16LE(1, 0); // F_WRLCK
    fl.writeBigInt64LE(BigInt(at), 8);
    fl.writeBigInt64LE(1n, 16);
    syscall(SYS.fcntl, 'fcntl(F_GETLK)', fd, 5, fl);
    return { type: fl.readInt16LE(0), pid: fl.readInt32LE(24), start: Number(fl.readBigInt64LE(8)), len: Number(fl.readBigInt64LE(16)) };
  } finally {
    fs.closeSync(fd);
  }
}

test('flock, POSIX and OFD locks come back with their ranges, types and owners; a blocked F_SETLKW waits again', async () => {
  const dir = tmpdir('fid-locks');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_locks'), [], out, { cwd });
  await waitFor(out, /^ready$/m);
  const child = Number(fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim());
  // The child is in F_SETLKW once the kernel lists it as a waiter.
  await untilTrue('the child to wait for the lock', () => locksOn(cwd).some((l) => l.startsWith(`-> POSIX ADVISORY WRITE pid=${child} `)));
  await untilTrue('the child to take its flock', () => locksOn(cwd).some((l) => l.startsWith(`FLOCK ADVISORY WRITE pid=${child} `)));
  const before = locksOn(cwd);
  assert.equal(before.filter((l) => !l.startsWith('->')).length, 7, before.join('\n'));
  const factsBefore = fdFacts(pid);
  const outside = getlk(path.join(cwd, 'b'), 100);
  assert.deepEqual(outside, { type: 1, pid, start: 100, len: 0 });

  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);
  // Taken again before anything ran: all there now, the waiter comes back when the child retries.
  assert.deepEqual(locksOn(cwd).filter((l) => !l.startsWith('->')), before.filter((l) => !l.startsWith('->')));
  assert.deepEqual(fdFacts(pid), factsBefore);
  assert.deepEqual(getlk(path.join(cwd, 'b'), 100), outside);
  assert.deepEqual(getlk(path.join(cwd, 'c'), 5), { type: 1, pid: -1, start: 5, len: 7 });
  await untilTrue('the restored child to wait again', () => locksOn(cwd).some((l) => l.startsWith(`-> POSIX ADVISORY WRITE pid=${child} `)));
  assert.deepEqual(locksOn(cwd), before);

  process.kill(pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nchild locked\nlocks ok\n');
});

test('in a new pid namespace the locks come back with the namespace pids of their owners', async () => {
  const dir = tmpdir('fid-locks-ns');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_locks'), [], out, { cwd });
  await waitFor(out, /^ready$/m);
  const child = Number(fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim());
  await untilTrue('the child to wait for the lock', () => locksOn(cwd).some((l) => l.startsWith(`-> POSIX ADVISORY WRITE pid=${child} `)));
  const before = locksOn(cwd).filter((l) => !l.startsWith('->'));
  const r = await checkpointKillRestart(procs, pid, dir, { pidNs: true });
  const hostChild = Number(fs.readFileSync(`/proc/${r.pid}/task/${r.pid}/children`, 'utf8').trim());
  assert.deepEqual(readStatus(r.pid).nsPid, [r.pid, pid]);
  // /proc/locks shows our view of the pids: the same owners under their new host pids.
  const asHost = (l: string) => l.replace(`pid=${pid} `, `pid=${r.pid} `).replace(`pid=${child} `, `pid=${hostChild} `);
  assert.deepEqual(locksOn(cwd).filter((l) => !l.startsWith('->')), before.map(asHost).sort());
  process.kill(r.pid, 'SIGUSR1');
  const end = await r.wait();
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nchild locked\nlocks ok\n');
  assert.deepEqual(end, { code: 0, signal: null });
});

test('a restart while the original still holds its locks fails by name and leaves nothing running', async () => {
  const dir = tmpdir('fid-lockbusy');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_locks'), ['nochild'], out, { cwd });
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img);
  const children = listChildren(process.pid);
  assert.throws(() => restartSync(img), new RegExp(`restart failed, nothing left running: pid \\d+ fd \\d+ \\(${cwd}/a\\): flock write lock: another process holds a conflicting lock now`));
  assert.deepEqual(listChildren(process.pid), children);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^locks ok$/m);
});

test('a flock on an open file shared with a process outside the tree, or held only there, is refused by name, the tree goes on', async () => {
  const dir = tmpdir('fid-lockshare');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  // Without its child, which would hold the open file too.
  const pid = procs.start(build('fid_locks'), ['nochild'], out, { cwd });
  await waitFor(out, /^ready$/m);
  // This process takes a copy of the open file holding the flock on "a".
  const fdA = listFds(pid).find((f) => f.target === path.join(cwd, 'a'))!.fd;
  const pidfd = syscall(SYS.pidfd_open, 'pidfd_open', pid, 0);
  const mine = syscall(SYS.pidfd_getfd, 'pidfd_getfd', pidfd, fdA, 0);
  fs.closeSync(pidfd);
  try {
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')),
      new RegExp(`fd ${fdA} of pid ${pid}: its flock write lock on ${cwd}/a belongs to an open file shared with pid ${process.pid} outside the tree`));
    assert.equal(fs.existsSync(path.join(dir, 'image')), false);
    assertLeftRunning([pid]);
    // The tree closes its fd: the lock (listed under its pid) now lives only outside.
    process.kill(pid, 'SIGUSR2');
    await untilTrue('fd a to close', () => !listFds(pid).some((f) => f.fd === fdA));
    assert.ok(locksOn(cwd).some((l) => l.startsWith(`FLOCK ADVISORY WRITE pid=${pid} `)));
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')),
      new RegExp(`pid ${pid}: holds a flock write lock on inode [0-9a-f]+:[0-9a-f]+:\\d+ that no fd of the tree carries`));
  } finally {
    fs.closeSync(mine);
  }
  assertLeftRunning([pid]);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^locks ok$/m);
});

/** A second sqlite3 on the same database: its output and exit status. */
function sqlite(cwd: string, sql: string): { code: number | null; out: string } {
  const r = spawnSync('sqlite3', ['db', sql], { cwd, encoding: 'utf8' });
  return { code: r.status, out: (r.stdout + r.stderr).trim() };
}

test('a sqlite3 shell in the middle of a write transaction keeps the database locked until it commits after restart', async () => {
  const dir = tmpdir('fid-sqlite');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  execFileSync('sqlite3', ['db', 'CREATE TABLE t(x);'], { cwd });
  execFileSync('mkfifo', [path.join(cwd, 'in')]);
  // The shell reads the FIFO; this process holds it open read-write to feed it.
  const feed = fs.openSync(path.join(cwd, 'in'), 'r+');
  let r: Restarted;
  try {
    const pid = procs.start('/bin/sh', ['-c', 'exec sqlite3 db < in'], out, { cwd });
    fs.writeSync(feed, "BEGIN IMMEDIATE;\nINSERT INTO t VALUES (1), (2), (3);\nSELECT 'ready';\n");
    await waitFor(out, /^ready$/m);
    assert.match(sqlite(cwd, 'BEGIN IMMEDIATE;').out, /database is locked/);
    const before = locksOn(cwd);
    assert.ok(before.some((l) => /^POSIX ADVISORY WRITE pid=\d+ /.test(l)), before.join('\n'));

    // The FIFO stays open here: its bytes stay in it (--external).
    checkpointSync(pid, path.join(dir, 'image'), { kill: true, external: [path.join(cwd, 'in')] });
    await waitGone(pid, procs);
    r = restartVerified(path.join(dir, 'image'));
    procs.addTree(r.pid);
    assert.equal(r.pid, pid);
    assert.deepEqual(locksOn(cwd), before);
    const second = sqlite(cwd, 'BEGIN IMMEDIATE;');
    assert.notEqual(second.code, 0);
    assert.match(second.out, /database is locked/);
    assert.equal(sqlite(cwd, 'SELECT count(*) FROM t;').out, '0', 'readers do not see the uncommitted rows');

    fs.writeSync(feed, "COMMIT;\nSELECT 'committed';\n");
    await waitFor(out, /^committed$/m);
    assert.deepEqual(locksOn(cwd), []);
    assert.equal(sqlite(cwd, 'PRAGMA integrity_check; SELECT group_concat(x) FROM t;').out, 'ok\n1,2,3');
    assert.deepEqual(sqlite(cwd, 'BEGIN IMMEDIATE; INSERT INTO t VALUES (4); COMMIT;'), { code: 0, out: '' });
  } finally {
    fs.closeSync(feed);
  }
  // End of its input: the shell exits normally.
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\ncommitted\n');
});

test('F_SETOWN_EX owners (process, thread, group), F_SETSIG, O_ASYNC and O_NOATIME survive: SIGIO still comes', async () => {
  const dir = tmpdir('fid-fdowner');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_fdowner'), [], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  const before = fdFacts(pid);
  assert.ok(before.some((l) => /pipe:.* flags=\d*2\d{4} /.test(l)), `an O_ASYNC pipe among\n${before.join('\n')}`);
  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);
  // A pipe is a new one, reopened through /proc: another inode, and O_LARGEFILE (0100000) that pipe() does not set.
  const pipeless = (l: string) => l.replace(/pipe:\[\d+\] flags=(\d+)/, (_, f: string) => `pipe flags=${(parseInt(f, 8) & ~0o100000).toString(8)}`);
  assert.deepEqual(fdFacts(pid).map(pipeless), before.map(pipeless));
  process.kill(pid, 'SIGUSR1');
  const end = await r.wait();
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nfdowner ok\n');
  assert.deepEqual(end, { code: 0, signal: null });
});

test('a read lease comes back; a lease being broken is refused by name', async () => {
  const dir = tmpdir('fid-lease');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_fdowner'), ['lease'], out, { cwd });
  await waitFor(out, /^ready$/m);
  const before = locksOn(cwd);
  assert.equal(before.length, 1);
  assert.match(before[0], new RegExp(`^LEASE ACTIVE READ pid=${pid} `));
  const facts = fdFacts(pid);
  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);
  assert.deepEqual(locksOn(cwd), before);
  assert.deepEqual(fdFacts(pid), facts);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^lease read$/m);
  // An opener for writing breaks it: the lease stays "BREAKING" until the program lets go.
  assert.throws(() => fs.openSync(path.join(cwd, 'f'), fs.constants.O_WRONLY | fs.constants.O_NONBLOCK), /EAGAIN|EWOULDBLOCK/);
  assert.match(locksOn(cwd)[0], /^LEASE BREAKING /);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image2')), new RegExp(`fd \\d+ of pid ${pid} \\(${cwd}/f\\): its lease \\(F_SETLEASE\\) is being broken by another opener`));
  assertLeftRunning([pid]);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^lease read\nlease \w+$/m);
});

test('a directory watched with F_NOTIFY (dnotify) is refused by name and keeps its watch', async () => {
  const dir = tmpdir('fid-dnotify');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_fdowner'), ['dnotify'], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`fd \\d+ of pid ${pid} \\(${dir}\\): the directory has a signal owner, set by F_NOTIFY \\(dnotify\\)`));
  assertLeftRunning([pid]);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^dnotify ok$/m);
});

test('an F_SETOWN owner outside the tree is refused by name', async () => {
  const dir = tmpdir('fid-owner-out');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_fdowner'), ['owner', String(process.pid)], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`fd \\d+ of pid ${pid} \\(pipe:\\[\\d+\\]\\): its F_SETOWN owner, process ${process.pid}, is outside the tree`));
  assertLeftRunning([pid]);
});

const KCMP_FILES = 2, KCMP_FS = 3;
const kcmp = (a: number, b: number, type: number) => syscall(SYS.kcmp, 'kcmp', a, b, type, 0, 0) === 0;

/** What the test sees of a process and its children sharing: kcmp results, fds, cwd, umask. */
function sharingFacts(pid: number, kids: number[]): unknown {
  return {
    kids: kids.map((k) => ({ files: kcmp(pid, k, KCMP_FILES), fs: kcmp(pid, k, KCMP_FS), fds: fdFacts(k), cwd: fs.readlinkSync(`/proc/${k}/cwd`), umask: readStatus(k).umask })),
    fds: fdFacts(pid), cwd: fs.readlinkSync(`/proc/${pid}/cwd`), umask: readStatus(pid).umask,
  };
}

test('children sharing the fd table (CLONE_FILES) and cwd/umask (CLONE_FS) with their parent still share them, with their POSIX locks', async () => {
  const dir = tmpdir('fid-clonefiles');
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_clonefiles'), [], out, { cwd });
  await waitFor(out, /^ready$/m);
  const kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).map(Number).sort((a, b) => a - b);
  assert.equal(kids.length, 2);
  const before = sharingFacts(pid, kids);
  assert.deepEqual((before as { kids: Array<{ files: boolean; fs: boolean }> }).kids.map((k) => [k.files, k.fs]), [[true, true], [true, false]]);
  const locks = locksOn(cwd);
  assert.equal(locks.length, 2);
  const lockOwners = [getlk(path.join(cwd, 'plock'), 5), getlk(path.join(cwd, 'plock'), 25)];
  assert.deepEqual(lockOwners.map((l) => [l.type, l.pid]), [[1, pid], [0, kids[1]]]);
  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);
  assert.deepEqual(sharingFacts(pid, kids), before);
  assert.deepEqual(locksOn(cwd), locks);
  assert.deepEqual([getlk(path.join(cwd, 'plock'), 5), getlk(path.join(cwd, 'plock'), 25)], lockOwners);
  for (const k of kids) process.kill(k, 'SIGUSR1');
  const end = await r.wait();
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nshared ok\n');
  assert.deepEqual(end, { code: 0, signal: null });
});

test('processes sharing signal handlers (CLONE_SIGHAND) are refused by name, the tree goes on', async () => {
  const dir = tmpdir('fid-sighand');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_clonefiles'), ['sighand'], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  const kid = Number(fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim());
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`pids ${pid} and ${kid}: share one signal handler table as separate processes \\(CLONE_SIGHAND\\)`));
  assertLeftRunning([pid, kid]);
});

test('processes sharing an I/O context (CLONE_IO) are refused by name, the tree goes on', async () => {
  const dir = tmpdir('fid-io');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_clonefiles'), ['io'], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  const kid = Number(fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim());
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`pids ${pid} and ${kid}: share one I/O context \\(CLONE_IO`));
  assertLeftRunning([pid, kid]);
});

test('System V semaphore undo adjustments (SEM_UNDO) are refused by name, the process goes on; without SEM_UNDO it is restored', async () => {
  const dir = tmpdir('fid-semundo');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_clonefiles'), ['semundo'], out, { cwd: dir });
  const semid = /^semid (\d+)$/m.exec(await waitFor(out, /^ready$/m))![1];
  try {
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`pid ${pid}: has a System V semaphore undo list while \\d+ semaphore set\\(s\\) exist \\(semop with SEM_UNDO, or threads\\)`));
    assertLeftRunning([pid]);
    process.kill(pid, 'SIGUSR1');
    await waitFor(out, /^sem ok$/m);
    // The same semaphore used without SEM_UNDO: nothing to undo, restored.
    const dir2 = tmpdir('fid-sem');
    const out2 = path.join(dir2, 'out');
    const pid2 = procs.start(build('fid_clonefiles'), ['sem'], out2, { cwd: dir2 });
    const semid2 = /^semid (\d+)$/m.exec(await waitFor(out2, /^ready$/m))![1];
    try {
      const r = await checkpointKillRestart(procs, pid2, dir2);
      process.kill(r.pid, 'SIGUSR1');
      const end = await r.wait();
      assert.equal(fs.readFileSync(out2, 'utf8'), `semid ${semid2}\nready\nsem ok\n`);
      assert.deepEqual(end, { code: 0, signal: null });
    } finally {
      execFileSync('ipcrm', ['-s', semid2]);
    }
  } finally {
    execFileSync('ipcrm', ['-s', semid]);
  }
});

test('a program running from a memfd (fexecve) is refused by name and goes on', async () => {
  const dir = tmpdir('fid-memfdexe');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_memfdexe'), [], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  assert.match(fs.readlinkSync(`/proc/${pid}/exe`), /^\/memfd:fid-exe \(deleted\)$/);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`pid ${pid}: its executable is the memfd "fid-exe" \\(started with fexecve or execveat\\)`));
  assertLeftRunning([pid]);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^memfd exe ok$/m);
});

test('a FIFO also held open outside the tree is refused by name, or left with its bytes once with --external', async () => {
  const dir = tmpdir('fid-fifo-out');
  const fifo = path.join(dir, 'f');
  execFileSync('mkfifo', [fifo]);
  const feed = fs.openSync(fifo, 'r+');
  try {
    fs.writeSync(feed, 'abc');
    // The target holds the read end and never reads.
    const pid = procs.start('/bin/sh', ['-c', 'exec sleep 1000 < f'], path.join(dir, 'out'), { cwd: dir });
    await untilTrue('the target to open the FIFO', () => listFds(pid).some((f) => f.target === fifo));
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')),
      new RegExp(`fd 0 of pid ${pid}: FIFO ${fifo} is also open in pid ${process.pid} outside the tree, which keeps its unread bytes; pass --external ${fifo}`));
    assertLeftRunning([pid]);
    checkpointSync(pid, path.join(dir, 'image'), { kill: true, external: [fifo] });
    await waitGone(pid, procs);
    const r = restartVerified(path.join(dir, 'image'));
    procs.addTree(r.pid);
    assert.equal(listFds(r.pid).find((f) => f.fd === 0)?.target, fifo);
    const rd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const b = Buffer.alloc(64);
    const n = fs.readSync(rd, b);
    fs.closeSync(rd);
    assert.equal(b.subarray(0, n).toString(), 'abc', 'the bytes once, not saved and written back');
  } finally {
    fs.closeSync(feed);
  }
});

// End to end as an ordinary user (made by the test): a user checkpoints and
// restarts their own processes (frozen with ptrace alone, restored in a new
// user + pid namespace at the pids the program saw), and never gets more
// privilege than they have: images of other users' processes, or edited to
// claim root's ids or capabilities, are refused by name with nothing left
// running.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawn, ChildProcess } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, cli, CLI, CliResult, restartVerified, editImage } from './harness';
import { checkpointSync, loadImage } from '../src';
import { readStat, readStatus, listThreads } from '../src/proc';
import { scanTree } from '../src/ptrace/freeze';
import { readImageBuffer, ImageWriter, RecordType } from '../src/image/stream';
import { syscall } from '../src/sys/libc';

const procs = new Procs();
after(() => procs.cleanup());

const USER = 'stasis-test';

/** The test's ordinary user: created once (a system user, no home, no login). */
function ensureUser(): { uid: number; gid: number } {
  const id = (flag: string) => Number(execFileSync('id', [flag, USER], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', USER]);
    return { uid: id('-u'), gid: id('-g') };
  }
}

const user = ensureUser();
const AS_USER = ['--reuid', String(user.uid), '--regid', String(user.gid), '--init-groups', '--'];
const SETPRIV = '/usr/bin/setpriv';

/** A directory the user owns (images, outputs). */
function userDir(tag: string): string {
  const d = tmpdir(tag);
  fs.chownSync(d, user.uid, user.gid);
  fs.chmodSync(d, 0o755);
  return d;
}

/** An output file the user's restored process may open again. */
function userFile(dir: string, name: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, '');
  fs.chownSync(f, user.uid, user.gid);
  return f;
}

/** Start a program as the user (setpriv execs it: same pid). */
function startAsUser(file: string, args: string[], out: string): number {
  return procs.start(SETPRIV, [...AS_USER, file, ...args], out);
}

/** The stasis command as the user; resolves when it ends. */
function stasisAsUser(args: string[]): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(SETPRIV, [...AS_USER, process.execPath, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = new Promise<CliResult>((resolve, reject) => {
    let stdout = '', stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

const asUser = (args: string[]) => stasisAsUser(args).done;

/**
 * `stasis checkpoint PID ARGS...` as the user, loaded beforehand and started
 * by `go(pid)`: for targets that finish soon, so that Node's start-up does
 * not come between their readiness and the checkpoint.
 */
async function armedCheckpoint(args: string[]): Promise<(pid: number) => Promise<CliResult>> {
  const main = path.join(path.dirname(CLI), '..', 'dist', 'src', 'cli', 'main.js');
  const script = `const { main } = require(${JSON.stringify(main)}); process.stdout.write('armed\\n');
    process.stdin.once('data', (d) => { process.stdin.pause(); main(['checkpoint', String(d).trim(), ...${JSON.stringify(args)}]); });`;
  const child = spawn(SETPRIV, [...AS_USER, process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  procs.add(child.pid!); // waits for its pid forever if the test fails first
  let stdout = '', stderr = '';
  const armed = new Promise<void>((resolve) => child.stdout!.on('data', (d) => { stdout += d; if (stdout.includes('armed\n')) resolve(); }));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  await armed;
  return (pid) => {
    child.stdin!.end(`${pid}\n`);
    return done;
  };
}

/** Every process of the user right now. */
function userProcesses(): number[] {
  return fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    try {
      return readStatus(pid).uid[0] === user.uid && readStat(pid).state !== 'Z';
    } catch {
      return false;
    }
  }).sort((a, b) => a - b);
}

/** A restored root in its namespace: its init and it are ours to end. */
function adoptRestored(hostPid: number): void {
  const init = readStat(hostPid).ppid;
  procs.add(init);
  procs.add(hostPid);
  try { procs.addTree(init); } catch { /* a child ended during the scan: the init's end takes it along */ }
}

/** The pid a task has in its own (innermost) pid namespace. */
function innerPid(hostPid: number): number {
  let text = '';
  try { text = fs.readFileSync(`/proc/${hostPid}/status`, 'utf8'); } catch { return -1; /* gone */ }
  const ns = /^NSpid:\s+(.*)$/m.exec(text)![1].trim().split(/\s+/).map(Number);
  return ns[ns.length - 1];
}

async function waitState(pid: number, want: (s: string) => boolean): Promise<void> {
  const until = Date.now() + 10000;
  while (!want(readStat(pid).state)) {
    if (Date.now() > until) throw new Error(`pid ${pid} stayed in state ${readStat(pid).state}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function assertUntraced(pid: number, state: RegExp): void {
  assert.equal(readStatus(pid).tracerPid, 0, `pid ${pid} is not traced any more`);
  assert.match(readStat(pid).state, state, `pid ${pid} state`);
}

/** The "WHO pid P ppid Q uid U gid G" lines a target printed, in order. */
function idLines(out: string, who: string): Array<{ pid: number; ppid: number; uid: number; gid: number; self: number }> {
  return [...fs.readFileSync(out, 'utf8').matchAll(new RegExp(`^${who} pid (\\d+) ppid (\\d+) uid (\\d+) gid (\\d+) self (\\d+)$`, 'gm'))]
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), uid: Number(m[3]), gid: Number(m[4]), self: Number(m[5]) }));
}

test('a user checkpoints and restarts their own sleep: same pid, their own ids, no capabilities', async () => {
  const dir = userDir('user-sleep');
  const pid = startAsUser('/bin/sleep', ['1000'], userFile(dir, 'out'));
  await waitState(pid, () => fs.readFileSync(`/proc/${pid}/comm`, 'utf8') === 'sleep\n');
  const before = readStatus(pid);
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(ck.code, 0, ck.stderr);
  await waitGone(pid, procs);
  const rs = await asUser(['restart', '-d', '--verify', img]);
  assert.equal(rs.code, 0, rs.stderr);
  const host = Number(rs.stdout.trim());
  adoptRestored(host);
  assert.equal(innerPid(host), pid, 'its own pid, in its pid namespace');
  const now = readStatus(host);
  assert.equal(now.name, 'sleep');
  assert.deepEqual(now.uid, before.uid);
  assert.deepEqual(now.gid, before.gid);
  assert.equal(now.capEff, 0n);
  assert.equal(now.capPrm, 0n);
  assert.equal(now.capBnd, before.capBnd);
  assert.notEqual(fs.readlinkSync(`/proc/${host}/ns/user`), fs.readlinkSync('/proc/self/ns/user'), 'in a user namespace of its own');
  assertUntraced(host, /S/);
});

test('a user restarts their memory program: checksum right, the pid and ids it saw', async () => {
  const dir = userDir('user-mem');
  const out = userFile(dir, 'out');
  const pid = startAsUser(build('ids'), ['mem', '64'], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(ck.code, 0, ck.stderr);
  await waitGone(pid, procs);
  const rs = await asUser(['restart', '-d', '--verify', '-v', img]);
  assert.equal(rs.code, 0, rs.stderr);
  // The fast way in, as a user too (a userfaultfd for user faults only).
  assert.match(rs.stderr, /bytes of pages written \(\d+ by UFFDIO_COPY\)/);
  const host = Number(rs.stdout.trim());
  adoptRestored(host);
  process.kill(host, 'SIGUSR1');
  const text = await waitFor(out, /^(verified|FAIL)/m);
  assert.match(text, /^verified [0-9a-f]{16}$/m);
  const [first, second] = idLines(out, 'mem');
  assert.deepEqual({ pid: second.pid, uid: second.uid, gid: second.gid, self: second.self }, { pid: first.pid, uid: user.uid, gid: user.gid, self: first.pid });
  assert.equal(first.pid, pid);
  assert.equal(first.self, pid);
});

test('a user restarts a two-process pipe tree in the foreground: pids, pipe data and exit status', async () => {
  const dir = userDir('user-tree');
  const out = userFile(dir, 'out');
  const pid = startAsUser(build('ids'), ['tree'], out);
  await waitFor(out, /^ready$/m);
  const [parent] = idLines(out, 'parent');
  const [child] = idLines(out, 'child');
  assert.equal(child.ppid, parent.pid);
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(ck.code, 0, ck.stderr);
  await waitGone(pid, procs);
  const pidfile = path.join(dir, 'restored.pid');
  const run = stasisAsUser(['restart', '--verify', img, '--pidfile', pidfile]);
  procs.add(run.child.pid!); // still running if the test fails: cleanup ends it and its namespace
  const host = Number((await waitFor(pidfile, /^\d+\n$/)).trim());
  adoptRestored(host);
  const kids = fs.readFileSync(`/proc/${host}/task/${host}/children`, 'utf8').trim().split(/\s+/).map(Number);
  assert.equal(kids.length, 1);
  assert.equal(innerPid(kids[0]), child.pid);
  process.kill(kids[0], 'SIGUSR1');
  await waitFor(out, /^child read .*$/m);
  process.kill(host, 'SIGUSR1');
  const end = await run.done;
  assert.equal(end.code, 7, `the root's exit status (stderr: ${end.stderr})`);
  const text = fs.readFileSync(out, 'utf8');
  assert.match(text, new RegExp(`^child read hello from ${parent.pid}$`, 'm'));
  assert.match(text, /^child exited 0$/m);
  assert.deepEqual(idLines(out, 'child')[1], child, 'the child sees the same pid, parent pid and ids');
  const again = idLines(out, 'parent')[1];
  assert.deepEqual({ pid: again.pid, uid: again.uid, gid: again.gid, self: again.self }, { pid: parent.pid, uid: user.uid, gid: user.gid, self: parent.pid });
});

test("a user may not checkpoint root's process: refused by name, left running and untraced", async () => {
  const dir = userDir('user-root-target');
  const pid = procs.start('/bin/sleep', ['1000'], path.join(dir, 'out'));
  await waitState(pid, () => fs.readFileSync(`/proc/${pid}/comm`, 'utf8') === 'sleep\n');
  const r = await asUser(['checkpoint', String(pid), '-o', path.join(dir, 'image')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`^stasis: pid ${pid}: not allowed to trace it \\(EPERM\\) \\(it belongs to uid 0, you are uid ${user.uid}\\)`));
  assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  assertUntraced(pid, /S/);
  assert.ok(!fs.existsSync(path.join(dir, 'image')));
});

test('a refused checkpoint leaves the user\'s process running, or stopped, and untraced', async () => {
  const dir = userDir('user-refused');
  const out = userFile(dir, 'out');
  const pid = startAsUser(build('unsupported'), [], out);
  await waitFor(out, /^ready$/m);
  const r1 = await asUser(['checkpoint', String(pid), '-o', path.join(dir, 'image')]);
  assert.equal(r1.code, 1);
  assert.match(r1.stderr, new RegExp(`^stasis: .*pid ${pid}.*socket`, 'm'));
  assertUntraced(pid, /[SR]/);
  process.kill(pid, 'SIGSTOP');
  await waitState(pid, (s) => s === 'T');
  const r2 = await asUser(['checkpoint', String(pid), '-o', path.join(dir, 'image')]);
  assert.equal(r2.code, 1);
  assert.match(r2.stderr, /socket/);
  assertUntraced(pid, /T/);
  const size = fs.statSync(out).size;
  process.kill(pid, 'SIGCONT');
  await waitFor(out, (t) => t.length > size);
});

test("images of root's process, or claiming uid 0, gid 0 or capabilities, are refused to a user by name, nothing left running", async () => {
  const dir = userDir('user-claims');
  // root's own process, checkpointed by root
  const rootPid = procs.start('/bin/sleep', ['1000'], path.join(dir, 'root.out'));
  await waitState(rootPid, () => fs.readFileSync(`/proc/${rootPid}/comm`, 'utf8') === 'sleep\n');
  const rootImg = path.join(dir, 'root.img');
  checkpointSync(rootPid, rootImg);
  fs.chmodSync(rootImg, 0o644);
  // the user's own, edited
  const pid = startAsUser('/bin/sleep', ['1000'], userFile(dir, 'out'));
  await waitState(pid, () => fs.readFileSync(`/proc/${pid}/comm`, 'utf8') === 'sleep\n');
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img]);
  assert.equal(ck.code, 0, ck.stderr);
  fs.chmodSync(img, 0o644);
  const edited = (name: string, edit: (p: Record<string, any>) => void) => {
    const f = path.join(dir, name);
    editImage(img, f, edit);
    return f;
  };
  const cases: Array<[string, RegExp]> = [
    [rootImg, new RegExp(`^stasis: pid ${rootPid}: the image runs as uid 0/0/0/0; you are uid ${user.uid}`)],
    [edited('uid0.img', (p) => { p.creds.uid = [0, 0, 0, 0]; }), new RegExp(`^stasis: pid ${pid}: the image runs as uid 0/0/0/0`)],
    [edited('euid0.img', (p) => { p.creds.uid[1] = 0; }), new RegExp(`^stasis: pid ${pid}: the image runs as uid ${user.uid}/0/`)],
    [edited('gid0.img', (p) => { p.creds.gid = [0, 0, 0, 0]; }), new RegExp(`^stasis: pid ${pid}: the image runs as gid 0/0/0/0`)],
    [edited('group0.img', (p) => { p.creds.groups = [0]; }), new RegExp(`^stasis: pid ${pid}: the image holds supplementary group\\(s\\) 0`)],
    [edited('caps.img', (p) => { p.creds.capPrm = p.creds.capEff = '0x1ffffffffff'; }), new RegExp(`^stasis: pid ${pid}: the image claims permitted capabilities 0x1ffffffffff with CAP_CHOWN`)],
    [edited('ambient.img', (p) => { p.creds.capAmb = '0x200000'; }), new RegExp(`^stasis: pid ${pid}: the image claims ambient capabilities 0x200000 with CAP_SYS_ADMIN`)],
    // Restart gives each thread its own sets: claiming them there only is refused the same.
    [edited('threadcaps.img', (p) => { p.threads[0].caps.prm = p.threads[0].caps.eff = '0x200000'; }), new RegExp(`^stasis: pid ${pid}: the image claims for thread ${pid} permitted capabilities 0x200000 with CAP_SYS_ADMIN`)],
  ];
  const running = userProcesses();
  assert.ok(running.includes(pid));
  for (const [file, want] of cases) {
    for (const args of [['restart', '-d', file], ['restart', '--pid-ns', '-d', file]]) {
      const r = await asUser(args);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stdout}`);
      assert.match(r.stderr, want);
      assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
      assert.deepEqual(userProcesses(), running, 'nothing of the image left running');
    }
  }
  assertUntraced(pid, /S/);
  assertUntraced(rootPid, /S/);
});

test('even root may not restore an image claiming capabilities root lacks, a setuid program or a mapped file with file capabilities', async () => {
  const dir = userDir('root-claims');
  const pid = procs.start('/bin/sleep', ['1000'], path.join(dir, 'out'));
  await waitState(pid, () => fs.readFileSync(`/proc/${pid}/comm`, 'utf8') === 'sleep\n');
  const img = path.join(dir, 'image');
  checkpointSync(pid, img);
  const mine = readStatus('self');
  const lacking = ~mine.capPrm & ((1n << 41n) - 1n);
  assert.notEqual(lacking, 0n, 'root here lacks a capability (CAP_SYS_RESOURCE)');
  const caps = path.join(dir, 'caps.img');
  editImage(img, caps, (p) => { p.creds.capPrm = '0x' + (mine.capPrm | lacking).toString(16); });
  const setuid = path.join(dir, 'setuid.img');
  const sleepCopy = path.join(dir, 'sleep-setuid');
  fs.copyFileSync('/bin/sleep', sleepCopy);
  fs.chmodSync(sleepCopy, 0o4755);
  const st = fs.statSync(sleepCopy, { bigint: true });
  editImage(img, setuid, (p) => {
    p.mm.exe = { path: sleepCopy, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeNs: st.mtimeNs.toString() };
  });
  // A mapped file with file capabilities (CAP_NET_RAW permitted), set as setcap would.
  const vma = loadImage(img).process.vmas.find((v) => v.kind === 'file')!;
  const capped = path.join(dir, 'capped-lib');
  fs.copyFileSync(vma.file!.path, capped);
  const capData = Buffer.alloc(20);
  capData.writeUInt32LE(0x02000000, 0); // VFS_CAP_REVISION_2
  capData.writeUInt32LE(1 << 13, 4);
  syscall(188 /* setxattr */, 'setxattr', Buffer.from(capped + '\0'), Buffer.from('security.capability\0'), capData, capData.length, 0);
  const cst = fs.statSync(capped, { bigint: true });
  const fcaps = path.join(dir, 'fcaps.img');
  editImage(img, fcaps, (p) => {
    const v = p.vmas.find((x: { start: number }) => x.start === vma.start);
    v.file = { path: capped, dev: Number(cst.dev), ino: Number(cst.ino), size: Number(cst.size), mtimeNs: cst.mtimeNs.toString() };
  });
  const r3 = await cli(['restart', '-d', fcaps]);
  assert.equal(r3.code, 1);
  assert.match(r3.stderr, new RegExp(`^stasis: pid ${pid}: mapping at 0x${vma.start.toString(16)}: ${capped} has file capabilities: restoring a process of a privileged program is refused`));
  const r1 = await cli(['restart', '-d', caps]);
  assert.equal(r1.code, 1);
  assert.match(r1.stderr, new RegExp(`^stasis: pid ${pid}: the image claims permitted capabilities 0x[0-9a-f]+ with CAP_SYS_RESOURCE that you do not hold`));
  const r2 = await cli(['restart', '-d', setuid]);
  assert.equal(r2.code, 1);
  assert.match(r2.stderr, new RegExp(`^stasis: pid ${pid}: executable: ${sleepCopy} is setuid`));
  assertUntraced(pid, /S/);
});

/** Restart an image in the foreground as the user; the restored root's host pid once it runs. */
async function restartForeground(img: string, dir: string): Promise<{ host: number; done: Promise<CliResult> }> {
  const pidfile = path.join(dir, 'restored.pid');
  const run = stasisAsUser(['restart', '--verify', img, '--pidfile', pidfile]);
  procs.add(run.child.pid!); // still running if the test fails: cleanup ends it and its namespace
  const host = Number((await waitFor(pidfile, /^\d+\n$/)).trim());
  adoptRestored(host);
  return { host, done: run.done };
}

test('a user checkpoints 8 threads (frozen with ptrace alone): the same tids, and they join', async () => {
  const dir = userDir('user-threads');
  const out = userFile(dir, 'out');
  const pid = startAsUser(build('threads'), [], out);
  await waitFor(out, /^ready$/m);
  const tids = listThreads(pid);
  assert.equal(tids.length, 9);
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(ck.code, 0, ck.stderr);
  await waitGone(pid, procs);
  const { host, done } = await restartForeground(img, dir);
  assert.deepEqual(listThreads(host).map(innerPid), tids, 'every thread at its own tid in the namespace');
  const end = await done;
  assert.equal(end.code, 0, end.stderr);
  const text = fs.readFileSync(out, 'utf8');
  assert.match(text, /^total 2500$/m);
  assert.match(text, /^joined 8$/m);
  assert.doesNotMatch(text, /FAIL/);
});

test('a user checkpoints a tree forking all the time: the ptrace freeze takes the racing children along', async () => {
  const dir = userDir('user-forker');
  const out = userFile(dir, 'out');
  const pid = startAsUser(build('forker'), [], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill', '-v']);
  assert.equal(ck.code, 0, ck.stderr);
  assert.match(ck.stderr, /with ptrace \(no writable freezer cgroup\)/);
  await waitGone(pid, procs);
  const image = loadImage(img);
  assert.ok(image.processes.length + image.zombies.length >= 2, 'children were taken along');
  assert.deepEqual([...image.processes.slice(1), ...image.zombies].map((p) => p.ppid).filter((pp) => pp !== pid), []);
  const rs = await asUser(['restart', '-d', '--verify', img]);
  assert.equal(rs.code, 0, rs.stderr);
  const host = Number(rs.stdout.trim());
  adoptRestored(host);
  assert.equal(innerPid(host), pid);
  // It goes on forking: a child that did not exist in the image appears.
  const inImage = new Set([...image.processes, ...image.zombies].map((p) => p.pid));
  await waitFor(`/proc/${host}/task/${host}/children`, (t) => t.trim().split(/\s+/).filter(Boolean).map(Number).some((c) => !inImage.has(innerPid(c))));
  // Ending the namespace's init ends everything in it.
  const init = readStat(host).ppid;
  process.kill(init, 'SIGKILL');
  await waitGone(host, procs);
});

test('a user restarts a sealed memfd mapped by parent and child: reached through the namespace init', async () => {
  const prog = build('shmem');
  const dir = userDir('user-memfd');
  const reference = path.join(dir, 'reference');
  const refPid = procs.start(prog, ['memfd'], reference);
  const out = userFile(dir, 'out');
  const img = path.join(dir, 'image');
  const go = await armedCheckpoint(['-o', img, '--kill']);
  const pid = startAsUser(prog, ['memfd'], out);
  await waitFor(out, /^ping 100$/m);
  const ck = await go(pid);
  assert.equal(ck.code, 0, ck.stderr);
  assert.equal(loadImage(img).memfds.length, 1);
  await waitGone(pid, procs);
  const { host, done } = await restartForeground(img, dir);
  assert.match(fs.readFileSync(`/proc/${host}/maps`, 'utf8'), /\/memfd:stasis-pingpong \(deleted\)/);
  const end = await done;
  assert.equal(end.code, 0, end.stderr);
  await waitGone(refPid, procs);
  assert.match(fs.readFileSync(out, 'utf8'), /^memfd ok$/m);
  assert.equal(fs.readFileSync(out, 'utf8'), fs.readFileSync(reference, 'utf8'));
});

test('anonymous memory shared across a tree: refused by name to a user (map_files), checkpointed and restarted by root', async () => {
  const dir = userDir('user-shmem');
  const out = userFile(dir, 'out');
  const img = path.join(dir, 'image');
  const go = await armedCheckpoint(['-o', img, '--kill']);
  const pid = startAsUser(build('shmem'), [], out);
  await waitFor(out, /^ping 100$/m);
  // A user cannot read a shared memory object through map_files: refused, the tree goes on untraced.
  const ck = await go(pid);
  assert.equal(ck.code, 1);
  assert.match(ck.stderr, /^stasis: pid \d+: vma [0-9a-f]+-[0-9a-f]+ \(\/dev\/zero \(deleted\)\): cannot open its shared memory object through map_files \(EPERM\); that needs CAP_CHECKPOINT_RESTORE: checkpoint as root\n$/);
  assert.equal(fs.existsSync(img), false);
  for (const p of scanTree(pid)) assert.equal(readStatus(p.pid).tracerPid, 0, `pid ${p.pid} untraced`);
  // Root checkpoints it; the user still cannot rebuild the object.
  checkpointSync(pid, img, { kill: true });
  fs.chmodSync(img, 0o644);
  await waitGone(pid, procs);
  const running = userProcesses();
  const r = await asUser(['restart', '-d', img]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^stasis: pid \d+: mapping at 0x[0-9a-f]+: shared anonymous memory is rebuilt through \/proc\/PID\/map_files, which needs CAP_CHECKPOINT_RESTORE outside a user namespace: restart this image as root\n$/);
  assert.deepEqual(userProcesses(), running, 'nothing left running');
  // Root may: the restored tree runs as the user who made it.
  const rr = restartVerified(img);
  procs.addTree(rr.pid);
  assert.equal(rr.pid, pid);
  assert.equal(readStatus(pid).uid[1], user.uid);
  assert.equal(readStatus(pid).capEff, 0n);
  assert.deepEqual(await rr.wait(), { code: 0, signal: null });
  assert.match(fs.readFileSync(out, 'utf8'), /^done$/m);
});

test('stasis check as a user: the privileges are absent, the user + pid namespace restart path is proven', async () => {
  const r = await asUser(['check']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^absent +privileges: missing .*CAP_CHECKPOINT_RESTORE/m);
  assert.match(r.stdout, new RegExp(`^ok +user \\+ pid namespace \\(restart as a user\\): uid ${user.uid} and gid ${user.gid} mapped`, 'm'));
});

for (const [name, expected] of [['fpu', 'ready\nok\n'], ['eventfd', 'ready\neventfd ok\n'], ['waitfds', 'ready\nsignalfd ok\ntimerfd ok\nperiodic ok\n']]) {
  test(`a user restarts ${name}: its own check of its state passes after the restart`, async () => {
    const dir = userDir(`user-${name}`);
    const out = userFile(dir, 'out');
    const pid = startAsUser(build(name), [], out);
    await waitFor(out, /^ready$/m);
    const img = path.join(dir, 'image');
    const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill']);
    assert.equal(ck.code, 0, ck.stderr);
    await waitGone(pid, procs);
    const { host, done } = await restartForeground(img, dir);
    assert.equal(innerPid(host), pid);
    process.kill(host, 'SIGUSR1');
    const end = await done;
    assert.equal(end.code, 0, end.stderr);
    assert.equal(fs.readFileSync(out, 'utf8'), expected);
  });
}

test('a memfd reachable only through its mapping: a user checkpoint is refused by name, the target carries on untraced', async () => {
  const dir = userDir('user-memfd-mapped');
  const out = userFile(dir, 'out');
  const pid = startAsUser(build('memfd_mapped'), [], out);
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  const r = await asUser(['checkpoint', String(pid), '-o', img]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`^stasis: memfd "stasis-mapped-only" \\(/proc/${pid}/map_files/[0-9a-f]+-[0-9a-f]+\\): only mapped, not held as an fd, and reading it through map_files needs CAP_CHECKPOINT_RESTORE \\(EPERM\\)`));
  assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  assert.ok(!fs.existsSync(img), 'no image left');
  assertUntraced(pid, /[SR]/);
  const size = fs.statSync(out).size;
  await waitFor(out, (t) => t.length > size);
});

test("root restores a user's process with its capabilities, ambient and bounding sets, no_new_privs and parent-death signal as they were", async () => {
  const dir = userDir('user-caps');
  const pid = procs.start(SETPRIV, ['--reuid', String(user.uid), '--regid', String(user.gid), '--init-groups',
    '--inh-caps=+net_raw', '--ambient-caps=+net_raw', '--bounding-set=-sys_admin', '--no-new-privs', '--pdeathsig=SIGKILL', '--', '/bin/sleep', '1000'], userFile(dir, 'out'));
  await waitState(pid, () => fs.readFileSync(`/proc/${pid}/comm`, 'utf8') === 'sleep\n');
  const fields = (p: number) => {
    const s = readStatus(p);
    return { uid: s.uid, gid: s.gid, groups: s.groups, capInh: s.capInh, capPrm: s.capPrm, capEff: s.capEff, capBnd: s.capBnd, capAmb: s.capAmb, noNewPrivs: s.noNewPrivs };
  };
  const before = fields(pid);
  assert.equal(before.capAmb, 1n << 13n, 'CAP_NET_RAW ambient, as set up');
  assert.equal(before.noNewPrivs, 1);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  // Set after the uid change; a restart's uid change would clear it (--verify compares it).
  assert.equal(loadImage(img).processes[0].threads[0].prctl.pdeathsig, 9);
  const r = restartVerified(img);
  procs.addTree(r.pid);
  assert.equal(r.pid, pid);
  assert.deepEqual(fields(r.pid), before);
  // A user restarting the same image would gain CAP_NET_RAW: refused.
  fs.chmodSync(img, 0o644);
  process.kill(r.pid, 'SIGKILL');
  await r.wait();
  const u = await asUser(['restart', '-d', img]);
  assert.equal(u.code, 1);
  assert.match(u.stderr, new RegExp(`^stasis: pid ${pid}: the image claims permitted capabilities 0x2000 with CAP_NET_RAW that you do not hold`));
});

test('a user restarts a deleted file held as an fd; a root restart refuses to make it where, or owned by whom, the user could not; a /dev/shm file only mapped (sem_open, shm_open) is refused to a user by name', async () => {
  const dir = userDir('user-ghost');
  const file = userFile(dir, 'scratch');
  fs.writeFileSync(file, 'kept through the restart\n');
  const out = userFile(dir, 'out');
  const pid = startAsUser('/bin/sh', ['-c', 'exec 3<>"$0"; rm "$0"; echo ready; exec sleep 1000', file], out);
  await waitFor(out, /^ready$/m);
  await waitState(pid, () => fs.readFileSync(`/proc/${pid}/comm`, 'utf8') === 'sleep\n');
  const img = path.join(dir, 'image');
  const ck = await asUser(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(ck.code, 0, ck.stderr);
  fs.chmodSync(img, 0o644);
  assert.equal(loadImage(img).objects.ghosts?.[0].path, file);
  await waitGone(pid, procs);
  const { host, done } = await restartForeground(img, dir);
  assert.equal(fs.readlinkSync(`/proc/${host}/fd/3`), `${file} (deleted)`);
  assert.equal(fs.readFileSync(`/proc/${host}/fd/3`, 'utf8'), 'kept through the restart\n');
  assert.equal(fs.statSync(`/proc/${host}/fd/3`).nlink, 0);
  assert.equal(fs.statSync(`/proc/${host}/fd/3`).uid, user.uid);
  assert.ok(!fs.existsSync(file), 'deleted again');
  process.kill(host, 'SIGKILL');
  await done;
  // The same image edited: the file in a directory only root may write, or owned by root.
  const edited = (name: string, edit: (g: Record<string, any>) => void) => {
    const f = path.join(dir, name);
    const records = readImageBuffer(fs.readFileSync(img), img);
    const fd = fs.openSync(f, 'w', 0o644);
    try {
      const w = new ImageWriter(fd);
      for (const r of records) {
        if (r.type !== RecordType.Objects) { w.record(r.type, [r.payload]); continue; }
        const o = JSON.parse(r.payload.toString('utf8'));
        edit(o.ghosts[0]);
        w.json(RecordType.Objects, o);
      }
      w.end();
    } finally {
      fs.closeSync(fd);
    }
    return f;
  };
  const planted = '/etc/stasis-planted-ghost';
  for (const [f, want] of [
    [edited('etc.img', (g) => { g.path = planted; }), /^stasis: deleted file \/etc\/stasis-planted-ghost: the saved process \(uid \d+\) could not have made it in \/etc owned by/],
    [edited('owner.img', (g) => { g.uid = 0; g.mode = 0o4755; }), /^stasis: deleted file .*\/scratch: the saved process \(uid \d+\) could not have made it in .* owned by 0:/],
  ] as const) {
    const r = await cli(['restart', '--pid-ns', '-d', f]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, want);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  }
  assert.ok(!fs.existsSync(planted));
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('scratch')), [], 'nothing made');
  // Semaphores and shm_open memory only mapped (glibc closes a semaphore's fd): reading them needs map_files, root's.
  const sem = startAsUser(build('ghost'), [dir], userFile(dir, 'sem.out'));
  await waitFor(path.join(dir, 'sem.out'), /^ready$/m);
  const refused = await asUser(['checkpoint', String(sem), '-o', path.join(dir, 'sem.img')]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^stasis: pid \d+: vma [0-9a-f]+-[0-9a-f]+ \(\/dev\/shm\/(sem\.|stasis-ghost-)\S+ \(deleted\)\): deleted file \/dev\/shm\/\S+: only mapped, not held as an fd, and reading it through map_files needs CAP_CHECKPOINT_RESTORE \(EPERM\)/);
  for (const p of scanTree(sem)) assertUntraced(p.pid, /S/);
  // Carried on: it checks its state and removes its named semaphore.
  process.kill(sem, 'SIGUSR1');
  await waitFor(path.join(dir, 'sem.out'), /^ok$/m);
});

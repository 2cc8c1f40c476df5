// Fidelity of inotify watches, pidfds and O_PATH fds on symlinks (issue
// #8), and the named refusals of kinds no module restores yet (fanotify,
// io_uring, AIO rings, netlink, packet and raw sockets): each refused
// target is left running and its object keeps working.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir, checkpointKillRestart, restartVerified, assertLeftRunning } from './harness';
import { checkpointSync, restartSync } from '../src';
import { listFds, readFdinfo } from '../src/proc';
import { parseWatches, userDev } from '../src/kinds/inotify';

const procs = new Procs();
after(() => procs.cleanup());

/** The inotify watches (wd, inode, device, mask) and pidfd targets of a process, as fdinfo shows them. */
function notifyFacts(pid: number): { watches: string[]; pidfds: string[]; link: string } {
  const fds = listFds(pid);
  const ino = fds.find((f) => f.target === 'anon_inode:inotify')!;
  const watches = parseWatches(readFdinfo(pid, ino.fd).lines).map((w) => `wd ${w.wd} ino ${w.ino} dev ${w.sdev.toString(16)} mask ${w.mask.toString(16)}`);
  const pidfds = fds.filter((f) => f.target === 'anon_inode:[pidfd]').map((f) => {
    const info = readFdinfo(pid, f.fd);
    return `fd ${f.fd} pid ${info.raw.Pid} flags ${info.flags.toString(8)}`;
  });
  return { watches, pidfds, link: fds.find((f) => f.target.endsWith('/link'))!.target };
}

test('inotify watches keep their descriptors and masks and report changes made after restart; pidfds of live, zombie, reaped and self processes still refer to them; an O_PATH fd on a symlink is still the link', async () => {
  const dir = tmpdir('notify');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_notify'), [], out, { cwd: dir });
  const live = Number(/^live (\d+)$/m.exec(await waitFor(out, /^live \d+$/m))![1]);
  const before = notifyFacts(pid);
  assert.deepEqual(before.watches.map((w) => w.split(' ').slice(0, 2).join(' ')), ['wd 1', 'wd 3', 'wd 7']);
  assert.equal(before.pidfds.filter((p) => / pid -1 /.test(p)).length, 1, before.pidfds.join('\n'));
  assert.ok(before.pidfds.some((p) => p.includes(` pid ${live} `)), before.pidfds.join('\n'));
  const r = await checkpointKillRestart(procs, pid, dir);
  assert.equal(r.pid, pid);
  assert.deepEqual(notifyFacts(pid), before);
  // Changes after restart, each seen by its watch.
  fs.writeFileSync(path.join(dir, 'dir', 'new'), '');
  fs.appendFileSync(path.join(dir, 'file'), 'x');
  fs.chmodSync(dir, 0o700);
  process.kill(pid, 'SIGUSR1');
  const end = await r.wait();
  const text = fs.readFileSync(out, 'utf8');
  assert.deepEqual(end, { code: 0, signal: null }, text);
  const events = text.split('\n').filter((l) => l.startsWith('event ')).sort();
  assert.deepEqual(events, ['event wd=1 mask=100 name=new', 'event wd=3 mask=2 name=', 'event wd=7 mask=40000004 name=', 'event wd=7 mask=8000 name=']);
  assert.match(text, /^notify ok$/m);
});

test('in a new pid namespace, pidfds name the same processes there; one of a reaped process is refused by name, leaving nothing behind', async () => {
  const dir = tmpdir('notify-ns');
  const reapedOut = path.join(dir, 'reaped.out');
  const withReaped = procs.start(build('fid_notify'), [], reapedOut, { cwd: fs.mkdirSync(path.join(dir, 'reaped'), { recursive: true })! });
  await waitFor(reapedOut, /^live \d+$/m);
  const reapedImg = path.join(dir, 'reaped.image');
  checkpointSync(withReaped, reapedImg);
  assert.throws(() => restartSync(reapedImg, { pidNs: true }), /restart failed, nothing left running: pid \d+: fd 6 is a pidfd of a process that has exited and been reaped, which cannot be made inside a new pid namespace yet/);
  assertLeftRunning(withReaped);

  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_notify'), ['noreaped'], out, { cwd: dir });
  await waitFor(out, /^live \d+$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  const r = restartVerified(img, { pidNs: true });
  procs.addTree(r.pid);
  fs.writeFileSync(path.join(dir, 'dir', 'new'), '');
  process.kill(r.pid, 'SIGUSR1');
  const end = await r.wait();
  const text = fs.readFileSync(out, 'utf8');
  assert.deepEqual(end, { code: 0, signal: null }, text);
  assert.match(text, /^event wd=1 mask=100 name=new$/m);
  assert.match(text, /^notify ok$/m);
});

test('an inotify fd with unread events is refused by name; the target keeps its events', async () => {
  const dir = tmpdir('notify-unread');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_notify'), ['unread'], out, { cwd: dir });
  await waitFor(out, /^live \d+$/m);
  const kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
  assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`fd 3 of pid ${pid}: inotify fd 3 has \\d+ bytes of unread events; not supported`));
  assertLeftRunning([pid, ...kids.filter((k) => !/\) Z /.test(fs.readFileSync(`/proc/${k}/stat`, 'utf8')))]);
  process.kill(pid, 'SIGUSR1');
  await waitFor(out, /^notify ok$/m);
  assert.match(fs.readFileSync(out, 'utf8'), /^event wd=1 mask=100 name=unread$/m);
});

test('userDev turns the kernel dev_t of fdinfo into stat\'s', () => {
  const st = fs.statSync('/', { bigint: true });
  const major = Number(st.dev >> 8n) & 0xfff, minor = Number(st.dev & 0xffn) | (Number(st.dev >> 12n) & 0xfff00);
  assert.equal(userDev((major << 20) | minor), st.dev);
  assert.equal(userDev((259 << 20) | 70000), (BigInt(70000 & 0xff)) | (259n << 8n) | (BigInt(70000 & ~0xff) << 12n));
});

const REFUSALS: Array<[mode: string, message: RegExp]> = [
  ['fanotify', /fd \d+ of pid \d+: fanotify \(init flags 0x[0-9a-f]+, 1 marks: 1 on inodes, 0 on mounts, 0 on filesystems\) is not supported yet/],
  ['io_uring', /(fd \d+ of pid \d+: io_uring instance|the ring of an io_uring instance) is not supported yet/],
  ['aio', /pid \d+: vma [0-9a-f]+-[0-9a-f]+ \(\/\[aio\] \(deleted\)\): an AIO ring \(io_setup\) is not supported yet; io_destroy it/],
  ['netlink-route', /fd \d+ of pid \d+: netlink socket, route \(NETLINK_ROUTE\), groups 0x00000001, is not supported yet/],
  ['netlink-uevent', /fd \d+ of pid \d+: netlink socket, uevent \(NETLINK_KOBJECT_UEVENT\), is not supported yet/],
  ['packet', /fd \d+ of pid \d+: packet socket \(AF_PACKET, SOCK_RAW, protocol 0x0003, interface 0\) is not supported yet/],
  ['raw', /fd \d+ of pid \d+: raw inet socket \(RAW\) is not supported yet/],
  ['pidfd-outside', /fd \d+ of pid \d+: pidfd of pid 1, which is outside the tree: not supported/],
];

for (const [mode, message] of REFUSALS) {
  test(`${mode}: refused by name, the target keeps running and its object works`, async () => {
    const dir = tmpdir(`refused-${mode}`);
    const out = path.join(dir, 'out');
    const pid = procs.start(build('fid_refused'), [mode], out, { cwd: dir });
    await waitFor(out, /^ready$/m);
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), message);
    assertLeftRunning(pid);
    process.kill(pid, 'SIGUSR1');
    await waitFor(out, new RegExp(`^${mode} ok$`, 'm'));
  });
}

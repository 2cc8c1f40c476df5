// IPC objects: POSIX message queues held as fds, System V shared memory
// segments attached by the tree. Each program checks its own state after
// restart (attributes, modes, messages in order with their priorities,
// segment contents, key and attachment address); refusals leave the
// target running.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { build, Procs, waitFor, waitGone, tmpdir, restartVerified, assertLeftRunning } from './harness';
import { checkpointSync } from '../src';
import { execFileSync } from 'node:child_process';
import { syscall } from '../src/sys/libc';

const procs = new Procs();
after(() => procs.cleanup());

const SYS_MQ_OPEN = 240, SYS_MQ_UNLINK = 241, SYS_MQ_TIMEDSEND = 242;
const O_WRONLY = 1, O_NONBLOCK = 0o4000;
let queues = 0;
const queueName = () => `/stasis-test-${process.pid}-${++queues}`;
const cName = (name: string) => Buffer.from(name.slice(1) + '\0');

function mqUnlink(name: string): void {
  try { syscall(SYS_MQ_UNLINK, 'mq_unlink', cName(name)); } catch { /* gone */ }
}

function mqSend(name: string, text: string, prio: number): void {
  const fd = syscall(SYS_MQ_OPEN, 'mq_open', cName(name), O_WRONLY | O_NONBLOCK, 0, 0);
  try {
    const b = Buffer.from(text);
    syscall(SYS_MQ_TIMEDSEND, 'mq_timedsend', fd, b, b.length, prio, 0);
  } finally {
    fs.closeSync(fd);
  }
}

/** Start ipc_mqueue on a fresh queue; checkpoint it with --kill. */
async function checkpointedQueues(tag: string): Promise<{ dir: string; out: string; img: string; name: string }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out');
  const name = queueName();
  const pid = procs.start(build('ipc_mqueue'), [name], out, { cwd: dir });
  await waitFor(out, /^ready$/m);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  return { dir, out, img, name };
}

async function restartAndCheck(img: string, out: string): Promise<void> {
  const r = restartVerified(img);
  procs.addTree(r.pid);
  process.kill(r.pid, 'SIGUSR1');
  const end = await r.wait();
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nok\n');
  assert.deepEqual(end, { code: 0, signal: null });
}

test('POSIX message queues, named and unlinked, keep attributes, modes, flags and every message in order with its priority', async () => {
  const { out, img, name } = await checkpointedQueues('ipc-mq');
  try {
    // The named queue outlived the killed original, unchanged: it is used again.
    await restartAndCheck(img, out);
  } finally {
    mqUnlink(name);
  }
});

test('a named message queue removed since the checkpoint is created again with its saved messages', async () => {
  const { out, img, name } = await checkpointedQueues('ipc-mq-gone');
  try {
    mqUnlink(name);
    await restartAndCheck(img, out);
  } finally {
    mqUnlink(name);
  }
});

test('a named message queue whose messages changed since the checkpoint is refused at restart, nothing left running', async () => {
  const { out, img, name } = await checkpointedQueues('ipc-mq-changed');
  try {
    mqSend(name, 'late', 9);
    assert.throws(() => restartVerified(img), new RegExp(`: message queue ${name}: exists with 7 messages that are not the 6 saved; remove it \\(mq_unlink\\)`));
    assert.equal(fs.readFileSync(out, 'utf8'), 'ready\n');
    // Its messages are all still there: the comparison put them back.
    mqUnlink(name);
  } finally {
    mqUnlink(name);
  }
});

test('a message queue with a notification registered (mq_notify) is refused by name and the target goes on', async () => {
  const dir = tmpdir('ipc-mq-notify');
  const out = path.join(dir, 'out');
  const name = queueName();
  const pid = procs.start(build('ipc_mqueue'), [name, 'notify'], out, { cwd: dir });
  try {
    await waitFor(out, /^ready$/m);
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`fd \\d+ of pid ${pid}: message queue ${name}-hidden has a notification registered \\(mq_notify\\) by pid ${pid}`));
    assertLeftRunning(pid);
    process.kill(pid, 'SIGUSR1');
    await waitFor(out, /^ok$/m);
  } finally {
    mqUnlink(name);
  }
});

test('a message queue also open outside the tree is refused by name and the target goes on', async () => {
  const dir = tmpdir('ipc-mq-outside');
  const out = path.join(dir, 'out');
  const name = queueName();
  const pid = procs.start(build('ipc_mqueue'), [name], out, { cwd: dir });
  try {
    await waitFor(out, /^ready$/m);
    const mine = syscall(SYS_MQ_OPEN, 'mq_open', cName(name), O_WRONLY | O_NONBLOCK, 0, 0);
    try {
      assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`message queue ${name} is also open in pid ${process.pid} outside the tree`));
    } finally {
      fs.closeSync(mine);
    }
    assertLeftRunning(pid);
    process.kill(pid, 'SIGUSR1');
    await waitFor(out, /^ok$/m);
  } finally {
    mqUnlink(name);
  }
});

const SYS_SHMAT = 30, SYS_SHMDT = 67;
let keys = 0;
/** A key of this test run: 0x5a, the low bits of our pid, a counter. */
const shmKey = () => (0x5a000000 | ((process.pid & 0xffff) << 8) | ++keys) >>> 0;
const hexKey = (k: number) => k.toString(16).padStart(8, '0');

function removeKey(key: number): void {
  try { execFileSync('ipcrm', ['-M', `0x${hexKey(key)}`], { stdio: 'ignore' }); } catch { /* gone */ }
}

/** Start ipc_shm with a fresh key; checkpoint it with --kill. */
async function checkpointedSegments(tag: string): Promise<{ out: string; img: string; key: number; id: number }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out');
  const key = shmKey();
  const pid = procs.start(build('ipc_shm'), [hexKey(key)], out, { cwd: dir });
  const id = Number(/^ready (\d+) /m.exec(await waitFor(out, /^ready .*$/m))![1]);
  const img = path.join(dir, 'image');
  checkpointSync(pid, img, { kill: true });
  await waitGone(pid, procs);
  return { out, img, key, id };
}

async function restartAndCheckShm(img: string, out: string): Promise<void> {
  const r = restartVerified(img);
  procs.addTree(r.pid);
  process.kill(r.pid, 'SIGUSR1');
  const end = await r.wait();
  assert.match(fs.readFileSync(out, 'utf8'), /^ready [^\n]*\nok\n$/);
  assert.deepEqual(end, { code: 0, signal: null });
}

test('System V shared memory: a keyed segment that outlived the original and a removed private one come back at their ids, keys, addresses and contents', async () => {
  const { out, img, key } = await checkpointedSegments('ipc-shm');
  try {
    await restartAndCheckShm(img, out);
  } finally {
    removeKey(key);
  }
});

test('a System V segment removed since the checkpoint is created again with its id, key, mode and contents', async () => {
  const { out, img, key } = await checkpointedSegments('ipc-shm-gone');
  try {
    removeKey(key);
    await restartAndCheckShm(img, out);
  } finally {
    removeKey(key);
  }
});

test('a System V segment written since the checkpoint is refused at restart by name, nothing left running', async () => {
  const { out, img, key, id } = await checkpointedSegments('ipc-shm-changed');
  try {
    const addr = syscall(SYS_SHMAT, 'shmat', id, 0, 0);
    const mem = fs.openSync('/proc/self/mem', 'r+');
    fs.writeSync(mem, Buffer.from('changed'), 0, 7, addr + 100);
    fs.closeSync(mem);
    syscall(SYS_SHMDT, 'shmdt', addr);
    assert.throws(() => restartVerified(img), new RegExp(`System V segment ${id} \\(key 0x${hexKey(key)}\\): segment ${id} exists with other contents; remove it \\(ipcrm -m ${id}\\)`));
    assert.match(fs.readFileSync(out, 'utf8'), /^ready [^\n]*\n$/);
  } finally {
    removeKey(key);
  }
});

test('a System V attachment partly unmapped is refused by name and the target goes on', async () => {
  const dir = tmpdir('ipc-shm-partial');
  const out = path.join(dir, 'out');
  const key = shmKey();
  const pid = procs.start(build('ipc_shm'), [hexKey(key), 'partial'], out, { cwd: dir });
  try {
    const id = Number(/^ready (\d+) /m.exec(await waitFor(out, /^ready .*$/m))![1]);
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), new RegExp(`pid ${pid}: vma [0-9a-f]+-[0-9a-f]+ \\(/SYSV${hexKey(key)} \\(deleted\\)\\): part of the attachment of System V segment ${id} at 0x[0-9a-f]+ was unmapped or moved`));
    assertLeftRunning(pid);
  } finally {
    removeKey(key);
  }
});

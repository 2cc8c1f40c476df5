// pidfds: a process (or, with PIDFD_THREAD, a thread) of the tree, alive
// or a zombie, the process itself, or one that has exited and been reaped.
// fdinfo's Pid: names the process (-1 once it is gone). At restart every
// process and zombie of the tree exists before fds are opened, with its
// saved pid, so pidfd_open in the task finds it again. A pidfd of a process
// gone for good is one stasis makes of a child of its own that it lets die
// and reaps, handed to the task through /proc (PidfdKeeper). A pidfd of a
// process outside the tree is refused by name (src/kinds/procfs.ts), as is
// a restart under other pids.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { syscall, waitpidSync, __WALL } from '../sys/libc';
import { spawnBlank } from '../ptrace/blank';
import { StasisError } from '../sys/errno';
import { pidOrZero } from '../image/fields';
import type { ImageProcess } from '../image/schema';
import { FdKind, CommonFd, openHeld } from './fdkind';

const O_NONBLOCK = 0o4000, O_EXCL = 0o200, O_RDWR = 2, F_SETFD = 2, F_SETFL = 4;
/** pidfd_open flags: PIDFD_NONBLOCK is O_NONBLOCK, PIDFD_THREAD is O_EXCL. */
const PIDFD_FLAGS = O_NONBLOCK | O_EXCL;

/** The process (pid as seen at checkpoint, 0: exited and reaped), and whether the pidfd is of one thread (PIDFD_THREAD). */
export const PidfdState = lazySchema(() => z.object({ pid: pidOrZero, thread: z.boolean() }));
export const PidfdFd = lazySchema(() => z.object({ kind: z.literal('pidfd'), pidfd: PidfdState }));
type PidfdFd = z.infer<typeof PidfdFd>;

export const pidfdKind: FdKind<PidfdFd> = {
  kinds: ['pidfd'],
  claims: (f) => f.target === 'anon_inode:[pidfd]',
  dump(f) {
    const pid = Number(f.info().raw.Pid ?? NaN);
    if (!Number.isInteger(pid)) throw new StasisError(`${f.where}: pidfd without Pid: in fdinfo`);
    return { kind: 'pidfd', pos: 0, pidfd: { pid: Math.max(pid, 0), thread: (f.info().flags & O_EXCL) !== 0 } };
  },
  sharingKey: (r) => `pidfd:${r.pidfd.pid}`,
  check(r, _creds, where, ownTasks) {
    if (r.pidfd.pid && !ownTasks.has(r.pidfd.pid)) throw new StasisError(`${where}: a pidfd of pid ${r.pidfd.pid}, which is no task of the image`);
  },
  open(remote, r, ctx, where) {
    if (r.pidfd.pid === 0) {
      if (!ctx.deadPidfd) throw new StasisError(`${where}: no pidfd of an exited process was made for this restart`);
      return takeDeadPidfd(remote, ctx.deadPidfd, r, where);
    }
    const fd = remote.call('pidfd_open', SYS.pidfd_open, [r.pidfd.pid, (r.flags & PIDFD_FLAGS)], `${where}: pidfd of ${r.pidfd.thread ? 'thread' : 'pid'} ${r.pidfd.pid}`);
    // pidfd_open always sets close-on-exec.
    if (!r.cloexec) remote.call('fcntl', SYS.fcntl, [fd, F_SETFD, 0], where);
    return fd;
  },
};

/**
 * A pidfd of an exited process, taken by the task with pidfd_getfd (its
 * open file description as pidfd_open made it), or where it cannot see us,
 * opened through /proc (which adds O_LARGEFILE).
 */
function takeDeadPidfd(remote: Remote, keeper: PidfdKeeper, r: PidfdFd & CommonFd, where: string): number {
  const ours = keeper.take(where);
  let fd: number;
  try {
    const us = remote.call('pidfd_open', SYS.pidfd_open, [process.pid, 0], where);
    try {
      fd = remote.call('pidfd_getfd', SYS.pidfd_getfd, [us, ours, 0], `${where}: pidfd of an exited process`);
    } finally {
      remote.call('close', SYS.close, [us], where);
    }
  } catch {
    return openHeld(remote, keeper.fdPath(ours), { ...r, flags: (r.flags & O_NONBLOCK) | O_RDWR }, where);
  }
  // pidfd_getfd sets close-on-exec; the flags are the open file description's.
  if (!r.cloexec) remote.call('fcntl', SYS.fcntl, [fd, F_SETFD, 0], where);
  if (r.flags & O_NONBLOCK) remote.call('fcntl', SYS.fcntl, [fd, F_SETFL, O_NONBLOCK], where);
  return fd;
}

/**
 * Restore side: pidfds of a process that has exited and been reaped (a
 * child of ours, let die), one open file description for each record that
 * needs one, made only when an image has them.
 */
export class PidfdKeeper {
  private readonly fds: number[] = [];
  private given = 0;
  /** How a task reaches one of our fds (through the namespace init in a user-namespace restart). */
  fdPath = (fd: number) => `/proc/${process.pid}/fd/${fd}`;

  constructor(processes: ImageProcess[]) {
    const wanted = processes.reduce((n, p) => n + p.fds.filter((f) => f.kind === 'pidfd' && f.pidfd.pid === 0 && f.sameAs === undefined && !f.sharedWith).length, 0);
    if (!wanted) return;
    const pid = spawnBlank();
    try {
      for (let i = 0; i < wanted; i++) this.fds.push(syscall(SYS.pidfd_open, 'pidfd_open (a process to let die)', pid, 0));
    } catch (e) {
      this.close();
      throw e;
    } finally {
      process.kill(pid, 'SIGKILL');
      waitpidSync(pid, __WALL);
    }
  }

  /** The next of our pidfds not yet handed to a task. */
  take(where: string): number {
    const fd = this.fds[this.given++];
    if (fd === undefined) throw new StasisError(`${where}: more pidfds of exited processes than the image has records for`);
    return fd;
  }

  heldFds(): number[] {
    return [...this.fds];
  }

  close(): void {
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
  }
}

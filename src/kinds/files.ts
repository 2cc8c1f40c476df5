// File descriptors: regular files, directories, a few harmless character
// devices, pipes and FIFOs, memfds, eventfds, signalfds, timerfds, epolls, at the same numbers, with open flags, offset,
// close-on-exec and shared open file descriptions (dup'ed fds share one
// offset, within a process and across fork).
import fs from 'node:fs';
import { listFds, readFdinfo } from '../proc';
import { ImageFd } from '../image/schema';
import { Remote, AT_FDCWD } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';
import { fileIdentity } from './memory';
import { PipeTable, PipeKeeper } from './pipes';
import { MemfdTable, MemfdKeeper, memfdName } from './memfd';
import { isEventfd, dumpEventfd, createEventfd } from './eventfd';
import { dumpSignalfd, dumpTimerfd, createSignalfd, createTimerfd } from './timerfd';
import { isEpoll, dumpEpoll, createEpoll } from './epoll';
import { procPidOf } from './procfs';

const O_CLOEXEC = 0o2000000, O_CREAT = 0o100, O_EXCL = 0o200, O_TRUNC = 0o1000, O_PATH = 0o10000000;
const KCMP_FILE = 0;
const SEEK_SET = 0;

/** Character devices with no state of their own: reopened by path. */
const PLAIN_DEVICES: Record<string, string> = {
  '1:3': '/dev/null', '1:5': '/dev/zero', '1:7': '/dev/full', '1:8': '/dev/random', '1:9': '/dev/urandom',
};

/** Name the kind of an fd we cannot save, from its /proc link. */
function describeLink(target: string): string {
  const m = /^(\w+):\[/.exec(target);
  if (m) {
    const kind = m[1];
    return kind === 'socket' ? 'socket' : kind === 'pipe' ? 'pipe' : `${kind}`;
  }
  const anon = /^anon_inode:\[?([\w-]+)\]?/.exec(target);
  if (anon) return anon[1];
  if (target.startsWith('/dev/pts/') || target.startsWith('/dev/tty')) return `terminal ${target}`;
  return target;
}

/** The same open file description: compared by the kernel (kcmp). */
function sameFile(pidA: number, fdA: number, pidB: number, fdB: number): boolean {
  return syscall(SYS.kcmp, 'kcmp', pidA, pidB, KCMP_FILE, fdA, fdB) === 0;
}

function key(f: ImageFd): string {
  if (f.pipe !== undefined) return `pipe:${f.pipe}`;
  if (f.memfd !== undefined) return `memfd:${f.memfd}`;
  if (f.eventfd) return `eventfd:${f.eventfd.id}`;
  if (f.signalfd || f.timerfd || f.epoll) return f.path; // kcmp tells them apart
  return `path:${f.path}`;
}

/**
 * The fds of one process. `earlier` holds the fds of processes already
 * dumped (parents first): an fd inherited through fork is recorded as
 * shared with theirs.
 */
export function dumpFds(pid: number, pipes: PipeTable, earlier: Array<{ pid: number; fds: ImageFd[] }> = [], memfds?: MemfdTable): ImageFd[] {
  const out: ImageFd[] = [];
  for (const { fd, target } of listFds(pid)) {
    const where = pid ? `fd ${fd} of pid ${pid}` : `fd ${fd}`;
    const pipeLink = /^pipe:\[(\d+)\]$/.exec(target);
    if (pipeLink) {
      const info = readFdinfo(pid, fd);
      out.push(withSharing({
        fd, kind: 'pipe', path: target, flags: info.flags & ~O_CLOEXEC, pos: 0, cloexec: (info.flags & O_CLOEXEC) !== 0,
        pipe: pipes.note(pid, fd, 'pipe', Number(pipeLink[1])),
      }, pid, out, earlier));
      continue;
    }
    if (isEventfd(target) || isEpoll(target) || target === 'anon_inode:[signalfd]' || target === 'anon_inode:[timerfd]') {
      const info = readFdinfo(pid, fd);
      const base = { fd, path: target, flags: info.flags & ~O_CLOEXEC, pos: 0, cloexec: (info.flags & O_CLOEXEC) !== 0 };
      const entry: ImageFd = isEventfd(target) ? { ...base, kind: 'eventfd', eventfd: dumpEventfd(info, where) }
        : isEpoll(target) ? { ...base, kind: 'epoll', epoll: dumpEpoll(pid, info, where) }
          : target === 'anon_inode:[signalfd]' ? { ...base, kind: 'signalfd', signalfd: dumpSignalfd(info, where) }
            : { ...base, kind: 'timerfd', timerfd: dumpTimerfd(info, where) };
      out.push(withSharing(entry, pid, out, earlier));
      continue;
    }
    if (!target.startsWith('/')) throw new UnsupportedError(`${where}: ${describeLink(target)} is not supported yet`);
    const memfd = memfdName(target);
    if (memfd !== null && memfds) {
      const info = readFdinfo(pid, fd);
      const ino = fs.statSync(`/proc/${pid}/fd/${fd}`).ino;
      out.push(withSharing({
        fd, kind: 'memfd', path: target, flags: info.flags & ~O_CLOEXEC, pos: info.pos, cloexec: (info.flags & O_CLOEXEC) !== 0,
        memfd: memfds.note(ino, memfd, `/proc/${pid}/fd/${fd}`),
      }, pid, out, earlier));
      continue;
    }
    if (target.endsWith(' (deleted)')) throw new UnsupportedError(`${where}: ${target} is an unlinked file, not supported yet`);
    let st: fs.BigIntStats;
    try {
      st = fs.statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
    } catch (e) {
      throw new StasisError(`${where}: cannot stat ${target} (${(e as NodeJS.ErrnoException).code})`);
    }
    const info = readFdinfo(pid, fd);
    const cloexec = (info.flags & O_CLOEXEC) !== 0;
    const flags = info.flags & ~O_CLOEXEC;
    const base = { fd, path: target, flags, pos: info.pos, cloexec };
    let entry: ImageFd;
    if (st.isFile()) entry = { ...base, kind: 'file', file: fileIdentity(target) };
    else if (st.isDirectory()) entry = { ...base, kind: 'dir' };
    else if (st.isFIFO()) entry = { ...base, kind: 'fifo', pos: 0, pipe: pipes.note(pid, fd, 'fifo', Number(st.ino), target) };
    else if (st.isCharacterDevice()) {
      const dev = `${Number(st.rdev >> 8n) & 0xfff}:${Number(st.rdev & 0xffn)}`;
      if (!PLAIN_DEVICES[dev] && (target.startsWith('/dev/pts/') || target.startsWith('/dev/tty'))) {
        throw new UnsupportedError(`${where}: terminal ${target} is not supported yet; start the program with its stdin, stdout and stderr away from the terminal (e.g. </dev/null >log 2>&1)`);
      }
      if (!PLAIN_DEVICES[dev]) throw new UnsupportedError(`${where}: character device ${target} (${dev}) is not supported yet`);
      entry = { ...base, kind: 'chr', path: PLAIN_DEVICES[dev] };
    } else {
      throw new UnsupportedError(`${where}: ${describeLink(target)} is not supported yet`);
    }
    if (entry.kind === 'file' && entry.file!.ino !== Number(st.ino)) {
      throw new StasisError(`${where}: ${target} was replaced by another file while open`);
    }
    out.push(withSharing(entry, pid, out, earlier));
  }
  return out;
}

/** One open file description behind several fds must stay one. */
function withSharing(entry: ImageFd, pid: number, mine: ImageFd[], earlier: Array<{ pid: number; fds: ImageFd[] }>): ImageFd {
  const k = key(entry);
  for (const prev of mine) {
    if (key(prev) !== k || prev.sameAs !== undefined || prev.sharedWith) continue;
    if (sameFile(pid, prev.fd, pid, entry.fd)) return { ...entry, sameAs: prev.fd };
  }
  for (const other of earlier) {
    for (const prev of other.fds) {
      if (key(prev) !== k || prev.sameAs !== undefined || prev.sharedWith) continue;
      if (sameFile(other.pid, prev.fd, pid, entry.fd)) return { ...entry, sharedWith: { pid: other.pid, fd: prev.fd } };
    }
  }
  return entry;
}

/**
 * Restore fds in increasing order (every fd of the fresh task is closed).
 * An fd shared with an earlier process is fetched from it with
 * pidfd_getfd, so both hold one open file description again.
 */
export function restoreFds(remote: Remote, fds: ImageFd[], pipes: PipeKeeper, memfds?: MemfdKeeper): void {
  // An epoll registers other fds of the process: those come first.
  const ordered = [...fds.filter((f) => !f.epoll), ...fds.filter((f) => f.epoll)];
  for (const f of ordered) {
    const where = `fd ${f.fd} (${f.path})`;
    remote.reset();
    if (f.sameAs !== undefined) {
      remote.call('dup3', SYS.dup3, [f.sameAs, f.fd, f.cloexec ? O_CLOEXEC : 0], where);
      continue;
    }
    if (f.sharedWith) {
      const pidfd = remote.call('pidfd_open', SYS.pidfd_open, [f.sharedWith.pid, 0], where);
      const got = remote.call('pidfd_getfd', SYS.pidfd_getfd, [pidfd, f.sharedWith.fd, 0], `${where} from pid ${f.sharedWith.pid}`);
      remote.call('close', SYS.close, [pidfd]);
      remote.call('dup3', SYS.dup3, [got, f.fd, f.cloexec ? O_CLOEXEC : 0], where);
      remote.call('close', SYS.close, [got]);
      continue;
    }
    if (f.eventfd || f.signalfd || f.timerfd || f.epoll) {
      const got = f.epoll ? createEpoll(remote, f.epoll, f.cloexec, where)
        : f.eventfd ? createEventfd(remote, f.eventfd, f.flags, f.cloexec, where)
        : f.signalfd ? createSignalfd(remote, f.signalfd, f.flags, f.cloexec, where)
          : createTimerfd(remote, f.timerfd!, f.flags, f.cloexec, where);
      if (got !== f.fd) {
        remote.call('dup3', SYS.dup3, [got, f.fd, f.cloexec ? O_CLOEXEC : 0], where);
        remote.call('close', SYS.close, [got], where);
      }
      continue;
    }
    const path = f.pipe !== undefined ? pipes.pathFor(f.pipe, f.flags)
      : f.memfd !== undefined && memfds ? memfds.pathFor(f.memfd) : f.path;
    const flags = (f.flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | (f.cloexec ? O_CLOEXEC : 0);
    const got = remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString(path), flags, 0], where);
    if (got !== f.fd) {
      remote.call('dup3', SYS.dup3, [got, f.fd, f.cloexec ? O_CLOEXEC : 0], where);
      remote.call('close', SYS.close, [got], where);
    }
    if ((f.kind === 'file' || f.kind === 'dir' || f.kind === 'memfd') && !(f.flags & O_PATH) && f.pos) {
      remote.call('lseek', SYS.lseek, [f.fd, f.pos, SEEK_SET], where);
    }
  }
}

/**
 * Before any process exists: every file an fd names must be there (the
 * /proc directories of the image's own tasks come into being with them).
 */
export function checkFds(fds: ImageFd[], taskIds: Set<number> = new Set()): void {
  for (const f of fds) {
    if (f.sameAs !== undefined || f.sharedWith || f.kind === 'pipe' || f.kind === 'memfd' || f.kind === 'eventfd' || f.kind === 'signalfd' || f.kind === 'timerfd' || f.kind === 'epoll') continue;
    const procPid = procPidOf(f.path);
    if (procPid !== null && taskIds.has(procPid)) continue;
    if (!fs.existsSync(f.path)) throw new StasisError(`fd ${f.fd}: ${f.path} is missing; restore the file or restart where it exists`);
  }
}

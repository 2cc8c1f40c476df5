// File descriptors: regular files, directories, a few harmless character
// devices, pipes and FIFOs, memfds, eventfds, signalfds, timerfds, epolls, at the same numbers, with open flags, offset,
// close-on-exec and shared open file descriptions (dup'ed fds share one
// offset, within a process and across fork).
import fs from 'node:fs';
import { listFds, readFdinfo, readLimits, Fdinfo } from '../proc';
import { LockTable } from './locks';
import { O_ASYNC } from './fdowner';
import { ImageFd, ImageCreds } from '../image/schema';
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
const RLIMIT_NOFILE = 7;
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

const RESOLVE_NO_SYMLINKS = 0x04;
/** Flags openat2 accepts (VALID_OPEN_FLAGS); openat ignored the others, openat2 refuses them. */
const VALID_OPEN_FLAGS = 0o37777703;

/**
 * Arguments of an openat2 that follows no symlink anywhere in `path` (nor
 * a /proc magic link): a path named by an image reaches exactly that
 * file, not wherever a link planted since points.
 */
export function openNoSymlinks(remote: Remote, path: string, flags: number): number[] {
  const how = Buffer.alloc(24); // struct open_how: flags, mode, resolve
  how.writeBigUInt64LE(BigInt(flags & VALID_OPEN_FLAGS), 0);
  how.writeBigUInt64LE(BigInt(RESOLVE_NO_SYMLINKS), 16);
  return [AT_FDCWD, remote.putString(path), remote.putBytes(how), how.length];
}

/**
 * The open file descriptions met so far in a tree (processes in order,
 * fds in increasing order), to tell which fd shares one with an earlier
 * fd. kcmp(KCMP_FILE) orders open files (by their obfuscated address), so
 * the first fd of each description is kept sorted, per kind, and a new fd
 * is looked up by binary search: a few kcmp calls per fd rather than one
 * per earlier fd of its kind (thousands of fds on /dev/null made it
 * quadratic).
 */
export class OpenFiles {
  private readonly byKind = new Map<string, Array<{ pid: number; fd: number }>>();

  /** The first fd met on the same open file description as `fd` of `pid`, or null (it is the first). */
  firstOf(kind: string, pid: number, fd: number): { pid: number; fd: number } | null {
    let list = this.byKind.get(kind);
    if (!list) this.byKind.set(kind, list = []);
    let lo = 0, hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      // 0: the same; 1: list[mid] orders first; 2: after.
      const order = syscall(SYS.kcmp, 'kcmp', list[mid].pid, pid, KCMP_FILE, list[mid].fd, fd);
      if (order === 0) return list[mid];
      if (order === 1) lo = mid + 1;
      else if (order === 2) hi = mid;
      else throw new StasisError(`kcmp(KCMP_FILE) gave no order for fd ${fd} of pid ${pid} (${order})`);
    }
    list.splice(lo, 0, { pid, fd });
    return null;
  }
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
export function dumpFds(pid: number, pipes: PipeTable, files: OpenFiles = new OpenFiles(), memfds?: MemfdTable, locks?: LockTable, filesSharers?: Set<number>): ImageFd[] {
  const out: ImageFd[] = [];
  /** Shared open file descriptions found, then the locks the fd carries. */
  const add = (entry: ImageFd, info: Fdinfo): void => {
    const e = withSharing(entry, pid, files);
    const held = locks?.note(pid, e.fd, e.path, info.lines, e.sameAs === undefined && !e.sharedWith, filesSharers);
    out.push(held ? { ...e, locks: held } : e);
  };
  for (const { fd, target } of listFds(pid)) {
    const where = pid ? `fd ${fd} of pid ${pid}` : `fd ${fd}`;
    const pipeLink = /^pipe:\[(\d+)\]$/.exec(target);
    if (pipeLink) {
      const info = readFdinfo(pid, fd);
      add({
        fd, kind: 'pipe', path: target, flags: info.flags & ~O_CLOEXEC, pos: 0, cloexec: (info.flags & O_CLOEXEC) !== 0,
        pipe: pipes.note(pid, fd, 'pipe', Number(pipeLink[1])),
      }, info);
      continue;
    }
    if (isEventfd(target) || isEpoll(target) || target === 'anon_inode:[signalfd]' || target === 'anon_inode:[timerfd]') {
      const info = readFdinfo(pid, fd);
      const base = { fd, path: target, flags: info.flags & ~O_CLOEXEC, pos: 0, cloexec: (info.flags & O_CLOEXEC) !== 0 };
      const entry: ImageFd = isEventfd(target) ? { ...base, kind: 'eventfd', eventfd: dumpEventfd(info, where) }
        : isEpoll(target) ? { ...base, kind: 'epoll', epoll: dumpEpoll(pid, info, where) }
          : target === 'anon_inode:[signalfd]' ? { ...base, kind: 'signalfd', signalfd: dumpSignalfd(info, where) }
            : { ...base, kind: 'timerfd', timerfd: dumpTimerfd(info, where) };
      add(entry, info);
      continue;
    }
    if (!target.startsWith('/')) throw new UnsupportedError(`${where}: ${describeLink(target)} is not supported yet`);
    const memfd = memfdName(target);
    if (memfd !== null && memfds) {
      const info = readFdinfo(pid, fd);
      const ino = fs.statSync(`/proc/${pid}/fd/${fd}`).ino;
      add({
        fd, kind: 'memfd', path: target, flags: info.flags & ~O_CLOEXEC, pos: info.pos, cloexec: (info.flags & O_CLOEXEC) !== 0,
        memfd: memfds.note(ino, memfd, `/proc/${pid}/fd/${fd}`),
      }, info);
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
    add(entry, info);
  }
  return out;
}

/** One open file description behind several fds must stay one. */
/** An fd on an open file description met before: the same as an earlier fd of its process, or shared with one of an earlier process. */
function withSharing(entry: ImageFd, pid: number, files: OpenFiles): ImageFd {
  const first = files.firstOf(key(entry), pid, entry.fd);
  if (!first) return entry;
  return first.pid === pid ? { ...entry, sameAs: first.fd } : { ...entry, sharedWith: { pid: first.pid, fd: first.fd } };
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
    // O_ASYNC is set afterwards with F_SETFL (restoreFdOwners): open() would not register it.
    const flags = (f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_ASYNC)) | (f.cloexec ? O_CLOEXEC : 0);
    // Pipes and memfds are stasis's own, reached through /proc; the image's paths are opened without following links.
    const got = f.pipe !== undefined || f.memfd !== undefined
      ? remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString(f.pipe !== undefined ? pipes.pathFor(f.pipe, f.flags) : memfds!.pathFor(f.memfd!)), flags, 0], where)
      : remote.call('openat2', SYS.openat2, openNoSymlinks(remote, f.path, flags), where);
    if (got !== f.fd) {
      remote.call('dup3', SYS.dup3, [got, f.fd, f.cloexec ? O_CLOEXEC : 0], where);
      remote.call('close', SYS.close, [got], where);
    }
    if ((f.kind === 'file' || f.kind === 'dir' || f.kind === 'memfd') && !(f.flags & O_PATH) && f.pos) {
      remote.call('lseek', SYS.lseek, [f.fd, f.pos, SEEK_SET], where);
    }
  }
}

/** The restarter's RLIMIT_NOFILE: the blank tasks inherit it while their fds are made. */
export function openFileLimit(): number {
  const l = readLimits(process.pid).find((x) => x.resource === RLIMIT_NOFILE);
  return l === undefined || l.soft > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(l.soft);
}

const CAP_DAC_OVERRIDE = 1n, CAP_DAC_READ_SEARCH = 2n;
const O_ACCMODE = 3;

/**
 * Could the saved process itself have opened this file so? Its fs
 * credentials and capabilities from the image against the file's owner
 * and mode bits (ACLs are not consulted: they may only refuse more).
 * A restart as root must not open what the image's process could not.
 */
export function mayOpen(st: fs.Stats, flags: number, creds: ImageCreds): boolean {
  if (flags & O_PATH) return true;
  const acc = flags & O_ACCMODE;
  const read = acc !== 1, write = acc !== 0;
  const caps = BigInt(creds.capEff);
  if (caps & (1n << CAP_DAC_OVERRIDE)) return true;
  if (!write && caps & (1n << CAP_DAC_READ_SEARCH)) return true;
  const fsuid = creds.uid[3], fsgid = creds.gid[3];
  const bits = st.uid === fsuid ? (st.mode >> 6) & 7
    : st.gid === fsgid || creds.groups.includes(st.gid) ? (st.mode >> 3) & 7 : st.mode & 7;
  return (!read || (bits & 4) !== 0) && (!write || (bits & 2) !== 0);
}

/**
 * Before any process exists: every fd fits under the restarter's
 * RLIMIT_NOFILE, and every file an fd names is there, is no symlink, is
 * the same file (device and inode) for a regular file, and could have been
 * opened that way by the saved process.
 */
export function checkFds(fds: ImageFd[], creds: ImageCreds, pid: number, taskIds: Set<number> = new Set(), limit = openFileLimit()): void {
  for (const f of fds) {
    if (f.fd >= limit) throw new StasisError(`pid ${pid}: fd ${f.fd} is at or above this restarter's RLIMIT_NOFILE (${limit}); raise it (ulimit -n) and restart again`);
  }
  for (const f of fds) {
    if (f.sameAs !== undefined || f.sharedWith || (f.kind !== 'file' && f.kind !== 'dir' && f.kind !== 'chr')) continue;
    const where = `pid ${pid}: fd ${f.fd}`;
    // /proc directories of the image's own tasks come into being with them.
    const procPid = procPidOf(f.path);
    if (procPid !== null && taskIds.has(procPid)) continue;
    let st: fs.Stats;
    try {
      st = fs.lstatSync(f.path);
    } catch (e) {
      throw new StasisError(`${where}: ${f.path} is missing (${(e as NodeJS.ErrnoException).code}); restore the file or restart where it exists`);
    }
    if (st.isSymbolicLink()) throw new StasisError(`${where}: ${f.path} is now a symbolic link; refusing to follow it`);
    if (f.kind === 'chr' && !Object.values(PLAIN_DEVICES).includes(f.path)) throw new StasisError(`${where}: ${f.path} is not one of the devices a checkpoint saves`);
    const right = f.kind === 'file' ? st.isFile() : f.kind === 'dir' ? st.isDirectory() : st.isCharacterDevice();
    if (!right) throw new StasisError(`${where}: ${f.path} is no longer a ${f.kind === 'chr' ? 'character device' : f.kind === 'dir' ? 'directory' : 'regular file'}`);
    if (f.kind === 'file' && (st.dev !== f.file!.dev || st.ino !== f.file!.ino)) {
      throw new StasisError(`${where}: ${f.path} is not the file the image had open (inode ${f.file!.dev}:${f.file!.ino}, now ${st.dev}:${st.ino}); refusing to open a different file`);
    }
    if (!mayOpen(st, f.flags, creds)) {
      throw new StasisError(`${where}: the saved process (uid ${creds.uid[3]}) could not open ${f.path} ${(f.flags & O_ACCMODE) === 0 ? 'for reading' : 'for writing'}; refusing to open it with this restarter's rights`);
    }
  }
}

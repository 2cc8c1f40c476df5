// inotify: every watch with its mask and watch descriptor, re-added by path
// at restart. fdinfo names a watched inode by device, inode number and file
// handle; its path is found with open_by_handle_at (needs
// CAP_DAC_READ_SEARCH) or, for an ordinary user, among the paths the
// process holds (cwd, root, open files, their directories and what those
// directories hold). Watch descriptors come back as they were: the kernel
// hands them out increasing, so watches are added in order and a gap is
// skipped with placeholder watches added and removed again (their
// IN_IGNORED events are read away before anything runs). Events not yet
// read cannot be put back into a new queue: refused by name.
import fs from 'node:fs';
import path from 'node:path';
import { z, lazySchema } from '../image/zod';
import { check } from '../image/checks';
import type { ImageCreds } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError, errnoName } from '../sys/errno';
import { int, hex32, count, path as pathField } from '../image/fields';
import { listFds } from '../proc';
import { FdKind, FoundFd } from './fdkind';
import { mayOpen, openNoSymlinks } from './regular';

const SYS_INOTIFY_INIT1 = 294, SYS_INOTIFY_ADD_WATCH = 254, SYS_INOTIFY_RM_WATCH = 255, SYS_OPEN_BY_HANDLE_AT = 304;
const FIONREAD = 0x541b, IN_ATTRIB = 0x4;
const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000, O_PATH = 0o10000000, O_NOFOLLOW = 0o400000, O_DIRECTORY = 0o200000;
/** Placeholder watches a restart may add to reach the saved watch descriptors. */
export const MAX_PLACEHOLDERS = 1 << 16;
/** Placeholders added between two reads of their IN_IGNORED events (well under max_queued_events). */
const PLACEHOLDERS_PER_DRAIN = 1024;
/** Entries an ordinary user's search for a watched path looks at, at most. */
const SEARCH_LIMIT = 50000;

/** One watch: its descriptor, mask (fdinfo's, with IN_ONESHOT and IN_EXCL_UNLINK), the inode and the path it was found at. */
export const InotifyWatch = lazySchema(() => z.object({ wd: int(1, 0x7fffffff), mask: hex32, path: pathField, dev: count, ino: count }));
export type InotifyWatch = z.infer<typeof InotifyWatch>;
/** Watches in increasing wd order, reachable with at most MAX_PLACEHOLDERS placeholders. */
type Wds = Array<{ wd?: unknown } | undefined>;
const wdsIncreasing = check('inotifyWdsIncreasing', (ws: Wds) => ws.every((w, i) => i === 0 || typeof w?.wd !== 'number' || typeof ws[i - 1]?.wd !== 'number' || w.wd > (ws[i - 1]!.wd as number)));
const fewPlaceholders = check('inotifyFewPlaceholders', (ws: Wds) => {
  const last = ws[ws.length - 1]?.wd;
  return ws.length === 0 || typeof last !== 'number' || last - ws.length <= MAX_PLACEHOLDERS;
});
export const InotifyWatches = lazySchema(() => z.array(InotifyWatch).max(1 << 20)
  .refine(wdsIncreasing, 'watch descriptors not increasing')
  .refine(fewPlaceholders, `more than ${MAX_PLACEHOLDERS} placeholder watches needed`));
export const InotifyFd = lazySchema(() => z.object({ kind: z.literal('inotify'), inotify: InotifyWatches }));
type InotifyFd = z.infer<typeof InotifyFd>;

export const inotifyKind: FdKind<InotifyFd> = {
  kinds: ['inotify'],
  claims: (f) => f.target === 'anon_inode:inotify',
  dump: (f) => ({ kind: 'inotify', pos: 0, inotify: dumpWatches(f) }),
  open: (remote, r, _ctx, where) => createInotify(remote, r.inotify, r.flags, r.cloexec, where),
  check(r, creds, where) {
    for (const w of r.inotify) checkWatch(w, creds, `${where}: watch ${w.wd}`);
  },
};

interface FdinfoWatch { wd: number; ino: bigint; sdev: number; mask: number; handle?: { type: number; bytes: Buffer } }

/** The `inotify wd:...` lines of an inotify fd's fdinfo. */
export function parseWatches(lines: string[]): FdinfoWatch[] {
  const out: FdinfoWatch[] = [];
  for (const l of lines) {
    const m = /^inotify wd:(\d+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:[0-9a-f]+(?: fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]+))?/.exec(l);
    if (!m) continue;
    const w: FdinfoWatch = { wd: Number(m[1]), ino: BigInt('0x' + m[2]), sdev: parseInt(m[3], 16), mask: parseInt(m[4], 16) };
    if (m[7]) w.handle = { type: parseInt(m[6], 16), bytes: Buffer.from(m[7], 'hex') };
    out.push(w);
  }
  return out.sort((a, b) => a.wd - b.wd);
}

/** The kernel's internal dev_t (major << 20 | minor), as stat(2) reports it. */
export function userDev(sdev: number): bigint {
  const major = BigInt(sdev >>> 20), minor = BigInt(sdev & 0xfffff);
  return ((major & 0xfffff000n) << 32n) | ((major & 0xfffn) << 8n) | ((minor & 0xffffff00n) << 12n) | (minor & 0xffn);
}

function dumpWatches(f: FoundFd): InotifyWatch[] {
  const unread = unreadBytes(f);
  if (unread > 0) throw new UnsupportedError(`${f.where}: inotify fd ${f.fd} has ${unread} bytes of unread events; not supported (they cannot be queued again): checkpoint when the program has read them`);
  const watches = parseWatches(f.info().lines);
  const last = watches.length ? watches[watches.length - 1].wd : 0;
  if (last - watches.length > MAX_PLACEHOLDERS) {
    throw new UnsupportedError(`${f.where}: inotify watch descriptor ${last} with only ${watches.length} watches would need ${last - watches.length} placeholder watches at restart (at most ${MAX_PLACEHOLDERS}); not supported`);
  }
  const search = new PathSearch(f.pid);
  return watches.map((w) => {
    const dev = userDev(w.sdev);
    const p = byHandle(w, dev) ?? search.find(dev, w.ino);
    if (!p) {
      throw new UnsupportedError(`${f.where}: inotify watch ${w.wd} is on inode ${w.ino} of device ${w.sdev >>> 20}:${w.sdev & 0xfffff}, found at no path the process holds (without CAP_DAC_READ_SEARCH stasis looks only at its cwd, root, open files and their directories); not supported: checkpoint as root, or watch a path under the process's cwd`);
    }
    return { wd: w.wd, mask: '0x' + w.mask.toString(16), path: p, dev: Number(dev), ino: Number(w.ino) };
  });
}

/** FIONREAD of the inotify fd, on a copy taken with pidfd_getfd. */
function unreadBytes(f: FoundFd): number {
  const pidfd = syscall(SYS.pidfd_open, 'pidfd_open', f.pid, 0);
  try {
    const copy = syscall(SYS.pidfd_getfd, `pidfd_getfd (${f.where})`, pidfd, f.fd, 0);
    try {
      const n = Buffer.alloc(4);
      syscall(SYS.ioctl, `ioctl(FIONREAD) (${f.where})`, copy, FIONREAD, n);
      return n.readInt32LE(0);
    } finally {
      fs.closeSync(copy);
    }
  } finally {
    fs.closeSync(pidfd);
  }
}

/** Whether `p` (not followed if a symlink) is the inode dev:ino. */
function isInode(p: string, dev: bigint, ino: bigint): boolean {
  try {
    const st = fs.lstatSync(p, { bigint: true });
    return st.dev === dev && st.ino === ino;
  } catch {
    return false;
  }
}

/** Mount points of a device in our mount namespace, those showing the whole file system first. */
function mountsOf(dev: bigint): string[] {
  const out: Array<{ at: string; whole: boolean }> = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const [maj, min] = f[2].split(':').map(Number);
    if (userDev((maj << 20) | min) !== dev) continue;
    out.push({ at: f[4].replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))), whole: f[3] === '/' });
  }
  return out.sort((a, b) => Number(b.whole) - Number(a.whole)).map((m) => m.at);
}

/** The path of a watched inode from its file handle (CAP_DAC_READ_SEARCH), or null. */
function byHandle(w: FdinfoWatch, dev: bigint): string | null {
  if (!w.handle) return null;
  const fh = Buffer.alloc(8 + w.handle.bytes.length);
  fh.writeUInt32LE(w.handle.bytes.length, 0);
  fh.writeInt32LE(w.handle.type, 4);
  w.handle.bytes.copy(fh, 8);
  for (const mnt of mountsOf(dev)) {
    let mfd: number;
    try {
      mfd = fs.openSync(mnt, O_PATH | O_DIRECTORY);
    } catch {
      continue;
    }
    try {
      const fd = syscall(SYS_OPEN_BY_HANDLE_AT, 'open_by_handle_at', mfd, fh, O_PATH | O_NOFOLLOW | O_CLOEXEC);
      try {
        const p = fs.readlinkSync(`/proc/self/fd/${fd}`);
        if (p.startsWith('/') && isInode(p, dev, w.ino)) return p;
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      // EPERM without CAP_DAC_READ_SEARCH, ESTALE, EOPNOTSUPP: search instead
    } finally {
      fs.closeSync(mfd);
    }
  }
  return null;
}

/**
 * An ordinary user's way to a watched inode: the paths the process holds
 * (cwd, root, files open, mapped files), every directory above them, and
 * the entries of those directories; indexed once per inotify fd.
 */
class PathSearch {
  private index?: Map<string, string>;

  constructor(private readonly pid: number) {}

  find(dev: bigint, ino: bigint): string | null {
    this.index ??= this.build();
    return this.index.get(`${dev}:${ino}`) ?? null;
  }

  private build(): Map<string, string> {
    const held = new Set<string>();
    for (const l of ['cwd', 'root']) {
      try { held.add(fs.readlinkSync(`/proc/${this.pid}/${l}`)); } catch { /* gone */ }
    }
    for (const { target } of listFds(this.pid)) if (target.startsWith('/') && !target.endsWith(' (deleted)')) held.add(target);
    try {
      for (const line of fs.readFileSync(`/proc/${this.pid}/maps`, 'utf8').split('\n')) {
        const p = line.split(/\s+/).slice(5).join(' ');
        if (p.startsWith('/') && !p.endsWith(' (deleted)')) held.add(p);
      }
    } catch { /* gone */ }
    const dirs = new Set<string>();
    for (const p of held) for (let d = p; ; d = path.dirname(d)) {
      dirs.add(d);
      if (d === '/') break;
    }
    const index = new Map<string, string>();
    let looked = 0;
    const note = (p: string) => {
      if (looked++ > SEARCH_LIMIT) return;
      try {
        const st = fs.lstatSync(p, { bigint: true });
        const key = `${st.dev}:${st.ino}`;
        if (!index.has(key)) index.set(key, p);
      } catch { /* unreadable */ }
    };
    for (const p of [...held, ...dirs]) note(p);
    for (const d of dirs) {
      let names: string[] = [];
      try { names = fs.readdirSync(d); } catch { /* not ours to read */ }
      for (const n of names) note(path.join(d, n));
    }
    return index;
  }
}

/** Before any process exists: the path still names the watched inode, without symlinks, and the saved process could read it. */
function checkWatch(w: InotifyWatch, creds: ImageCreds, where: string): void {
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(w.path, { bigint: true });
  } catch (e) {
    throw new StasisError(`${where}: ${w.path} is missing (${(e as NodeJS.ErrnoException).code}); restore it or restart where it exists`);
  }
  if (st.dev !== BigInt(w.dev) || st.ino !== BigInt(w.ino)) {
    throw new StasisError(`${where}: ${w.path} is not the inode the image watched (${w.dev}:${w.ino}, now ${st.dev}:${st.ino}); refusing to watch another`);
  }
  let real: string;
  try {
    real = path.join(fs.realpathSync(path.dirname(w.path)), path.basename(w.path));
  } catch (e) {
    throw new StasisError(`${where}: ${w.path}: ${(e as NodeJS.ErrnoException).code}`);
  }
  if (real !== w.path && w.path !== '/') throw new StasisError(`${where}: ${w.path} goes through a symbolic link (to ${real}); refusing to follow it`);
  // inotify_add_watch needs read permission on the inode.
  if (!mayOpen(fs.lstatSync(w.path), 0, creds)) throw new StasisError(`${where}: the saved process (uid ${creds.uid[3]}) could not read ${w.path}, so could not watch it; refusing to watch it with this restarter's rights`);
}

/** A directory no watch is on, for placeholders (a placeholder on a watched inode would be merged into its watch). */
function placeholderDir(watches: InotifyWatch[], where: string): string {
  for (const p of ['/', '/proc', '/dev', '/sys', '/tmp', '/etc', '/usr']) {
    if (!watches.some((w) => isInode(p, BigInt(w.dev), BigInt(w.ino)))) return p;
  }
  throw new StasisError(`${where}: every placeholder directory is watched`);
}

/** A new inotify in the task with every watch at its saved descriptor; returns its fd. */
function createInotify(remote: Remote, watches: InotifyWatch[], flags: number, cloexec: boolean, where: string): number {
  const ifd = remote.call('inotify_init1', SYS_INOTIFY_INIT1, [(flags & O_NONBLOCK) | (cloexec ? O_CLOEXEC : 0)], where);
  let next = 1; // the wd a fresh inotify hands out first
  let holder = -1;
  for (const w of watches) {
    if (w.wd > next) {
      if (holder < 0) {
        remote.reset();
        holder = remote.call('openat2', SYS.openat2, openNoSymlinks(remote, placeholderDir(watches, where), O_PATH | O_DIRECTORY | O_CLOEXEC), `${where}: placeholder directory`);
      }
      next = skipTo(remote, ifd, holder, next, w.wd, where);
    }
    remote.reset();
    const tmp = remote.call('openat2', SYS.openat2, openNoSymlinks(remote, w.path, O_PATH | O_NOFOLLOW | O_CLOEXEC), `${where}: ${w.path}`);
    remote.reset();
    const got = remote.call('inotify_add_watch', SYS_INOTIFY_ADD_WATCH, [ifd, remote.putString(`/proc/self/fd/${tmp}`), Number(BigInt(w.mask))], `${where}: watch ${w.wd} on ${w.path}`);
    remote.call('close', SYS.close, [tmp], where);
    if (got !== w.wd) throw new StasisError(`${where}: watching ${w.path} gave watch descriptor ${got}, not ${w.wd} (is it watched twice?)`);
    next = w.wd + 1;
  }
  if (holder >= 0) remote.call('close', SYS.close, [holder], where);
  return ifd;
}

/** Placeholder watches added and removed until the next wd handed out is `wd`; their events read away. */
function skipTo(remote: Remote, ifd: number, holder: number, next: number, wd: number, where: string): number {
  while (next < wd) {
    const n = Math.min(wd - next, PLACEHOLDERS_PER_DRAIN);
    remote.reset();
    const name = remote.putString(`/proc/self/fd/${holder}`);
    const calls = [];
    for (let k = next; k < next + n; k++) {
      calls.push({ name: 'inotify_add_watch', nr: SYS_INOTIFY_ADD_WATCH, args: [ifd, name, IN_ATTRIB], where: `${where}: placeholder watch ${k}` });
      calls.push({ name: 'inotify_rm_watch', nr: SYS_INOTIFY_RM_WATCH, args: [ifd, k], where: `${where}: placeholder watch ${k}` });
    }
    const got = remote.batch(calls);
    for (let i = 0; i < n; i++) {
      if (got[2 * i] !== next + i) throw new StasisError(`${where}: placeholder watch got descriptor ${got[2 * i]}, not ${next + i}`);
    }
    next += n;
    drain(remote, ifd, where);
  }
  return next;
}

/** Read every queued event (the placeholders' IN_IGNORED) out of the new inotify. */
function drain(remote: Remote, ifd: number, where: string): void {
  for (;;) {
    remote.reset();
    const n = remote.alloc(4);
    remote.call('ioctl', SYS.ioctl, [ifd, FIONREAD, n], `${where}: FIONREAD`);
    const queued = remote.read(n, 4).readInt32LE(0);
    if (queued <= 0) return;
    const size = Math.min(queued, remote.scratchSize - 64);
    const buf = remote.alloc(size);
    const got = remote.call('read', SYS.read, [ifd, buf, size], `${where}: placeholder events`);
    if (got <= 0) throw new StasisError(`${where}: reading placeholder events gave ${got < 0 ? errnoName(-got) : 'nothing'}`);
  }
}

// Deleted files (CRIU's "ghost files"): regular files unlinked while a
// process holds them open or mapped, those of /dev/shm included (glibc's
// sem_open semaphores, Python multiprocessing's shared heap). Their
// contents travel in the Objects record (holes skipped), each file once
// however many fds and mappings of the tree hold it. At restart stasis
// makes each one again in its original directory (O_TMPFILE, so no
// half-written file is ever visible), links it under its old name just
// long enough to reopen it there, and unlinks it before any task exists:
// the tasks open it through stasis's own fd, so every fd and mapping meets
// the same file, under its old name, still deleted.
import fs from 'node:fs';
import nodePath from 'node:path';
import { z, lazySchema } from '../image/zod';
import { outsideFdLinks, readMaps } from '../proc';
import type { ImageCreds } from '../image/schema';
import type { LoadedImage } from '../image/load';
import { syscall } from '../sys/libc';
import { SYS } from '../sys/x86';
import { StasisError, UnsupportedError, SyscallError } from '../sys/errno';
import { count, int, path, base64Max, decimalI64 } from '../image/fields';
import { FdKind, FoundFd, ObjectTable, openHeld, seekTo } from './fdkind';
import { dataRanges } from './memfd';

const DELETED = ' (deleted)';
/** Default of --ghost-limit: bytes of data one deleted file may carry into an image. */
export const DEFAULT_GHOST_LIMIT = 64 << 20;
/** The most --ghost-limit allows, and the most all deleted files of one image carry: the Objects record is at most 1 GiB of JSON (base64 adds a third). */
export const GHOST_LIMIT_MAX = 512 << 20;

/** A deleted file with its contents (the `ghosts` table of the Objects record). */
export const ImageGhost = lazySchema(() => z.object({
  /** its id in this image: fds and mappings name it */
  id: count,
  /** where it was before it was unlinked: re-created in that directory, under that name */
  path,
  /** permission bits (st_mode & 07777), owner and group */
  mode: int(0, 0o7777),
  uid: int(0, 0xfffffffe),
  gid: int(0, 0xfffffffe),
  size: count,
  /** last access and modification, ns since the epoch, decimal (set again with futimens; the change time cannot be) */
  atimeNs: decimalI64,
  mtimeNs: decimalI64,
  /** data segments (holes are not saved), base64 */
  segments: z.array(z.object({ offset: count, data: base64Max(GHOST_LIMIT_MAX) })).max(1 << 20),
}));
export type ImageGhost = z.infer<typeof ImageGhost>;

/** An fd on a deleted file: its id in the ghosts table; the common `path` is the /proc link ("... (deleted)"). */
export const GhostFd = lazySchema(() => z.object({ kind: z.literal('ghost'), ghost: count }));
type GhostFd = z.infer<typeof GhostFd>;

/** "/dir/name (deleted)" -> "/dir/name" for an absolute path, else null. */
export function ghostPath(link: string): string | null {
  return link.startsWith('/') && link.endsWith(DELETED) ? link.slice(0, -DELETED.length) : null;
}

/** "major:minor" of a stat st_dev (the kernel's new_encode_dev), as /proc/PID/maps prints it in hex. */
function devKey(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
}

interface Noted {
  id: number;
  path: string;
  /** how stasis reads it: an fd of a task (preferred) or a map_files link */
  procPath: string;
  where: string;
  st?: fs.BigIntStats;
  ranges?: Array<[number, number]>;
}

/** Checkpoint side: every deleted file the tree holds, by device and inode. */
export class GhostTable implements ObjectTable {
  /** --ghost-limit: the most bytes of data one file may carry */
  limit = DEFAULT_GHOST_LIMIT;
  /** false: metadata only (restart --verify reads the tree back) */
  contents = true;
  private readonly files = new Map<string, Noted>();
  private settled = false;

  /** A deleted file seen at `procPath` (an fd or map_files link of a task); returns its id. */
  note(key: string, path: string, procPath: string, where: string): number {
    const known = this.files.get(key);
    if (known) {
      // An fd is better than a map_files link: anyone who may trace the task
      // opens it, where map_files needs CAP_CHECKPOINT_RESTORE.
      if (known.procPath.includes('/map_files/') && !procPath.includes('/map_files/')) {
        Object.assign(known, { procPath, where, st: undefined });
        this.settled = false;
      }
      return known.id;
    }
    const id = this.files.size + 1;
    this.files.set(key, { id, path, procPath, where });
    this.settled = false;
    return id;
  }

  private readonly dirs = new Map<string, Map<string, string>>();

  /**
   * Another name, in the same directory, of a deleted name still mapped
   * (glibc's sem_open maps a temporary name, links the semaphore's name to
   * it and removes the temporary one): such a file is not deleted, and is
   * mapped by that name. Each directory is read once per checkpoint.
   */
  linkedName(v: { dev: string; inode: number; path: string }): string | null {
    const p = ghostPath(v.path);
    if (!p) return null;
    const dir = nodePath.dirname(p);
    let index = this.dirs.get(dir);
    if (!index) {
      this.dirs.set(dir, index = new Map());
      let names: string[] = [];
      try { names = fs.readdirSync(dir); } catch { /* gone: no other name there */ }
      for (const n of names.length <= 65536 ? names : []) {
        const at = nodePath.join(dir, n);
        try {
          const st = fs.lstatSync(at, { bigint: true });
          if (st.isFile()) index.set(`${devKey(st.dev)}:${st.ino}`, at);
        } catch { /* removed meanwhile */ }
      }
    }
    return index.get(`${v.dev}:${v.inode}`) ?? null;
  }

  noteFd(f: FoundFd): number {
    const st = f.stat();
    return this.note(`${devKey(st.dev)}:${st.ino}`, ghostPath(f.target)!, `/proc/${f.pid}/fd/${f.fd}`, f.where);
  }

  noteMapping(pid: number, v: { start: number; end: number; dev: string; inode: number; path: string }, label: string): number {
    return this.note(`${v.dev}:${v.inode}`, ghostPath(v.path)!, `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`, `pid ${pid}: ${label}`);
  }

  /** Every file noted: readable, a regular file with no name left, under the limit, its directory still there. */
  private settle(): void {
    if (this.settled) return;
    let total = 0;
    for (const g of this.files.values()) {
      const what = `${g.where}: deleted file ${g.path}`;
      if (!g.st) {
        try {
          g.st = fs.statSync(g.procPath, { bigint: true });
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'EPERM' && g.procPath.includes('/map_files/')) {
            throw new UnsupportedError(`${what}: only mapped, not held as an fd, and reading it through map_files needs CAP_CHECKPOINT_RESTORE (EPERM): checkpoint as root, or keep an fd of the file open in the process`);
          }
          throw new StasisError(`${what}: cannot stat it through ${g.procPath} (${code})`);
        }
        g.ranges = undefined;
      }
      if (!g.st.isFile()) throw new UnsupportedError(`${what}: a deleted file that is not a regular file is not supported`);
      if (g.st.nlink > 0n) {
        throw new UnsupportedError(`${what}: its name was removed but it still has ${g.st.nlink} other link(s) elsewhere, which stasis cannot find; close it before the checkpoint, or unlink its other names`);
      }
      let dir: fs.BigIntStats | undefined;
      try { dir = fs.lstatSync(nodePath.dirname(g.path), { bigint: true }); } catch { /* gone */ }
      if (!dir?.isDirectory()) throw new UnsupportedError(`${what}: its directory ${nodePath.dirname(g.path)} is gone, and a restart re-creates the file there; close the file before the checkpoint`);
      // Linked there once, it lived on that filesystem: a kernel-internal file ("/i915 (deleted)") did not.
      if (dir.dev !== g.st.dev) throw new UnsupportedError(`${what}: not on the filesystem of ${nodePath.dirname(g.path)} (device ${devKey(g.st.dev)}, not ${devKey(dir.dev)}): a kernel-internal file, not one stasis can re-create there`);
      if (!this.contents) continue;
      if (!g.ranges) {
        const fd = openToRead(g.procPath, what);
        try { g.ranges = dataRanges(fd, Number(g.st.size)); } finally { fs.closeSync(fd); }
      }
      const bytes = g.ranges.reduce((n, [a, b]) => n + b - a, 0);
      if (bytes > this.limit) {
        throw new UnsupportedError(`${what}: holds ${bytes} bytes of data, more than the ghost file limit of ${this.limit} bytes; raise it with --ghost-limit SIZE (at most ${GHOST_LIMIT_MAX}), or keep the file linked`);
      }
      total += bytes;
    }
    if (total > GHOST_LIMIT_MAX) throw new UnsupportedError(`deleted files of the tree hold ${total} bytes of data together, more than one image carries (${GHOST_LIMIT_MAX} bytes); keep some of them linked`);
    this.settled = true;
  }

  /**
   * A deleted file also held by a process outside the tree would be two
   * files after a restart (the outsider keeps the old one): refused by name.
   */
  refuseOutsiders(tree: Set<number>): void {
    this.settle();
    if (!this.files.size) return;
    const byPath = new Map<string, Noted>();
    for (const g of this.files.values()) byPath.set(`${g.path}${DELETED}`, g);
    const same = (g: Noted, st: { dev: string; ino: bigint }) => devKey(g.st!.dev) === st.dev && g.st!.ino === st.ino;
    for (const { pid, fd, link } of outsideFdLinks(tree)) {
      const g = byPath.get(link);
      if (!g) continue;
      let st: fs.BigIntStats;
      try { st = fs.statSync(`/proc/${pid}/fd/${fd}`, { bigint: true }); } catch { continue; }
      if (same(g, { dev: devKey(st.dev), ino: st.ino })) throw this.outsider(g, `fd ${fd} of pid ${pid}`);
    }
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d) || tree.has(Number(d))) continue;
      let maps;
      try { maps = readMaps(Number(d)); } catch { continue; }
      for (const v of maps) {
        const g = v.deleted ? byPath.get(v.path) : undefined;
        if (g && same(g, { dev: v.dev, ino: BigInt(v.inode) })) throw this.outsider(g, `a mapping of pid ${d}`);
      }
    }
  }

  private outsider(g: Noted, other: string): UnsupportedError {
    return new UnsupportedError(`${g.where}: deleted file ${g.path} is also held by ${other} outside the tree, which would keep another copy after a restart; checkpoint the tree that holds all of it`);
  }

  /** The ghosts table, contents included unless `contents` is false. */
  collect(): { ghosts?: ImageGhost[] } {
    if (!this.files.size) return {};
    this.settle();
    const out: ImageGhost[] = [];
    for (const g of this.files.values()) {
      const st = g.st!;
      const segments: ImageGhost['segments'] = [];
      if (this.contents) {
        const fd = openToRead(g.procPath, `${g.where}: deleted file ${g.path}`);
        try {
          for (const [a, b] of g.ranges!) {
            const buf = Buffer.alloc(b - a);
            for (let done = 0; done < buf.length;) {
              const n = fs.readSync(fd, buf, done, buf.length - done, a + done);
              if (n === 0) break;
              done += n;
            }
            segments.push({ offset: a, data: buf.toString('base64') });
          }
        } finally {
          fs.closeSync(fd);
        }
      }
      out.push({
        id: g.id, path: g.path, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size),
        atimeNs: st.atimeNs.toString(), mtimeNs: st.mtimeNs.toString(), segments,
      });
    }
    return { ghosts: out };
  }
}

function openToRead(procPath: string, what: string): number {
  try {
    return fs.openSync(procPath, 'r');
  } catch (e) {
    throw new StasisError(`${what}: cannot open it for reading through ${procPath} (${(e as NodeJS.ErrnoException).code})`);
  }
}

export const ghostKind: FdKind<GhostFd> = {
  kinds: ['ghost'],
  claims: (f) => ghostPath(f.target) !== null && f.stat().isFile(),
  dump: (f, ctx) => ({ kind: 'ghost', pos: f.info().pos, ghost: ctx.table(GhostTable).noteFd(f) }),
  sharingKey: (r) => `ghost:${r.ghost}`,
  open(remote, r, ctx, where) {
    if (!ctx.ghosts) throw new StasisError(`${where}: a deleted file without the ghosts table`);
    // O_NOFOLLOW (Python's mkstemp) only governed the lookup; through /proc it would refuse the magic link (ELOOP).
    return openHeld(remote, ctx.ghosts.pathFor(r.ghost), { ...r, flags: r.flags & ~O_NOFOLLOW }, where);
  },
  settle: seekTo,
};

const CAP_CHOWN = 0n, CAP_DAC_OVERRIDE = 1n;

/**
 * Before any process or file is made: each deleted file is one the saved
 * processes holding it could have made themselves, in that directory, with
 * that owner and group (a restart as root must not plant, for an ordinary
 * user's image, a file in a directory they may not write, nor one owned by
 * someone else, setuid or not).
 */
export function checkGhosts(img: LoadedImage): void {
  for (const g of img.objects.ghosts ?? []) {
    const holders = img.processes.filter((p) => p.fds.some((f) => f.kind === 'ghost' && f.ghost === g.id) || p.vmas.some((v) => v.ghost === g.id));
    const dir = nodePath.dirname(g.path);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(dir);
    } catch (e) {
      throw new StasisError(`deleted file ${g.path}: its directory ${dir} is missing (${(e as NodeJS.ErrnoException).code}); create it or restart where it exists`);
    }
    if (!st.isDirectory()) throw new StasisError(`deleted file ${g.path}: ${dir} is ${st.isSymbolicLink() ? 'now a symbolic link; refusing to follow it' : 'not a directory'}`);
    const may = (c: ImageCreds) => mayCreateIn(st, c) && mayOwn(g, c);
    if (!holders.some((p) => may(p.creds))) {
      const c = holders[0]?.creds;
      throw new StasisError(`deleted file ${g.path}: the saved process (uid ${c?.uid[3]}) could not have made it in ${dir} owned by ${g.uid}:${g.gid}; refusing to make it with this restarter's rights`);
    }
  }
}

function mayCreateIn(dir: fs.Stats, c: ImageCreds): boolean {
  if (BigInt(c.capEff) & (1n << CAP_DAC_OVERRIDE)) return true;
  const bits = dir.uid === c.uid[3] ? (dir.mode >> 6) & 7
    : dir.gid === c.gid[3] || c.groups.includes(dir.gid) ? (dir.mode >> 3) & 7 : dir.mode & 7;
  return (bits & 3) === 3; // write and search
}

function mayOwn(g: ImageGhost, c: ImageCreds): boolean {
  if (BigInt(c.capEff) & (1n << CAP_CHOWN)) return true;
  return g.uid === c.uid[3] && (g.gid === c.gid[3] || c.groups.includes(g.gid));
}

const O_RDWR = 2, O_CLOEXEC = 0o2000000, O_PATH = 0o10000000, O_DIRECTORY = 0o200000, O_NOFOLLOW = 0o400000;
const O_CREAT = 0o100, O_EXCL = 0o200, O_TMPFILE = 0o20000000 | O_DIRECTORY;
const RESOLVE_NO_SYMLINKS = 0x04, AT_SYMLINK_FOLLOW = 0x400, AT_FDCWD = -100;
const SYS_LINKAT = 265, SYS_UNLINKAT = 263, SYS_FCHOWN = 93, SYS_FCHMOD = 91, SYS_FTRUNCATE = 77, SYS_UTIMENSAT = 280;

const cstr = (s: string) => Buffer.from(`${s}\0`);

/** Restart side: stasis makes every deleted file again and holds it until the tree has it. */
export class GhostKeeper {
  private readonly held = new Map<number, number>();
  private readonly files: ImageGhost[];
  /** How a task reaches one of our fds (through the namespace init in a user-namespace restart). */
  fdPath = (fd: number) => `/proc/${process.pid}/fd/${fd}`;

  constructor(files: ImageGhost[], log: (m: string) => void = () => {}) {
    this.files = files;
    try {
      for (const g of files) this.held.set(g.id, this.make(g, log));
    } catch (e) {
      this.close();
      throw e instanceof StasisError ? e : new StasisError(`re-creating deleted files: ${(e as Error).message}`);
    }
  }

  private make(g: ImageGhost, log: (m: string) => void): number {
    const dir = nodePath.dirname(g.path), name = nodePath.basename(g.path);
    const how = Buffer.alloc(24); // struct open_how: flags, mode, resolve
    how.writeBigUInt64LE(BigInt(O_PATH | O_DIRECTORY | O_CLOEXEC), 0);
    how.writeBigUInt64LE(BigInt(RESOLVE_NO_SYMLINKS), 16);
    const dirfd = syscall(SYS.openat2, `openat2 ${dir}`, AT_FDCWD, cstr(dir), how, how.length);
    const fds: number[] = [];
    try {
      // O_TMPFILE: written whole before it has a name anyone could open.
      let tmp = -1;
      try {
        tmp = syscall(SYS.openat, `O_TMPFILE in ${dir}`, dirfd, cstr('.'), O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600);
        fds.push(tmp);
      } catch (e) {
        if (!(e instanceof SyscallError) || !['EOPNOTSUPP', 'EISDIR', 'EINVAL'].includes(e.code)) throw e;
      }
      const fill = (fd: number) => {
        syscall(SYS_FTRUNCATE, `ftruncate ${g.path}`, fd, g.size);
        for (const s of g.segments) {
          const b = Buffer.from(s.data, 'base64');
          for (let done = 0; done < b.length;) done += fs.writeSync(fd, b, done, b.length - done, s.offset + done);
        }
      };
      let fd: number;
      if (tmp >= 0) {
        fill(tmp);
        try {
          syscall(SYS_LINKAT, `linkat ${g.path}`, AT_FDCWD, cstr(`/proc/self/fd/${tmp}`), dirfd, cstr(name), AT_SYMLINK_FOLLOW);
        } catch (e) {
          if (!(e instanceof SyscallError) || e.code !== 'EEXIST') throw e;
          // The name is taken by another file now: the file stays nameless (its /proc link says "#INO").
          log(`deleted file ${g.path}: the name is taken now; re-created without it`);
          this.own(tmp, g);
          fds.splice(fds.indexOf(tmp), 1);
          return tmp;
        }
        fd = syscall(SYS.openat, `reopening ${g.path}`, dirfd, cstr(name), O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
        fds.push(fd);
        const a = fs.fstatSync(tmp, { bigint: true }), b = fs.fstatSync(fd, { bigint: true });
        // Never unlink what another process put at that name meanwhile.
        if (a.ino !== b.ino || a.dev !== b.dev) throw new StasisError(`deleted file ${g.path}: another file took its name while it was re-created`);
        syscall(SYS_UNLINKAT, `unlinkat ${g.path}`, dirfd, cstr(name), 0);
      } else {
        fd = syscall(SYS.openat, `creating ${g.path}`, dirfd, cstr(name), O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0o600);
        fds.push(fd);
        syscall(SYS_UNLINKAT, `unlinkat ${g.path}`, dirfd, cstr(name), 0);
        fill(fd);
      }
      this.own(fd, g);
      fds.splice(fds.indexOf(fd), 1);
      return fd;
    } finally {
      for (const fd of fds) fs.closeSync(fd);
      fs.closeSync(dirfd);
    }
  }

  /** Owner, then mode (a chown clears setuid and setgid bits). */
  private own(fd: number, g: ImageGhost): void {
    const st = fs.fstatSync(fd);
    if (st.uid !== g.uid || st.gid !== g.gid) syscall(SYS_FCHOWN, `fchown ${g.path} to ${g.uid}:${g.gid}`, fd, g.uid, g.gid);
    syscall(SYS_FCHMOD, `fchmod ${g.path}`, fd, g.mode);
  }

  /** Access and modification times, once every task has opened and mapped the files (mmap touches the access time). */
  setTimes(): void {
    for (const g of this.files) {
      const fd = this.held.get(g.id);
      if (fd !== undefined) this.setTime(fd, g);
    }
  }

  private setTime(fd: number, g: ImageGhost): void {
    const times = Buffer.alloc(32); // struct timespec[2]: access, modification
    for (const [i, ns] of [BigInt(g.atimeNs), BigInt(g.mtimeNs)].entries()) {
      times.writeBigInt64LE(ns / 1_000_000_000n - (ns < 0n && ns % 1_000_000_000n ? 1n : 0n), 16 * i);
      times.writeBigInt64LE(((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n, 16 * i + 8);
    }
    syscall(SYS_UTIMENSAT, `futimens ${g.path}`, fd, 0, times, 0);
  }

  /** The path a task opens to reach deleted file `id`. */
  pathFor(id: number): string {
    const fd = this.held.get(id);
    if (fd === undefined) throw new StasisError(`the image names deleted file ${id} but carries no such file`);
    return this.fdPath(fd);
  }

  /** Our fds that tasks open through /proc. */
  heldFds(): number[] {
    return [...this.held.values()];
  }

  close(): void {
    for (const fd of this.held.values()) fs.closeSync(fd);
    this.held.clear();
  }
}

// File locks held by the tree: flock (owned by an open file description),
// POSIX record locks (owned by a process) and OFD locks (owned by an open
// file description), with their ranges and read/write types. Read from the
// `lock:` lines of /proc/PID/fdinfo/N, checked against /proc/locks, and
// taken again in the restored task on the same fd before anything runs.
// Leases (F_SETLEASE, owned by the open file description) are taken again
// too. Leases being broken, lock waiters left over after the freeze, locks
// we cannot tie to an fd of the tree and locks on open files shared with
// processes outside the tree are refused by name. (Mandatory locking no longer exists in Linux.)
import fs from 'node:fs';
import { outsideFdLinks } from '../proc';
import { z, lazySchema } from '../image/zod';
import type { ImageFd } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError, SyscallError } from '../sys/errno';

const hex64 = lazySchema(() => z.string().regex(/^0x[0-9a-f]{1,16}$/));

export const FileLock = lazySchema(() => z.object({
  kind: z.enum(['flock', 'posix', 'ofd', 'lease']),
  type: z.enum(['read', 'write']),
  /** first byte locked (flock and lease: 0) */
  start: hex64,
  /** bytes locked; 0 means up to the end of the file, however long it grows */
  len: hex64,
  /** the pid /proc/locks shows (-1 for OFD locks) */
  pid: z.number().int().min(-1).max(4194304),
}));
export type FileLock = z.infer<typeof FileLock>;

const OFFSET_MAX = (1n << 63n) - 1n;

/** One line of /proc/locks or an fdinfo `lock:` line, parsed. */
export interface LockLine {
  waiter: boolean;
  /** FLOCK, POSIX, OFDLCK, LEASE, DELEG ... */
  kind: string;
  /** ADVISORY, ACTIVE, BREAKING, BREAKER ... */
  mode: string;
  /** READ, WRITE, UNLCK */
  type: string;
  pid: number;
  /** "maj:min:ino" with maj:min in hex, as the kernel prints it */
  inode: string;
  start: bigint;
  /** last byte, or null for EOF */
  end: bigint | null;
}

export function parseLockLine(line: string): LockLine | null {
  const m = /^\d+:\s+(->\s+)?(\S+)\s+(\S+)\s+(\S+)\s+(-?\d+)\s+([0-9a-f]+:[0-9a-f]+:\d+)\s+(\d+)\s+(\d+|EOF)\s*$/.exec(line);
  if (!m) return null;
  return {
    waiter: !!m[1], kind: m[2], mode: m[3], type: m[4], pid: Number(m[5]), inode: m[6],
    start: BigInt(m[7]), end: m[8] === 'EOF' ? null : BigInt(m[8]),
  };
}

const hex = (v: bigint) => '0x' + v.toString(16);

function describe(l: { kind: string; type: string; start: string; len: string }): string {
  if (l.kind === 'lease') return `${l.type} lease`;
  const len = BigInt(l.len);
  const range = l.kind === 'flock' ? '' : ` on bytes ${BigInt(l.start)}..${len === 0n ? 'EOF' : BigInt(l.start) + len - 1n}`;
  return `${l.kind} ${l.type} lock${range}`;
}

/** A lock the tree holds, with what is needed to check it against the whole system. */
interface Held { pid: number; fd: number; path: string; inode: string; lock: FileLock; list: FileLock[] }

/**
 * Checkpoint side: every lock of the tree, noted fd by fd, then checked as
 * a whole (nothing unattributed, nothing shared with outsiders).
 */
export class LockTable {
  private readonly held: Held[] = [];

  /**
   * The locks an fd shows in its fdinfo. flock and OFD locks belong to the
   * open file description: kept on the fd that restores it (`primary`).
   * POSIX locks belong to the process, set through this open file.
   * `filesSharers`: tree processes sharing this process's fd table, whose
   * POSIX locks show here too and are recorded with them.
   */
  note(pid: number, fd: number, path: string, fdinfoLines: string[], primary: boolean, filesSharers: Set<number> = new Set()): FileLock[] | undefined {
    const where = `fd ${fd} of pid ${pid} (${path})`;
    const out: FileLock[] = [];
    for (const raw of fdinfoLines) {
      if (!raw.startsWith('lock:')) continue;
      const l = parseLockLine(raw.slice(5).trim());
      if (!l) throw new StasisError(`${where}: cannot parse the lock line "${raw}" of its fdinfo`);
      if (l.kind === 'DELEG') throw new UnsupportedError(`${where}: holds an NFS delegation, not supported`);
      if (l.kind === 'LEASE' && l.mode !== 'ACTIVE') {
        throw new UnsupportedError(`${where}: its lease (F_SETLEASE) is being broken by another opener; retry the checkpoint once the program has released it`);
      }
      if (l.waiter) throw new UnsupportedError(`${where}: pid ${l.pid} still waits for a ${l.kind} lock after the freeze; retry the checkpoint`);
      if (l.mode !== 'ADVISORY' && l.kind !== 'LEASE') throw new UnsupportedError(`${where}: ${l.mode} ${l.kind} lock is not supported`);
      const kind = l.kind === 'FLOCK' ? 'flock' : l.kind === 'POSIX' ? 'posix' : l.kind === 'OFDLCK' ? 'ofd' : l.kind === 'LEASE' ? 'lease' : null;
      if (!kind) throw new UnsupportedError(`${where}: ${l.kind} lock is not supported`);
      if (l.type !== 'READ' && l.type !== 'WRITE') throw new UnsupportedError(`${where}: ${kind} lock of type ${l.type} is not supported`);
      if (kind === 'posix' && l.pid !== pid) {
        if (filesSharers.has(l.pid)) continue; // recorded with the process that set it
        throw new UnsupportedError(`${where}: its POSIX lock is owned by pid ${l.pid}, which shares the fd table from outside the tree; not supported`);
      }
      const key = (h: Held) => h.inode === l.inode && h.lock.kind === kind && h.lock.pid === l.pid && h.lock.type === (l.type === 'READ' ? 'read' : 'write');
      if (kind !== 'posix' && !primary) {
        // The open file description's, noted once, with the process that took
        // it when that process holds it too (so /proc/locks shows the same pid).
        const earlier = this.held.findIndex((h) => key(h) && h.pid !== pid && h.pid !== l.pid);
        if (l.pid !== pid || earlier < 0) continue;
        const [moved] = this.held.splice(earlier, 1);
        moved.list.splice(moved.list.indexOf(moved.lock), 1);
      }
      const end = l.end ?? OFFSET_MAX;
      const lock: FileLock = {
        kind, type: l.type === 'READ' ? 'read' : 'write', start: hex(l.start),
        len: hex(l.end === null ? 0n : end - l.start + 1n), pid: l.pid,
      };
      // A POSIX lock shows on every fd of its open file description in the process (dup'ed fds).
      if (kind === 'posix' && this.held.some((h) => h.pid === pid && h.inode === l.inode && h.lock.kind === 'posix' && h.lock.start === lock.start && h.lock.len === lock.len && h.lock.type === lock.type)) continue;
      this.held.push({ pid, fd, path, inode: l.inode, lock, list: out });
      out.push(lock);
    }
    return out.length ? out : undefined;
  }

  /**
   * Every lock /proc/locks gives a process of the tree must be one we
   * noted, and no open file description whose flock or OFD lock we take
   * may be open in a process outside the tree (it would lose the lock, or
   * share it with the restored tree). `procLocks`: /proc/locks, read since
   * the tree was frozen.
   */
  refuseUnattributed(tree: Set<number>, procLocks = fs.readFileSync('/proc/locks', 'utf8')): void {
    for (const line of procLocks.split('\n')) {
      const l = parseLockLine(line);
      if (!l || !tree.has(l.pid)) continue;
      if (l.waiter) throw new UnsupportedError(`pid ${l.pid}: still waits for a ${l.kind} lock on inode ${l.inode} after the freeze; retry the checkpoint`);
      if (l.kind === 'DELEG') throw new UnsupportedError(`pid ${l.pid}: holds an NFS delegation on inode ${l.inode}; not supported`);
      if (l.kind === 'LEASE' && l.mode !== 'ACTIVE') throw new UnsupportedError(`pid ${l.pid}: its lease on inode ${l.inode} (F_SETLEASE) is being broken by another opener; retry the checkpoint once the program has released it`);
      const kind = l.kind === 'FLOCK' ? 'flock' : l.kind === 'POSIX' ? 'posix' : l.kind === 'OFDLCK' ? 'ofd' : l.kind === 'LEASE' ? 'lease' : l.kind;
      const start = hex(l.start);
      const len = hex(l.end === null ? 0n : l.end - l.start + 1n);
      const known = this.held.some((h) => h.inode === l.inode && h.lock.kind === kind && h.lock.pid === l.pid && h.lock.start === start && h.lock.len === len);
      if (!known) {
        throw new UnsupportedError(`pid ${l.pid}: holds a ${kind} ${l.type.toLowerCase()} lock on inode ${l.inode} that no fd of the tree carries (the open file is held outside the tree); release it or checkpoint the process holding the file too`);
      }
    }
    const byOfd = this.held.filter((h) => h.lock.kind !== 'posix');
    if (!byOfd.length) return;
    const paths = new Set(byOfd.map((h) => h.path));
    for (const { pid: d, fd, link } of outsideFdLinks(tree)) {
      if (!paths.has(link)) continue; // one open file description has one path
      for (const h of byOfd) {
        if (h.path !== link) continue;
        let same = false;
        try {
          same = syscall(SYS.kcmp, 'kcmp', h.pid, d, KCMP_FILE, h.fd, fd) === 0;
        } catch { /* gone meanwhile */ }
        if (same) {
          throw new UnsupportedError(`fd ${h.fd} of pid ${h.pid}: its ${describe(h.lock)} on ${h.path} belongs to an open file shared with pid ${d} outside the tree; checkpoint that process with the tree or close the file there`);
        }
      }
    }
  }
}

const KCMP_FILE = 0;
const F_SETLK = 6, F_OFD_SETLK = 37, F_SETLEASE = 1024, F_RDLCK = 0, F_WRLCK = 1, SEEK_SET = 0;
const LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4;
const SYS_FLOCK = 73;

/**
 * Restart side: take every lock of the process again on its fd, without
 * waiting: a lock someone else took meanwhile fails the restart by name.
 */
export function restoreLocks(remote: Remote, fds: ImageFd[]): void {
  for (const f of fds) {
    for (const l of f.locks ?? []) {
      const where = `fd ${f.fd} (${f.path}): ${describe(l)}`;
      remote.reset();
      try {
        if (l.kind === 'flock') {
          remote.call('flock', SYS_FLOCK, [f.fd, (l.type === 'read' ? LOCK_SH : LOCK_EX) | LOCK_NB], where);
        } else if (l.kind === 'lease') {
          // Also makes the process the file's signal owner; restoreFdOwners sets the saved owner after.
          remote.call('fcntl(F_SETLEASE)', SYS.fcntl, [f.fd, F_SETLEASE, l.type === 'read' ? F_RDLCK : F_WRLCK], where);
        } else {
          const fl = Buffer.alloc(32); // struct flock
          fl.writeInt16LE(l.type === 'read' ? F_RDLCK : F_WRLCK, 0);
          fl.writeInt16LE(SEEK_SET, 2);
          fl.writeBigInt64LE(BigInt(l.start), 8);
          fl.writeBigInt64LE(BigInt(l.len), 16);
          remote.call('fcntl', SYS.fcntl, [f.fd, l.kind === 'ofd' ? F_OFD_SETLK : F_SETLK, remote.putBytes(fl)], where);
        }
      } catch (e) {
        if (e instanceof SyscallError && (e.code === 'EAGAIN' || e.code === 'EACCES')) {
          const who = l.kind === 'lease' ? 'another process has the file open for writing' : 'another process holds a conflicting lock';
          throw new StasisError(`pid ${remote.pid} ${where}: ${who} now; end it (the original, if it still runs) and restart again`);
        }
        throw e;
      }
    }
  }
}

// File descriptors of a process, whatever their kind: each fd is handed
// to the first registered kind that claims it (src/kinds/fdkinds.ts),
// which records and restores its object; this module keeps what every fd
// has: its number, flags, offset, close-on-exec, the locks it carries, and
// shared open file descriptions (dup'ed fds share one, within a process
// and across fork).
import { listFds, readLimits } from '../proc';
import { LockTable } from './locks';
import type { ImageFd, ImageCreds } from '../image/schema';
import { Remote, BatchCall } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';
import { FoundFd, DumpContext, RestoreContext, O_CLOEXEC, seekCalls } from './fdkind';
import { FD_KINDS, kindOf } from './fdkinds';

const KCMP_FILE = 0;
const F_DUPFD = 0;
const RLIMIT_NOFILE = 7;

/** Name the kind of an fd no kind claims, from its /proc link. */
function describeLink(target: string): string {
  if (target.endsWith(' (deleted)')) return `${target.slice(0, -' (deleted)'.length)}, an unlinked file,`;
  const m = /^(\w+):\[/.exec(target);
  if (m) return m[1];
  const anon = /^anon_inode:\[?([\w-]+)\]?/.exec(target);
  if (anon) return anon[1];
  return target;
}

/**
 * The open file descriptions met so far in a tree (processes in order,
 * fds in increasing order), to tell which fd shares one with an earlier
 * fd. kcmp(KCMP_FILE) orders open files (by their obfuscated address), so
 * the first fd of each description is kept sorted, per sharing key, and a
 * new fd is looked up by binary search: a few kcmp calls per fd rather
 * than one per earlier fd of its kind (thousands of fds on /dev/null made
 * it quadratic).
 */
export class OpenFiles {
  private readonly byKey = new Map<string, Array<{ pid: number; fd: number }>>();

  /** The first fd met on the same open file description as `fd` of `pid`, or null (it is the first). */
  firstOf(key: string, pid: number, fd: number): { pid: number; fd: number } | null {
    let list = this.byKey.get(key);
    if (!list) this.byKey.set(key, list = []);
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

/** Only fds with equal keys may share an open file description (then kcmp decides). */
function key(f: ImageFd): string {
  const k = kindOf(f.kind);
  return k.sharingKey ? k.sharingKey(f) : `${f.kind}:${f.path}`;
}

/**
 * The fds of one process. `files` holds the open files of processes
 * already dumped (parents first): an fd inherited through fork is recorded
 * as shared with theirs.
 */
export function dumpFds(pid: number, ctx: DumpContext, files: OpenFiles = new OpenFiles(), locks?: LockTable, filesSharers?: Set<number>): ImageFd[] {
  const out: ImageFd[] = [];
  for (const { fd, target } of listFds(pid)) {
    const found = new FoundFd(pid, fd, target);
    const kind = FD_KINDS.find((k) => k.claims(found));
    if (!kind) throw new UnsupportedError(`${found.where}: ${describeLink(target)} is not supported yet`);
    const info = found.info();
    const entry = { fd, path: target, flags: found.flags, pos: 0, cloexec: (info.flags & O_CLOEXEC) !== 0, ...kind.dump(found, ctx) } as ImageFd;
    const e = withSharing(entry, pid, files);
    const held = locks?.note(pid, e.fd, e.path, info.lines, e.sameAs === undefined && !e.sharedWith, filesSharers);
    out.push(held ? { ...e, locks: held } : e);
  }
  return out;
}

/** An fd on an open file description met before: the same as an earlier fd of its process, or shared with one of an earlier process. */
function withSharing(entry: ImageFd, pid: number, files: OpenFiles): ImageFd {
  const first = files.firstOf(key(entry), pid, entry.fd);
  if (!first) return entry;
  return first.pid === pid ? { ...entry, sameAs: first.fd } : { ...entry, sharedWith: { pid: first.pid, fd: first.fd } };
}

/** Move the fd `got` to number `want`. */
function place(remote: Remote, got: number, want: number, cloexec: boolean, where: string): void {
  if (got === want) return;
  // One batch: each call into the task is a round trip.
  remote.batch([
    { name: 'dup3', nr: SYS.dup3, args: [got, want, cloexec ? O_CLOEXEC : 0], where },
    { name: 'close', nr: SYS.close, args: [got], where },
  ]);
}

/**
 * Restore fds in increasing order (every fd of the fresh task is closed),
 * kinds marked late (epoll) after all others. An fd shared with an earlier
 * process is fetched from it with pidfd_getfd, so both hold one open file
 * description again. Every call into the task is a round trip: fds made by
 * one call each (a dup, pidfd_getfd, a file opened: FdKind.openCall) are
 * made, placed and settled together, in as few batches as hold them.
 */
export function restoreFds(remote: Remote, fds: ImageFd[], ctx: RestoreContext): void {
  const late = (f: ImageFd) => !!kindOf(f.kind).late;
  let limit: number | undefined; // the task's RLIMIT_NOFILE, which is ours
  let pending: BatchCall[] = [];
  const run = () => {
    if (pending.length) remote.batch(pending);
    pending = [];
  };
  // The scratch area emptied once what points into it has run.
  const fresh = () => {
    run();
    remote.reset();
  };
  // One fd's calls, their references to each other's results numbered from 0.
  const add = (calls: BatchCall[]) => {
    if (pending.length + calls.length > remote.callsPerRun) run();
    const base = pending.length;
    pending.push(...calls.map((c) => ({ ...c, args: c.args.map((a) => (typeof a === 'object' ? { result: a.result + base } : a)) })));
  };
  remote.reset();
  for (const f of [...fds.filter((x) => !late(x)), ...fds.filter(late)]) {
    const where = `fd ${f.fd} (${f.path})`;
    if (f.sameAs !== undefined) {
      add([{ name: 'dup3', nr: SYS.dup3, args: [f.sameAs, f.fd, f.cloexec ? O_CLOEXEC : 0], where }]);
      continue;
    }
    const kind = kindOf(f.kind);
    // Moved above f.fd first (it may have come at f.fd itself), then into
    // place: impossible only for the last fd the limit allows.
    const movable = f.fd + 1 < (limit ??= openFileLimit());
    // `got`: the call whose result is the fd; `at`: where these calls start.
    const into = (got: number, at: number): BatchCall[] => [
      { name: 'fcntl', nr: SYS.fcntl, args: [{ result: got }, F_DUPFD, f.fd + 1], where },
      { name: 'close', nr: SYS.close, args: [{ result: got }], where },
      { name: 'dup3', nr: SYS.dup3, args: [{ result: at }, f.fd, f.cloexec ? O_CLOEXEC : 0], where },
      { name: 'close', nr: SYS.close, args: [{ result: at }], where },
    ];
    // The pidfd, the fd taken through it, the pidfd closed.
    const take = (s: { pid: number; fd: number }): BatchCall[] => [
      { name: 'pidfd_open', nr: SYS.pidfd_open, args: [s.pid, 0], where },
      { name: 'pidfd_getfd', nr: SYS.pidfd_getfd, args: [{ result: 0 }, s.fd, 0], where: `${where} from pid ${s.pid}` },
      { name: 'close', nr: SYS.close, args: [{ result: 0 }], where },
    ];
    // A path and its open_how in the scratch area: room for them, or the batch so far goes first.
    if (kind.openCall && remote.scratchUsed + Buffer.byteLength(f.path) + 64 > remote.scratchSize) fresh();
    if (f.sharedWith && movable) add([...take(f.sharedWith), ...into(1, 3)]);
    else if (kind.openCall && movable) add([kind.openCall(remote, f, where), ...into(0, 1), ...seekCalls(f, where)]);
    else {
      fresh();
      if (f.sharedWith) place(remote, remote.batch(take(f.sharedWith))[1], f.fd, f.cloexec, where);
      else {
        place(remote, kind.open(remote, f, ctx, where), f.fd, f.cloexec, where);
        kind.settle?.(remote, f, where);
      }
      remote.reset();
    }
  }
  run();
}

/** The restarter's RLIMIT_NOFILE: the blank tasks inherit it while their fds are made. */
export function openFileLimit(): number {
  const l = readLimits(process.pid).find((x) => x.resource === RLIMIT_NOFILE);
  return l === undefined || l.soft > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(l.soft);
}

/**
 * Before any process exists: every fd fits under the restarter's
 * RLIMIT_NOFILE, and what each record names is there and may be opened
 * (each kind checks its own: the same file, no symlink, the saved
 * process's rights).
 */
export function checkFds(fds: ImageFd[], creds: ImageCreds, pid: number, taskIds: Set<number> = new Set(), limit = openFileLimit()): void {
  for (const f of fds) {
    if (f.fd >= limit) throw new StasisError(`pid ${pid}: fd ${f.fd} is at or above this restarter's RLIMIT_NOFILE (${limit}); raise it (ulimit -n) and restart again`);
  }
  for (const f of fds) {
    if (f.sameAs !== undefined || f.sharedWith) continue;
    kindOf(f.kind).check?.(f, creds, `pid ${pid}: fd ${f.fd}`, taskIds);
  }
}

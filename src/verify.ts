// restart --verify: the rebuilt tree, still seized with its final registers
// set, is read back with the checkpoint's own dump code (metadata only, no
// pages) and compared with the image field by field. The first difference
// fails the restart, naming the process and the field path; the restart's
// failure path then kills everything it created.
import { readMaps, readStat } from './proc';
import { Tracee } from './ptrace/tracee';
import { Remote } from './ptrace/remote';
import { FrozenProcess } from './ptrace/freeze';
import { surveyProcesses, dumpProcess, dumpZombie, locateSyscall, childrenOf } from './checkpoint';
import { PipeTable } from './kinds/pipes';
import { pagesToSave } from './kinds/memory';
import { LockTable } from './kinds/locks';
import { MemfdTable } from './kinds/memfd';
import { TtyTable } from './kinds/tty';
import { GhostTable } from './kinds/ghost';
import { DumpContext } from './kinds/fdkind';
import { specialVmas } from './kinds/vdso';
import { resumeRegs } from './kinds/registers';
import { ImageProcess, ImageZombie, ImagePipe, ImageMemfd, ImageFd, ImageVma, ObjectTables } from './image/schema';
import { StasisError } from './sys/errno';
import { Regs, SYS } from './sys/x86';

// ---- how two values are compared -------------------------------------------

/** What a rule sees besides the two values. */
export interface RuleContext {
  /** the field path, as printed ("threads[1].signals.blocked") */
  path: string;
  /** the objects holding the two values (siblings a rule may need) */
  imageParent: unknown;
  restoredParent: unknown;
  /** nanoseconds since the restart began: how far a timer may have run down */
  elapsedNs: bigint;
  /** Pair `image` with `restored` in id space `space`; false if either is already paired otherwise. */
  pair(space: string, image: unknown, restored: unknown): boolean;
  /** image pid/tid of a restored task (by the id this process sees), if it is one of the tree's */
  treeId(restored: number): number | undefined;
  /** whether `id` is a pid/tid of the image */
  inImage(id: number): boolean;
  /** Compare two derived values at this path (and below), by the usual rules. */
  compare(image: unknown, restored: unknown): void;
}

/** Accepts (returns nothing) or says what differs ("image 1, restored 2"). */
export type Rule = (image: unknown, restored: unknown, cx: RuleContext) => string | undefined | void;

const show = (v: unknown): string => {
  if (v === undefined) return 'absent';
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s.length > 100 ? `${s.slice(0, 97)}...` : s;
};
const differs = (a: unknown, b: unknown) => `image ${show(a)}, restored ${show(b)}`;

/** Not compared (the reason is in the table). */
const skip: Rule = () => undefined;

/**
 * Kernel ids that are new after a restart (inodes of pipes, memfds, shared
 * memory, eventfd ids): compared as structure. Each image id must map to
 * exactly one restored id and back, across the whole tree, so two fds on
 * one pipe stay on one pipe and two pipes stay two. `pattern` extracts the
 * id from a string ("pipe:[1234]"); a value it does not match is compared
 * as is.
 */
const sameId = (space: string, pattern?: RegExp): Rule => (a, b, cx) => {
  let ia = a, ib = b;
  if (pattern) {
    const ma = typeof a === 'string' ? pattern.exec(a) : null;
    const mb = typeof b === 'string' ? pattern.exec(b) : null;
    if (!ma || !mb) return a === b ? undefined : differs(a, b);
    ia = ma[1];
    ib = mb[1];
  }
  if (ia === undefined || ib === undefined) return ia === ib ? undefined : differs(a, b);
  return cx.pair(space, ia, ib) ? undefined : `${differs(a, b)} (image ${space} ${show(ia)} is restored elsewhere as another one)`;
};

/**
 * An established connection read back after it left repair mode: the same
 * sequence numbers, MSS and options; the peer may have sent (retransmitted)
 * bytes since, appended to the receive queue, and acknowledged some, taken
 * from the front of the send queue; unsent bytes went out.
 */
const tcpContinued: Rule = (a, b) => {
  const x = a as Record<string, unknown> | undefined, y = b as Record<string, unknown> | undefined;
  if (!x || !y) return x === y ? undefined : differs(a, b);
  for (const k of ['sndSeq', 'mss', 'sndWscale', 'rcvWscale', 'sack']) if (x[k] !== y[k]) return `${k}: ${differs(x[k], y[k])}`;
  if ((x.timestamp === undefined) !== (y.timestamp === undefined)) return `timestamp: ${differs(x.timestamp, y.timestamp)}`;
  const ri = Buffer.from(String(x.recvQueue), 'base64'), rr = Buffer.from(String(y.recvQueue), 'base64');
  if (rr.length < ri.length || !rr.subarray(0, ri.length).equals(ri)) return 'recvQueue: the restored receive queue does not begin with the saved bytes';
  if (((Number(y.rcvSeq) - Number(x.rcvSeq)) >>> 0) !== rr.length - ri.length) return `rcvSeq: ${differs(x.rcvSeq, y.rcvSeq)} (${rr.length - ri.length} bytes received since)`;
  const si = Buffer.from(String(x.sendQueue), 'base64'), sr = Buffer.from(String(y.sendQueue), 'base64');
  if (sr.length > si.length || !si.subarray(si.length - sr.length).equals(sr)) return 'sendQueue: the restored send queue is not what is left of the saved one';
  return undefined;
};

/**
 * A pid, tid, process group or session. One of the tree's must be the same
 * task again (read by the id this process sees: a new pid namespace or a
 * single process restored under a new pid are translated back). One from
 * outside the tree (the root's parent, a session or group the restarter
 * leads) is whoever restarts it: only its sharing is compared, in `space`.
 */
const treePid = (space: string): Rule => (a, b, cx) => {
  if (typeof a !== 'number' || typeof b !== 'number') return differs(a, b);
  const mine = cx.treeId(b);
  if (cx.inImage(a)) return mine === a ? undefined : differs(a, mine ?? `${b} (not a task of the tree)`);
  if (mine !== undefined) return differs(a, `${mine} (a task of the tree, where the image has one from outside)`);
  return cx.pair(`outside ${space}`, a, b) ? undefined : `${differs(a, b)} (outside the tree, but grouped differently)`;
};

/** [seconds, nanoseconds], or nanoseconds as a number or decimal string. */
function toNs(v: unknown): bigint | undefined {
  if (Array.isArray(v) && v.length === 2) return BigInt(v[0]) * 1_000_000_000n + BigInt(v[1]);
  if (typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v))) return BigInt(v);
  return undefined;
}

/**
 * A timer's remaining time: it runs from when the restart armed it, so it
 * may be lower by at most the time the restart has taken; one that could
 * have expired meanwhile may show its next period (at most its interval).
 * `interval` names the sibling field holding the period.
 */
const timeLeft = (interval?: string): Rule => (a, b, cx) => {
  const want = toNs(a), got = toNs(b);
  if (want === undefined || got === undefined) return differs(a, b);
  const period = interval ? toNs((cx.imageParent as Record<string, unknown>)[interval]) ?? 0n : 0n;
  // 0: disarmed, or (periodic) its expiry passed unread: the next one is within a period.
  if (want === 0n) return got === 0n || got <= period ? undefined : differs(a, b);
  if (got <= want && want - got <= cx.elapsedNs) return undefined;
  if (want <= cx.elapsedNs && got <= (period > want ? period : want)) return undefined;
  return `${differs(a, b)} (more than the ${cx.elapsedNs / 1_000_000n} ms the restart took apart)`;
};

/** timeLeft for a [seconds, microseconds] pair (getitimer). */
const usLeft = (interval?: string): Rule => (a, b, cx) => {
  const ns = (v: unknown) => (Array.isArray(v) && v.length === 2 ? [v[0], Number(v[1]) * 1000] : v);
  const parent = cx.imageParent as Record<string, unknown>;
  const withNs = { ...cx, imageParent: interval ? { ...parent, [interval]: ns(parent[interval]) } : parent };
  return timeLeft(interval)(ns(a), ns(b), withNs);
};

const SI_TIMER = -2;
/**
 * A pending-signal queue where a timer armed by the restart may already
 * have fired: the image's entries in order, plus SI_TIMER entries.
 */
const pendingPlusTimerSignals: Rule = (a, b, cx) => {
  if (!Array.isArray(a) || !Array.isArray(b)) return differs(a, b);
  const code = (x: unknown) => (typeof x === 'string' ? Buffer.from(x, 'base64').readInt32LE(8) : 0);
  const rest = [...b];
  for (const x of a) {
    const i = rest.indexOf(x);
    if (i < 0) return differs(a, b);
    if (rest.slice(0, i).some((y) => code(y) !== SI_TIMER)) return differs(a, b);
    rest.splice(0, i + 1);
  }
  return rest.every((y) => code(y) === SI_TIMER) ? undefined : differs(a, b);
};

/**
 * Flags compared without `bits` where `when` holds for the object holding
 * them (e.g. an fd of some kind).
 */
const withoutBits = (bits: number, when: (imageParent: unknown) => boolean): Rule => (a, b, cx) => {
  if (typeof a !== 'number' || typeof b !== 'number') return differs(a, b);
  const m = when(cx.imageParent) ? ~bits : ~0;
  return (a & m) === (b & m) ? undefined : differs(a, b);
};

/** A list whose order carries no meaning (the kernel's own order): compared sorted by `key`. */
const unordered = (key: string): Rule => (a, b, cx) => {
  const sorted = (v: unknown) => (Array.isArray(v) ? [...v].sort((x, y) => (x?.[key] < y?.[key] ? -1 : x?.[key] > y?.[key] ? 1 : 0)) : v);
  cx.compare(sorted(a), sorted(b));
};

/**
 * The VMA list with neighbouring anonymous VMAs that only a different
 * vm_pgoff kept apart merged into one: memory moved with mremap keeps the
 * page offset of where it was first mapped, so the kernel does not merge
 * it with its neighbour; mapped afresh at restart, the two merge. Same
 * memory, protections and flags; only the split in maps differs.
 */
const mergingAnon: Rule = (a, b, cx) => {
  const merged = (v: unknown) => {
    if (!Array.isArray(v)) return v;
    const out: ImageVma[] = [];
    for (const x of v as ImageVma[]) {
      const prev = out[out.length - 1];
      const plain = (y: ImageVma) => y.kind === 'anon' && !y.shmem && y.memfd === undefined && !y.shared;
      if (prev && plain(prev) && plain(x) && prev.end === x.start && prev.prot === x.prot && prev.name === x.name
        && [...prev.vmFlags].sort().join() === [...x.vmFlags].sort().join()) {
        out[out.length - 1] = { ...prev, end: x.end, savedPages: prev.savedPages + x.savedPages };
      } else {
        out.push(x);
      }
    }
    return out;
  };
  cx.compare(merged(a), merged(b));
};

/** Flag names (VmFlags): a difference names the flags each side lacks. */
const flagSet: Rule = (a, b) => {
  if (!Array.isArray(a) || !Array.isArray(b)) return differs(a, b);
  const lost = a.filter((f) => !b.includes(f)), gained = b.filter((f) => !a.includes(f));
  if (!lost.length && !gained.length) return;
  return [lost.length ? `image has ${lost.join(' ')}, restored has not` : '', gained.length ? `restored has ${gained.join(' ')}, image has not` : ''].filter(Boolean).join('; ');
};

/** A count that can only grow while time passes (timer expirations not yet read). */
const notFewer: Rule = (a, b) => {
  try {
    return BigInt(b as string) >= BigInt(a as string) ? undefined : differs(a, b);
  } catch {
    return differs(a, b);
  }
};

/** fds[].path: a pipe named by its inode, a pty slave by its number; both are new. */
const pipeOrPts: Rule = (a, b, cx) => {
  const pts = /^\/dev\/pts\/(\d+)$/;
  if (typeof a === 'string' && typeof b === 'string' && pts.test(a) && pts.test(b)) {
    return cx.pair('tty', Number(pts.exec(a)![1]), Number(pts.exec(b)![1])) ? undefined : `${differs(a, b)} (image tty ${a} is restored elsewhere as another one)`;
  }
  return sameId('pipe', /^pipe:\[(\d+)\]$/)(a, b, cx);
};

/** Registers by name, as the task will resume them (resumeRegs), so a difference names the register. */
const registers: Rule = (a, b, cx) => {
  const named = (v: unknown) => new Regs(Buffer.from(String(v), 'base64')).toJSON();
  const image = new Regs(Buffer.from(String(a), 'base64'));
  // A restart_block call is made again, or returns EINTR when a signal was deliverable (the process's signals decide).
  const interrupted = resumeRegs(image, true).toJSON();
  if (JSON.stringify(interrupted) === JSON.stringify(named(b))) return;
  cx.compare(resumeRegs(image).toJSON(), named(b));
};

/** The system call a thread resumes in: as resumeRegs leaves it (a restart_block call is made afresh). */
const resumedSyscall: Rule = (a, b, cx) => {
  const regs = (cx.imageParent as { regs?: string }).regs;
  if (typeof regs !== 'string') return a === b ? undefined : differs(a, b);
  const orig = resumeRegs(new Regs(Buffer.from(regs, 'base64'))).signed('orig_rax');
  const want = orig >= 0n ? Number(orig) : null;
  return want === b ? undefined : differs(want, b);
};

/**
 * The XSAVE area byte for byte, except XSTATE_BV (bytes 512-519 of the
 * header): the CPU clears a component's bit whenever that component is in
 * its initial state, and ptrace fills such a component with its initial
 * values, so the contents are what is compared.
 */
const xsave: Rule = (a, b) => {
  const x = Buffer.from(String(a), 'base64'), y = Buffer.from(String(b), 'base64');
  if (x.length !== y.length) return `image ${x.length} bytes, restored ${y.length} bytes`;
  if (x.subarray(0, 512).equals(y.subarray(0, 512)) && x.subarray(520).equals(y.subarray(520))) return;
  for (let i = 0; i < x.length; i++) {
    if (i >= 512 && i < 520) continue;
    if (x[i] !== y[i]) return `differs at byte ${i} (image 0x${x[i].toString(16)}, restored 0x${y[i].toString(16)})`;
  }
};

/** Only when the image value satisfies `when` is the field left out; otherwise compared as usual. */
const skipIf = (when: (image: unknown, imageParent: unknown) => boolean): Rule => (a, b, cx) => {
  if (!when(a, cx.imageParent)) return Object.is(a, b) || JSON.stringify(a) === JSON.stringify(b) ? undefined : differs(a, b);
};

/** In this stasis's restart hold (v2 hierarchy), where a tree waits until it is let go. */
const heldV2: Rule = (a, b, cx) => {
  if (a === b) return;
  const v2 = (cx.imageParent as { controllers?: string }).controllers === '';
  if (v2 && typeof b === 'string' && new RegExp(`/stasis-restart-${process.pid}-\\d+$`).test(b)) return;
  return differs(a, b);
};

// ---- the normalisations: one line each -------------------------------------
//
// Every field the dump code produces is compared exactly unless listed here.
// A path names a field of a Process record ("threads[].signals.blocked",
// any index written []), of a Zombie record ("zombie.ppid"), of the Pipes
// ("pipes[].data") or Memfds ("memfds[].size") records. Add state that
// legitimately changes across a restart as one more line: path, rule, why.

export const NORMALISATIONS: Array<[path: string, rule: Rule, why: string]> = [
  ['kernel', skip, 'the kernel the image was taken on; the restored tree runs on this one'],
  ['vmas', mergingAnon, 'anonymous VMAs kept apart only by vm_pgoff (mremap) merge when mapped afresh: compared merged'],
  ['vmas[].savedPages', skip, 'pages are not re-read: the layout, protections and flags are compared'],
  ['vmas[].inherited', skip, 'pages shared copy-on-write at checkpoint time: page bookkeeping, not re-read'],
  ['vmas[].offset', skipIf((_, v) => (v as { kind?: string }).kind === 'anon'), 'vm_pgoff of anonymous memory: the address it was first mapped at (mremap keeps it), not settable by mmap, seen only in maps'],
  ['vmas[].vmFlags', flagSet, 'compared as a set (smaps prints them in a fixed order anyway)'],
  ['vmas[].shmem.ino', sameId('shared memory'), 'shared anonymous memory is a new object: same sharing, new inode'],
  ['vmas[].memfd', sameId('memfd'), 'memfds are new files: same sharing, new inodes'],
  ['fds[].memfd', sameId('memfd'), 'memfds are new files: same sharing, new inodes'],
  ['fds[].pipe', sameId('pipe'), 'pipes are new: same ends, new inodes'],
  ['fds[].path', (a, b, cx) => (typeof a === 'string' && a.startsWith('socket:') ? sameId('socket', /^socket:\[(\d+)\]$/)(a, b, cx) : pipeOrPts(a, b, cx)), 'a pipe or a socket is named by its new inode, a pty slave by its new number'],
  ['fds[].sock', sameId('socket'), 'sockets are new: same ends, new inodes'],
  ['fds[].flags', (a, b, cx) => withoutBits((cx.imageParent as ImageFd).kind === 'ghost' ? 0o400000 : 0o100000, (f) => ['pipe', 'pidfd', 'mqueue', 'tty', 'ghost'].includes((f as ImageFd).kind))(a, b, cx), 'O_LARGEFILE: pipe2, pidfd_open, mq_open and TIOCGPTPEER leave it out, reopening a pipe end, pidfd, queue or pty slave through /proc adds it; it means nothing there. A deleted file\'s O_NOFOLLOW: reopening it through /proc cannot keep it (the open would fail with ELOOP)'],
  ['fds[].mqueue', sameId('mqueue'), 'a message queue made again is a new inode: same sharing'],
  ['fds[].inet.opts.sndbuf', skipIf((_, o) => !(((o as { bufLock?: number }).bufLock ?? 0) & 1)), 'an established connection\'s send buffer size the program did not set (SO_BUF_LOCK clear) is autotuned by the kernel as traffic flows'],
  ['fds[].inet.opts.rcvbuf', skipIf((_, o) => !(((o as { bufLock?: number }).bufLock ?? 0) & 2)), 'an established connection\'s receive buffer size the program did not set (SO_BUF_LOCK clear) is autotuned by the kernel as traffic flows'],
  ['fds[].inet.tcp', tcpContinued, 'a connection out of repair mode carries on: bytes the peer sent since are appended, bytes it acknowledged leave the send queue; window and timestamp clock move'],
  ['fds[].eventfd.id', sameId('eventfd'), 'eventfds are new objects: same sharing, new ids'],
  ['fds[].file.ino', skipIf((_, f) => /^\/proc\//.test((f as { path: string }).path)), 'a /proc file of a tree member is a new inode of the new process; its path, which names the process, is compared'],
  ['fds[].file.size', skip, 'the file an fd is open on may have been written since the checkpoint (its dev:ino is compared)'],
  ['fds[].file.mtimeNs', skip, 'the file an fd is open on may have been written since the checkpoint (its dev:ino is compared)'],
  ['fds[].timerfd.value', timeLeft('interval'), 'remaining time runs down while the restart goes on'],
  ['timers.posix[].remaining', timeLeft('interval'), 'remaining time runs down while the restart goes on'],
  ['timers.real.remaining', usLeft('interval'), 'remaining time runs down while the restart goes on'],
  ['timers.virtual.remaining', usLeft('interval'), 'CPU time left: the restart adds none, but a tick may be rounded'],
  ['timers.prof.remaining', usLeft('interval'), 'CPU time left: the restart adds none, but a tick may be rounded'],
  ['sharedPending', pendingPlusTimerSignals, 'a timer armed by the restart may fire before the read-back'],
  ['threads[].signals.pending', pendingPlusTimerSignals, 'a SIGEV_THREAD_ID timer armed by the restart may fire before the read-back'],
  ['stopsReported', skip, 'children restored stopped are back in their group stop and not read back'],
  ['fds[].epoll', unordered('fd'), 'fdinfo lists the interest list in kernel (file address) order'],
  ['fds[].timerfd.ticks', notFewer, 'expirations may have happened while the restart went on'],
  ['fds[].sharedWith.pid', treePid('task'), 'a pid of the tree, as seen from here'],
  ['vmas[].shmem.from.pid', treePid('task'), 'a pid of the tree, as seen from here'],
  ['fds[].locks[].pid', treePid('task'), 'the owner of a lock: a pid of the tree, as seen from here'],
  ['fds[].pidfd.pid', treePid('task'), 'the process a pidfd refers to: a pid of the tree, as seen from here (0: exited)'],
  ['fds[].owner.pid', treePid('task'), 'the F_SETOWN_EX owner: a task or group leader of the tree, as seen from here'],
  ['pid', treePid('task'), 'a pid of the tree, as seen from here'],
  ['ppid', treePid('parent'), "the root's parent is whoever restarts it"],
  ['pgid', treePid('group'), "a group led from outside the tree is the restarter's"],
  ['sid', treePid('session'), "a session led from outside the tree is the restarter's"],
  ['threads[].tid', treePid('task'), 'a tid of the tree, as seen from here'],
  ['threads[].regs', registers, 'compared register by register as the thread resumes (resumeRegs: a restart_block call is made again, or returns EINTR when a signal is deliverable)'],
  ['threads[].inSyscall', resumedSyscall, 'as resumeRegs leaves it'],
  ['threads[].xstate', xsave, 'XSTATE_BV follows which components are in their initial state; their contents are compared'],
  ['zombie.pid', treePid('task'), 'a pid of the tree, as seen from here'],
  ['zombie.ppid', treePid('parent'), 'a pid of the tree, as seen from here'],
  ['zombie.pgid', treePid('group'), "a group led from outside the tree is the restarter's"],
  ['zombie.sid', treePid('session'), "a session led from outside the tree is the restarter's"],
  ['pipes[].id', sameId('pipe'), 'pipes are new: same ends, new inodes'],
  ['pipes[].data', skipIf((_, p) => !!(p as ImagePipe).external), "an external pipe's bytes are not ours"],
  ['pipes[].external', skip, 'an external pipe is the one handed in with --inherit-fd'],
  ['memfds[].id', sameId('memfd'), 'memfds are new files: same sharing, new inodes'],
  ['memfds[].segments', skip, 'contents are pages: not re-read'],
  ['mqueues[].id', sameId('mqueue'), 'a message queue made again is a new inode: same sharing'],
  ['unix[].id', sameId('socket'), 'sockets are new: same ends, new inodes'],
  ['unix[].peer', (a, b, cx) => ((cx.imageParent as { external?: boolean }).external ? undefined : sameId('socket')(a, b, cx)), 'the peer is a new socket; an external socket is the one handed in with --inherit-fd'],
  ['unix[].acceptedFrom', (a, b, cx) => (a === -1 || b === -1 ? (a === b ? undefined : differs(a, b)) : sameId('socket')(a, b, cx)), 'the listening socket is a new socket'],
  ['unix[].queue[].from', sameId('socket'), 'the sender is a new socket'],
  ['unix[].external', skip, 'an external socket is the one handed in with --inherit-fd'],
  ['unix[].name', skipIf((_, s) => !!(s as { external?: boolean }).external), 'an external socket is the one handed in with --inherit-fd'],
  ['unix[].options', skipIf((_, s) => !!(s as { external?: boolean }).external), 'an external socket is the one handed in with --inherit-fd'],
  ['fds[].tty', sameId('tty'), 'a pty is made anew: its slave gets a new number'],
  ['ctty', sameId('tty'), 'a pty is made anew: its slave gets a new number'],
  ['ttys[].id', sameId('tty'), 'a pty is made anew: its slave gets a new number (a --shell-job terminal is the restarter\'s)'],
  ['ttys[].session', treePid('session'), 'a pid of the tree, as seen from here'],
  ['ttys[].foreground', treePid('group'), 'a pid of the tree, as seen from here'],
  ['vmas[].ghost', sameId('ghost'), 'deleted files are made again: same sharing, new ids'],
  ['fds[].ghost', sameId('ghost'), 'deleted files are made again: same sharing, new ids'],
  ['ghosts[].id', sameId('ghost'), 'deleted files are made again: same sharing, new ids'],
  ['ghosts[].segments', skip, 'contents are pages: not re-read'],
  ['cgroups[].path', heldV2, "the v2 cgroup: outside a new pid namespace the tree sits in this restart's hold (ptrace/hold.ts) until it is let go, then goes to the saved one"],
];

const RULES = new Map<string, Rule>(NORMALISATIONS.map(([p, r]) => [p, r]));

// ---- the comparison -------------------------------------------------------------

export interface Difference { where: string; path: string; message: string }

/** One record to compare: `where` names it ("pid 42"), `prefix` selects its rules ("", "zombie."). */
export interface RecordPair { where: string; prefix: string; image: unknown; restored: unknown }

/**
 * Every difference between image and restored records, by the rules of the
 * table. `hostToImage` maps the ids this process sees for the tree's tasks
 * to the image's; `imageIds` are the image's pids and tids.
 */
export function compareRecords(records: RecordPair[], hostToImage: Map<number, number>, imageIds: Set<number>, elapsedNs: bigint): Difference[] {
  const cmp = new Comparison(hostToImage, imageIds, elapsedNs);
  for (const r of records) cmp.record(r.where, r.prefix, r.image, r.restored);
  return cmp.found;
}

class Comparison {
  readonly found: Difference[] = [];
  private readonly spaces = new Map<string, { fwd: Map<unknown, unknown>; back: Map<unknown, unknown> }>();

  constructor(private readonly hostToImage: Map<number, number>, private readonly imageIds: Set<number>, private readonly elapsedNs: bigint) {}

  /** the image's VMA list as last compared (as a rule may have rewritten it), to name VMAs */
  private imageVmas: unknown[] = [];

  /** Compare one record: `where` names it ("pid 42"), `prefix` selects its rules ("", "zombie."). */
  record(where: string, prefix: string, image: unknown, restored: unknown): void {
    this.imageVmas = [];
    this.walk(where, prefix, '', prefix, image, restored, undefined, undefined);
  }

  /** A difference; one inside a VMA says which VMA of the image it is. */
  private push(where: string, path: string, message: string): void {
    const m = /^vmas\[(\d+)\]/.exec(path);
    const v = m ? this.imageVmas[Number(m[1])] : undefined;
    const label = isObject(v) && typeof v.start === 'number' && typeof v.end === 'number' ? ` (image vma ${v.start.toString(16)}-${v.end.toString(16)})` : '';
    this.found.push({ where, path, message: message + label });
  }

  private pair(space: string, a: unknown, b: unknown): boolean {
    let s = this.spaces.get(space);
    if (!s) this.spaces.set(space, s = { fwd: new Map(), back: new Map() });
    const fa = s.fwd.get(a), bb = s.back.get(b);
    if (fa === undefined && bb === undefined) {
      s.fwd.set(a, b);
      s.back.set(b, a);
      return true;
    }
    return fa === b && bb === a;
  }

  /** `pattern` is the path as the table writes it: the prefix, indices as []. */
  private walk(where: string, prefix: string, path: string, pattern: string, a: unknown, b: unknown, pa: unknown, pb: unknown, ruled = false): void {
    const rule = ruled ? undefined : RULES.get(pattern);
    if (rule) {
      const cx: RuleContext = {
        path, imageParent: pa, restoredParent: pb, elapsedNs: this.elapsedNs,
        pair: (space, x, y) => this.pair(space, x, y),
        treeId: (id) => this.hostToImage.get(id),
        inImage: (id) => this.imageIds.has(id),
        compare: (x, y) => this.walk(where, prefix, path, pattern, x, y, pa, pb, true),
      };
      const msg = rule(a, b, cx);
      if (msg) this.push(where, path, msg);
      return;
    }
    if (a === b) return; // the same primitive, and no rule: equal
    if (path === 'vmas' && Array.isArray(a)) this.imageVmas = a;
    const dot = path ? '.' : '', pdot = pattern === prefix ? '' : '.';
    if (Array.isArray(a) && Array.isArray(b)) {
      for (let i = 0; i < Math.min(a.length, b.length); i++) this.walk(where, prefix, `${path}[${i}]`, `${pattern}[]`, a[i], b[i], a, b);
      if (a.length !== b.length) this.push(where, path, `image ${a.length} entries, restored ${b.length}`);
      return;
    }
    if (isObject(a) && isObject(b)) {
      for (const k of Object.keys(a)) this.walk(where, prefix, path + dot + k, pattern + pdot + k, a[k], b[k], a, b);
      for (const k of Object.keys(b)) if (!(k in a)) this.walk(where, prefix, path + dot + k, pattern + pdot + k, undefined, b[k], a, b);
      return;
    }
    if (Object.is(a, b)) return;
    // Addresses read better in hex.
    const address = /(^|\.)(start|end|addr|start\w+|end\w+|brk|arg\w+|env\w+)$/.test(path) && typeof a === 'number' && typeof b === 'number';
    this.push(where, path, address ? differs(`0x${a.toString(16)}`, `0x${b.toString(16)}`) : differs(a, b));
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}


// ---- reading the rebuilt tree back ------------------------------------------------

/** A process of the image as rebuilt: its threads seized, main thread first, registers final. */
export interface RebuiltProcess {
  image: ImageProcess;
  threads: Tracee[];
}

export interface VerifyInput {
  processes: RebuiltProcess[];
  /** each zombie of the image with the pid it has as seen from here */
  zombies: Array<{ image: ImageZombie; pid: number }>;
  pipes: ImagePipe[];
  memfds: ImageMemfd[];
  /** the Objects record's tables */
  objects?: ObjectTables;
  /** when the restart began (process.hrtime.bigint()) */
  startedAt: bigint;
  log?: (m: string) => void;
}

/**
 * Read the rebuilt tree back and compare it with the image; throws a
 * StasisError naming the first difference. Every thread gets its final
 * registers back, and the scratch area the dump code maps is gone again
 * (checked), before this returns.
 */
export function verifyTree(input: VerifyInput): void {
  const log = input.log ?? (() => {});
  const hostToImage = new Map<number, number>();
  const imageIds = new Set<number>();
  for (const p of input.processes) {
    p.threads.forEach((t, i) => hostToImage.set(t.pid, p.image.threads[i].tid));
    for (const th of p.image.threads) imageIds.add(th.tid);
    imageIds.add(p.image.pid);
  }
  for (const z of input.zombies) {
    hostToImage.set(z.pid, z.image.pid);
    imageIds.add(z.image.pid);
  }
  // The registers each thread resumes with: the dump reads them, injections start from them.
  // Every signal but SIGTRAP blocked while the tree is read back, as at
  // checkpoint: an injected call returns to user mode, where a pending
  // unblocked signal would be taken (and its siginfo lost). The dump reads
  // each thread's own mask from heldMask.
  for (const p of input.processes) for (const t of p.threads) t.saved = t.getRegs();
  const tampered = tamper(input.processes);
  for (const p of input.processes) {
    for (const t of p.threads) {
      t.heldMask = t.getSigmask();
      t.setSigmask(~(1n << 4n) & 0xffffffffffffffffn);
    }
  }
  // Processes restored stopped are not given here (they are back in their group stop, untraced).
  const frozen: FrozenProcess[] = input.processes.map((p) => ({ pid: p.threads[0].pid, ppid: readStat(p.threads[0].pid).ppid, zombie: false, stopped: false, threads: p.threads }));
  const pipes = new PipeTable();
  const memfds = new MemfdTable();
  const kinds = new DumpContext(pipes, memfds);
  Object.assign(kinds.table(GhostTable), { contents: false, limit: Infinity });
  let images: ImageProcess[];
  try {
    const ttyTable = kinds.table(TtyTable);
    ttyTable.readBack = true;
    ttyTable.shellJob = !!input.objects?.ttys?.some((t) => t.external);
    kinds.tcpEstablished = true;
    const surveys = surveyProcesses(frozen, input.processes[0].threads[0].pid, kinds, new LockTable(), true);
    if (input.objects?.ttys?.length) ttyTable.refuseOutsiders(new Set(frozen.map((p) => p.pid)));
    // Guard regions are found where pages are (pagemap), which the read-back otherwise skips.
    for (const x of surveys) for (const v of x.vmas) if (v.vmFlags.includes('gu') && !v.shmem) pagesToSave(x.proc.pid, v);
    images = surveys.map((s) => dumpProcess(s, childrenOf(surveys, s)));
    // Nothing of stasis's own may stay mapped: the layout must be the one just compared.
    surveys.forEach((s) => {
      const now = readMaps(s.proc.pid).map((v) => `${v.start}-${v.end}`).join(' ');
      if (now !== s.vmas.map((v) => `${v.start}-${v.end}`).join(' ')) throw new StasisError(`pid ${hostToImage.get(s.proc.pid)}: the address space changed while it was read back`);
    });
  } catch (e) {
    // Something the checkpoint would refuse in the restored tree is a difference too.
    if (e instanceof StasisError) throw new StasisError(`verify: reading the restored tree back: ${e.message}`);
    throw e;
  } finally {
    kinds.release(false);
    for (const p of input.processes) {
      for (const t of p.threads) {
        t.setRegs(t.saved!);
        t.setSigmask(t.heldMask!);
        t.heldMask = undefined;
      }
    }
  }
  const zombies = input.zombies.map((z) => dumpZombie({ pid: z.pid, ppid: 0, zombie: true, stopped: false, threads: [] }));

  const elapsedNs = process.hrtime.bigint() - input.startedAt;
  const records: RecordPair[] = [
    ...input.processes.map((p, i) => ({ where: `pid ${p.image.pid}`, prefix: '', image: p.image, restored: images[i] })),
    ...input.zombies.map((z, i) => ({ where: `zombie ${z.image.pid}`, prefix: 'zombie.', image: z.image, restored: zombies[i] })),
  ];
  if (input.pipes.length) records.push({ where: 'pipes', prefix: '', image: { pipes: input.pipes }, restored: { pipes: pipes.collect() } });
  if (input.memfds.length) records.push({ where: 'memfds', prefix: '', image: { memfds: input.memfds }, restored: { memfds: memfds.collect(false) } });
  const objects = kinds.objects() ?? {};
  if (input.objects && Object.keys(input.objects).length) records.push({ where: 'objects', prefix: '', image: input.objects, restored: objects });
  const found = compareRecords(records, hostToImage, imageIds, elapsedNs);
  if (found.length) {
    for (const f of found) log(`verify: ${f.where}: ${f.path}: ${f.message}`);
    const d = found[0];
    const more = found.length > 1 ? ` (and ${found.length - 1} more difference${found.length > 2 ? 's' : ''})` : '';
    throw new StasisError(`verify: ${d.where}: ${d.path}: ${d.message}${more}`);
  }
  if (tampered) throw new StasisError(`verify: STASIS_TEST_TAMPER=${tampered} altered a restored value and verification did not see it`);
  log(`verified ${input.processes.length} processes, ${input.zombies.length} zombies against the image`);
}

/**
 * Test-only hook, STASIS_TEST_TAMPER=umask|blocked: alters one restored
 * value of the root right before it is read back, to prove that --verify
 * catches a difference. Harmless by construction: it acts only inside a
 * verification, and a tampered tree that passes verification is refused
 * all the same (above), so a tampered tree never runs.
 */
function tamper(processes: RebuiltProcess[]): string | undefined {
  const what = process.env.STASIS_TEST_TAMPER;
  if (!what) return undefined;
  const root = processes[0];
  const main = root.threads[0];
  if (what === 'blocked') {
    const last = root.threads[root.threads.length - 1];
    last.setSigmask(last.getSigmask() ^ (1n << 11n)); // SIGUSR2's bit
  } else if (what === 'umask') {
    const vdso = specialVmas(root.image.vmas).get('[vdso]');
    main.syscallInsn = locateSyscall(main, vdso ? [vdso] : []);
    const old = new Remote(main).call('umask', SYS.umask, [0o077]);
    if (old === 0o077) new Remote(main).call('umask', SYS.umask, [0o022]);
  } else {
    throw new StasisError(`STASIS_TEST_TAMPER=${what}: not a known field (umask, blocked)`);
  }
  return what;
}

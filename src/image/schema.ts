// The metadata schema of an image, declared once with zod: the types the
// rest of stasis uses are z.infer of these schemas, and every JSON record is
// parsed through them when an image is loaded (src/image/load.ts).
// Addresses are JSON numbers (user space fits in 53 bits); 64-bit masks and
// values that may not fit are hex strings; raw kernel structs are base64.
// docs/image-format.md describes every field and the validation rules.
//
// ADDING A FIELD (convention for every kind module):
//  - declare the state as a bounded zod schema in the kind module, with the
//    type of the same name:
//      export const SchedState = z.object({ policy: int(0, 7), ... });
//      export type SchedState = z.infer<typeof SchedState>;
//    using the bounded blocks of ./fields (int, u32, hex64, path, ...), never
//    a bare z.number() or z.string();
//  - add ONE line to the z.object of the record below, e.g. `sched: SchedState,`
//    in ImageProcess, with a VALUE import (`import { SchedState } from
//    '../kinds/sched'`); the kind module may import types from here
//    (`import type`) but no values, so there is no import cycle;
//  - keep it required unless absence has a meaning (then `.optional()`);
//  - checks that span records (ids that must exist, ranges that must not
//    overlap) go into src/image/validate.ts.
import { z, lazySchema } from './zod';
import { check } from './checks';
import {
  int, u32, count, pid, pidOrZero, fd, address, pageAligned, isPageAligned, hex64, hex32, decimalU64, decimalI64,
  path, name, base64Exact, base64Max, PID_MAX, FD_MAX,
} from './fields';
import { CgroupMembership } from '../kinds/cgroups';
import { FileLock } from '../kinds/locks';
import { FdOwner } from '../kinds/fdowner';
import { Sharing } from '../kinds/sharing';
import { GuardRuns, ShmemSize } from '../kinds/memory';
import { LockFuture, MergeAny } from '../kinds/mmpolicy';
import { TimersState } from '../kinds/timers';
import { StopSignal, ExitSignal } from '../kinds/signals';
import { CapsState } from '../kinds/caps';
import { SchedState } from '../kinds/sched';
import { MempolicyState } from '../kinds/mempolicy';
import { ProcessPrctlState, ThreadPrctlState } from '../kinds/prctl';
import { FileIdentity, FileFd, DirFd } from '../kinds/regular';
import { ChrFd } from '../kinds/devices';
import { PipeFd, FifoFd } from '../kinds/pipes';
import { MemfdFd } from '../kinds/memfd';
import { EventfdFd } from '../kinds/eventfd';
import { SignalfdFd, TimerfdFd } from '../kinds/timerfd';
import { EpollFd } from '../kinds/epoll';
import { MqueueFd, MqueueObject } from '../kinds/mqueue';
import { SysvId, SysvShmObject } from '../kinds/sysvshm';
import { InotifyFd } from '../kinds/inotify';
import { PidfdFd } from '../kinds/pidfd';
import { SymlinkFd } from '../kinds/symlink';
import { UnixFd, UnixSocket } from '../kinds/unix';
import { TtyFd, ImageTty, Ctty } from '../kinds/tty';
import { InetFd } from '../kinds/inet';
import { GhostFd, ImageGhost } from '../kinds/ghost';

export { FileIdentity };
export type FileIdentity = z.infer<typeof FileIdentity>;

export const VmaKind = lazySchema(() => z.enum(['anon', 'file', 'shmem', 'vdso', 'vvar', 'vvar_vclock', 'ghost']));
export type VmaKind = z.infer<typeof VmaKind>;

const nonEmpty = check('positive', (v: number) => v > 0);
const AddressRun = lazySchema(() => z.object({ addr: pageAligned, len: pageAligned.refine(nonEmpty, 'empty run') }));

export const ImageVma = lazySchema(() => z.object({
  start: pageAligned,
  end: pageAligned,
  /** "rwx" with '-' for missing rights, as in /proc/pid/maps */
  prot: z.string().regex(/^[r-][w-][x-]$/, "not 'rwx' with '-' for missing rights"),
  shared: z.boolean(),
  kind: VmaKind,
  /** /proc name for anonymous kinds: "[heap]", "[stack]", "" */
  name: name(4096),
  file: FileIdentity.optional(),
  offset: count.refine(isPageAligned, 'not page aligned'),
  /** VmFlags from smaps, restored where they carry behaviour (gd, dd, hg ...) */
  vmFlags: z.array(z.string().regex(/^[a-z0-9]{2}$/, 'not a two-letter VmFlag')).max(64),
  /**
   * Shared anonymous memory: the shmem object's inode and size. The first
   * VMA (in image order) mapping an object makes it; later ones (in any
   * process) name it as `from` and map the same object at their offset.
   * Each page of the object is saved once, with the first VMA mapping it.
   */
  shmem: z.object({ ino: count, from: z.object({ pid, start: pageAligned, end: pageAligned }).optional(), size: ShmemSize.optional() }).optional(),
  /** a shared mapping of a memfd file: its id in the Memfds record (contents saved there) */
  memfd: count.optional(),
  /** an attachment of a System V shared memory segment: its id in the Objects record's sysvShm table */
  sysv: SysvId.optional(),
  /** a mapping (shared or private) of a deleted file: its id in the Objects record's ghosts table */
  ghost: count.optional(),
  /** number of pages saved for this VMA in Pages records */
  savedPages: count,
  /**
   * Pages still shared copy-on-write with an ancestor at checkpoint time:
   * saved once, in the ancestor's Pages records, and copied from there.
   */
  inherited: z.array(z.object({ from: pid, runs: z.array(AddressRun).max(1 << 20) })).max(4096).optional(),
  /** guard regions (MADV_GUARD_INSTALL) inside the VMA; absent when none */
  guards: GuardRuns.optional(),
}));
export type ImageVma = z.infer<typeof ImageVma>;

/** What every fd record has; its kind's own fields are added by the kind module (src/kinds/fdkind.ts). */
const FdCommon = lazySchema(() => z.object({
  fd,
  path: name(4096),
  /** open flags from fdinfo (O_CLOEXEC stripped; see cloexec) */
  flags: int(0, 0o77777777),
  pos: count,
  cloexec: z.boolean(),
  /** an earlier fd with the same open file description (dup'ed, not reopened) */
  sameAs: fd.optional(),
  /** the same open file description as an fd of an earlier process (fork) */
  sharedWith: z.object({ pid, fd }).optional(),
  /** locks held through this fd (flock and OFD locks: on the fd that restores the open file description) */
  locks: z.array(FileLock).max(1 << 16).optional(),
  /** F_SETOWN_EX owner and F_SETSIG signal of the open file description, when set */
  owner: FdOwner.optional(),
}));

/** An fd: the common fields and one registered kind's, tagged by `kind` (one line per kind). */
export const ImageFd = lazySchema(() => z.discriminatedUnion('kind', [
  FdCommon.extend(FileFd.shape),
  FdCommon.extend(DirFd.shape),
  FdCommon.extend(ChrFd.shape),
  FdCommon.extend(PipeFd.shape),
  FdCommon.extend(FifoFd.shape),
  FdCommon.extend(MemfdFd.shape),
  FdCommon.extend(EventfdFd.shape),
  FdCommon.extend(SignalfdFd.shape),
  FdCommon.extend(TimerfdFd.shape),
  FdCommon.extend(EpollFd.shape),
  FdCommon.extend(MqueueFd.shape),
  FdCommon.extend(InotifyFd.shape),
  FdCommon.extend(PidfdFd.shape),
  FdCommon.extend(SymlinkFd.shape),
  FdCommon.extend(UnixFd.shape),
  FdCommon.extend(TtyFd.shape),
  FdCommon.extend(InetFd.shape),
  FdCommon.extend(GhostFd.shape),
]));
export type ImageFd = z.infer<typeof ImageFd>;

/** A raw siginfo_t, base64. */
const Siginfo = lazySchema(() => base64Exact(128));
/** More queued signals than RLIMIT_SIGPENDING allows in practice. */
const MAX_PENDING = 1 << 16;

export const ImageSigaction = lazySchema(() => z.object({
  sig: int(1, 64),
  handler: hex64,
  flags: hex64,
  restorer: hex64,
  mask: hex64,
}));
export type ImageSigaction = z.infer<typeof ImageSigaction>;

/** Per-thread signal state. */
export const ImageSignals = lazySchema(() => z.object({
  blocked: hex64,
  /** raw siginfo_t (128 bytes), base64, pending for this thread */
  pending: z.array(Siginfo).max(MAX_PENDING),
  altstack: z.object({ sp: address, flags: u32, size: address }),
}));
export type ImageSignals = z.infer<typeof ImageSignals>;

export const ImageThread = lazySchema(() => z.object({
  tid: pid,
  /** thread name (/proc/pid/task/tid/comm) */
  comm: name(64),
  /** struct user_regs_struct, base64 */
  regs: base64Exact(216),
  /** NT_X86_XSTATE regset, base64 */
  xstate: base64Max(16384),
  signals: ImageSignals,
  rseq: z.object({ addr: hex64, len: int(0, 4096), sig: u32, flags: u32 }).nullable(),
  tidAddress: hex64,
  robustList: z.object({ head: hex64, len: int(0, 4096) }),
  /** the syscall it was stopped in, if any, and how it must resume */
  inSyscall: int(0, 4095).nullable(),
  sched: SchedState,
  mempolicy: MempolicyState,
  prctl: ThreadPrctlState,
  /** capability sets and securebits of this thread (creds.cap* are the main thread's) */
  caps: CapsState,
}));
export type ImageThread = z.infer<typeof ImageThread>;

export const ImageMm = lazySchema(() => z.object({
  startCode: address, endCode: address, startData: address, endData: address,
  startBrk: address, brk: address, startStack: address,
  argStart: address, argEnd: address, envStart: address, envEnd: address,
  /** saved auxv vector, base64 (the kernel keeps at most AT_VECTOR_SIZE pairs) */
  auxv: base64Max(1024),
  exe: FileIdentity,
}));
export type ImageMm = z.infer<typeof ImageMm>;

const uid = lazySchema(() => int(0, 0xfffffffe));
export const ImageCreds = lazySchema(() => z.object({
  /** real, effective, saved, filesystem */
  uid: z.array(uid).length(4),
  gid: z.array(uid).length(4),
  groups: z.array(uid).max(65536),
  capEff: hex64,
  capPrm: hex64,
  capInh: hex64,
  capBnd: hex64,
  capAmb: hex64,
  noNewPrivs: int(0, 1),
}));
export type ImageCreds = z.infer<typeof ImageCreds>;

export const ImageRlimit = lazySchema(() => z.object({ resource: int(0, 15), name: name(64), soft: hex64, hard: hex64 }));

export const ImageProcess = lazySchema(() => z.object({
  pid,
  ppid: pidOrZero,
  pgid: pidOrZero,
  sid: pidOrZero,
  comm: name(64),
  /** signal dispositions, shared by the threads */
  sigactions: z.array(ImageSigaction).max(64),
  /** raw siginfo_t, base64: signals pending for the whole process */
  sharedPending: z.array(Siginfo).max(MAX_PENDING),
  /** kernel the image was taken on (uname -r) */
  kernel: name(256),
  personality: u32,
  umask: int(0, 0o777),
  cwd: path,
  root: path,
  /** ARCH_GET_XCOMP_PERM: extended state components it may use (AMX) */
  xcompPerm: hex64,
  rlimits: z.array(ImageRlimit).max(16),
  creds: ImageCreds,
  mm: ImageMm,
  prctl: ProcessPrctlState,
  /** mlockall(MCL_FUTURE) in force for new mappings */
  lockFuture: LockFuture,
  /** prctl(PR_SET_MEMORY_MERGE): KSM merges all its memory */
  ksmMergeAny: MergeAny,
  vmas: z.array(ImageVma).max(1 << 18),
  fds: z.array(ImageFd).max(FD_MAX),
  /** what it shares with its parent (fd table, fs info) */
  sharing: Sharing,
  /** main thread first */
  threads: z.array(ImageThread).min(1).max(1 << 16),
  /** cgroup membership per hierarchy */
  cgroups: z.array(CgroupMembership).max(64),
  /** stopped by a signal (SIGSTOP, SIGTSTP ...): restored stopped */
  stopped: z.boolean().optional(),
  /** with stopped: the signal that stopped it (absent: SIGSTOP) */
  stopSignal: StopSignal.optional(),
  /** stopped children whose stop this process had already taken with wait(WUNTRACED) */
  stopsReported: z.array(pid).max(PID_MAX),
  /** exit_signal: sent to the parent when it ends (SIGCHLD, another, or 0 for none) */
  exitSignal: ExitSignal,
  /** POSIX timers and interval timers */
  timers: TimersState,
  /** its controlling terminal: an id in the Objects record's ttys (absent: none, or its session's, led outside the tree) */
  ctty: Ctty,
}));
export type ImageProcess = z.infer<typeof ImageProcess>;

/** A child that has exited but not been waited for. */
export const ImageZombie = lazySchema(() => z.object({
  pid,
  ppid: pid,
  pgid: pidOrZero,
  sid: pidOrZero,
  /** wait status as wait() reports it */
  exitStatus: int(0, 0xffff),
  /** exit_signal: decides whether wait() needs __WCLONE to see it */
  exitSignal: ExitSignal,
}));
export type ImageZombie = z.infer<typeof ImageZombie>;

/** Largest pipe buffer the kernel allows (F_SETPIPE_SZ is an int, a power of two). */
const PIPE_MAX = 1 << 30;

/** Pipes and FIFOs of the tree, with the bytes in flight (Pipes record). */
export const ImagePipe = lazySchema(() => z.object({
  id: count,
  kind: z.enum(['pipe', 'fifo']),
  /** FIFO path */
  path: path.optional(),
  /** buffer capacity (F_GETPIPE_SZ) */
  size: int(0, PIPE_MAX),
  /** unread bytes, base64 (empty for an external pipe: they are not ours) */
  data: base64Max(PIPE_MAX),
  /** a pipe also held outside the tree, declared with --external: at restart it must be handed in with --inherit-fd */
  external: z.boolean().optional(),
}));
export type ImagePipe = z.infer<typeof ImagePipe>;

/** A memfd file with its contents (Memfds record, ImageMemfd[]). */
export const ImageMemfd = lazySchema(() => z.object({
  /** inode number at checkpoint time */
  id: count,
  name: name(249),
  size: count,
  /** F_GET_SEALS */
  seals: int(0, 0x3f),
  /** data segments (holes are not saved), base64 */
  segments: z.array(z.object({ offset: count, data: base64Max(1 << 30) })).max(1 << 20),
}));
export type ImageMemfd = z.infer<typeof ImageMemfd>;

/**
 * Objects of the tree held by fds of several processes (sockets, deleted
 * files, IPC objects): one optional table per kind, one line per kind,
 * e.g. `unix: z.array(UnixSocket).max(1 << 20).optional(),` with the item
 * schema from the kind module. The Objects record is written when any
 * table has entries.
 */
export const ObjectTables = lazySchema(() => z.object({
  mqueues: z.array(MqueueObject).max(1 << 16).optional(),
  sysvShm: z.array(SysvShmObject).max(1 << 16).optional(),
  unix: z.array(UnixSocket).max(1 << 20).optional(),
  ttys: z.array(ImageTty).max(4096).optional(),
  ghosts: z.array(ImageGhost).max(1 << 16).optional(),
}));
export type ObjectTables = z.infer<typeof ObjectTables>;

/** The payload of each JSON record type. */
export const PipesRecord = lazySchema(() => z.array(ImagePipe).max(1 << 20));
export const MemfdsRecord = lazySchema(() => z.array(ImageMemfd).max(1 << 20));
/** End: the record count lets a reader prove it saw everything; the rest is informational. */
export const EndRecord = lazySchema(() => z.object({ records: int(0, 1 << 30), pageBytes: count.optional() }));
export type EndRecord = z.infer<typeof EndRecord>;

/** Header of a binary Pages record: u32 runs, u32 pid, (u64 addr, u64 len)*, then the data. */
export const PageRun = AddressRun;
export type PageRun = z.infer<typeof PageRun>;
export const PagesHeader = lazySchema(() => z.object({ pid, runs: z.array(PageRun).max(1 << 24) }));
export type PagesHeader = z.infer<typeof PagesHeader>;

export { PID_MAX, FD_MAX };

// The metadata schema of an image (the JSON payload of a Process record).
// Addresses are JSON numbers (user space fits in 53 bits); 64-bit masks and
// values that may not fit are hex strings; raw kernel structs are base64.
// docs/image-format.md describes every field.
import type { CapsState } from '../kinds/caps';
import type { SchedState } from '../kinds/sched';
import type { MempolicyState } from '../kinds/mempolicy';
import type { ProcessPrctlState, ThreadPrctlState } from '../kinds/prctl';

/** How a file is recognised again at restart. */
export interface FileIdentity {
  path: string;
  dev: number;
  ino: number;
  size: number;
  /** mtime in nanoseconds, as a decimal string */
  mtimeNs: string;
}

export type VmaKind = 'anon' | 'file' | 'shmem' | 'vdso' | 'vvar' | 'vvar_vclock';

export interface ImageVma {
  start: number;
  end: number;
  /** "rwx" with '-' for missing rights, as in /proc/pid/maps */
  prot: string;
  shared: boolean;
  kind: VmaKind;
  /** /proc name for anonymous kinds: "[heap]", "[stack]", "" */
  name: string;
  file?: FileIdentity;
  offset: number;
  /** VmFlags from smaps, restored where they carry behaviour (gd, dd, hg ...) */
  vmFlags: string[];
  /**
   * Shared anonymous memory: the shmem object's inode. The first process
   * (in image order) mapping an object saves its pages; later ones name it
   * as `from` and map the same object again.
   */
  shmem?: { ino: number; from?: { pid: number; start: number; end: number } };
  /** a shared mapping of a memfd file: its id in the Memfds record (contents saved there) */
  memfd?: number;
  /** number of pages saved for this VMA in Pages records */
  savedPages: number;
  /**
   * Pages still shared copy-on-write with an ancestor at checkpoint time:
   * saved once, in the ancestor's Pages records, and copied from there.
   */
  inherited?: Array<{ from: number; runs: Array<{ addr: number; len: number }> }>;
}

export interface ImageFd {
  fd: number;
  kind: 'file' | 'dir' | 'chr' | 'pipe' | 'fifo' | 'memfd' | 'eventfd' | 'signalfd' | 'timerfd' | 'epoll';
  path: string;
  /** open flags from fdinfo (O_CLOEXEC stripped; see cloexec) */
  flags: number;
  pos: number;
  cloexec: boolean;
  /** an earlier fd with the same open file description (dup'ed, not reopened) */
  sameAs?: number;
  /** the same open file description as an fd of an earlier process (fork) */
  sharedWith?: { pid: number; fd: number };
  /** pipe or FIFO: its id in the Pipes record */
  pipe?: number;
  /** memfd: its id in the Memfds record */
  memfd?: number;
  /** eventfd: its counter (decimal string, 64-bit), semaphore mode and kernel id */
  eventfd?: { count: string; semaphore: boolean; id: number };
  /** signalfd: the signal mask it reads (hex) */
  signalfd?: { mask: string };
  /** timerfd: clock, remaining time and interval as [s, ns], unread expirations */
  timerfd?: { clock: number; value: [number, number]; interval: [number, number]; ticks: string };
  /** epoll: what it watches, as (fd of this process, events hex, data hex) */
  epoll?: Array<{ fd: number; events: string; data: string }>;
  file?: FileIdentity;
}

export interface ImageSigaction {
  sig: number;
  handler: string;
  flags: string;
  restorer: string;
  mask: string;
}

/** Per-thread signal state. */
export interface ImageSignals {
  blocked: string;
  /** raw siginfo_t (128 bytes), base64, pending for this thread */
  pending: string[];
  altstack: { sp: number; flags: number; size: number };
}

export interface ImageThread {
  tid: number;
  /** thread name (/proc/pid/task/tid/comm) */
  comm: string;
  /** struct user_regs_struct, base64 */
  regs: string;
  /** NT_X86_XSTATE regset, base64 */
  xstate: string;
  signals: ImageSignals;
  rseq: { addr: string; len: number; sig: number; flags: number } | null;
  tidAddress: string;
  robustList: { head: string; len: number };
  /** the syscall it was stopped in, if any, and how it must resume */
  inSyscall: number | null;
  sched: SchedState;
  mempolicy: MempolicyState;
  prctl: ThreadPrctlState;
  /** capability sets and securebits of this thread (creds.cap* are the main thread's) */
  caps: CapsState;
}

export interface ImageMm {
  startCode: number; endCode: number; startData: number; endData: number;
  startBrk: number; brk: number; startStack: number;
  argStart: number; argEnd: number; envStart: number; envEnd: number;
  /** saved auxv vector, base64 */
  auxv: string;
  exe: FileIdentity;
}

export interface ImageCreds {
  uid: number[];
  gid: number[];
  groups: number[];
  capEff: string;
  capPrm: string;
  capInh: string;
  capBnd: string;
  capAmb: string;
  noNewPrivs: number;
}

export interface ImageProcess {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  comm: string;
  /** signal dispositions, shared by the threads */
  sigactions: ImageSigaction[];
  /** raw siginfo_t, base64: signals pending for the whole process */
  sharedPending: string[];
  /** kernel the image was taken on (uname -r) */
  kernel: string;
  personality: number;
  umask: number;
  cwd: string;
  root: string;
  /** ARCH_GET_XCOMP_PERM: extended state components it may use (AMX) */
  xcompPerm: string;
  rlimits: Array<{ resource: number; name: string; soft: string; hard: string }>;
  creds: ImageCreds;
  mm: ImageMm;
  prctl: ProcessPrctlState;
  vmas: ImageVma[];
  fds: ImageFd[];
  /** main thread first */
  threads: ImageThread[];
  /** stopped by a signal (SIGSTOP, SIGTSTP ...): restored stopped */
  stopped?: boolean;
}

/** A child that has exited but not been waited for. */
export interface ImageZombie {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  /** wait status as wait() reports it */
  exitStatus: number;
}

/** Pipes and FIFOs of the tree, with the bytes in flight (Pipes record). */
export interface ImagePipe {
  id: number;
  kind: 'pipe' | 'fifo';
  /** FIFO path */
  path?: string;
  /** buffer capacity (F_GETPIPE_SZ) */
  size: number;
  /** unread bytes, base64 (empty for an external pipe: they are not ours) */
  data: string;
  /** a pipe also held outside the tree, declared with --external: at restart it must be handed in with --inherit-fd */
  external?: boolean;
}

/** A memfd file with its contents (Memfds record, ImageMemfd[]). */
export interface ImageMemfd {
  /** inode number at checkpoint time */
  id: number;
  name: string;
  size: number;
  /** F_GET_SEALS */
  seals: number;
  /** data segments (holes are not saved), base64 */
  segments: Array<{ offset: number; data: string }>;
}

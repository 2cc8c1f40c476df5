// The metadata schema of an image (the JSON payload of a Process record).
// Addresses are JSON numbers (user space fits in 53 bits); 64-bit masks and
// values that may not fit are hex strings; raw kernel structs are base64.
// docs/image-format.md describes every field.

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
  /** number of pages saved for this VMA in Pages records */
  savedPages: number;
}

export interface ImageFd {
  fd: number;
  kind: 'file' | 'dir' | 'chr';
  path: string;
  /** open flags from fdinfo (O_CLOEXEC stripped; see cloexec) */
  flags: number;
  pos: number;
  cloexec: boolean;
  /** an earlier fd with the same open file description (dup'ed, not reopened) */
  sameAs?: number;
  file?: FileIdentity;
}

export interface ImageSigaction {
  sig: number;
  handler: string;
  flags: string;
  restorer: string;
  mask: string;
}

export interface ImageSignals {
  actions: ImageSigaction[];
  blocked: string;
  /** raw siginfo_t (128 bytes), base64: thread-private then process-wide */
  pending: string[];
  sharedPending: string[];
  altstack: { sp: number; flags: number; size: number };
}

export interface ImageThread {
  tid: number;
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
  comm: string;
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
  vmas: ImageVma[];
  fds: ImageFd[];
  threads: ImageThread[];
}

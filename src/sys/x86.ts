// x86-64 specifics: system call numbers, struct user_regs_struct, and the
// kernel's syscall-restart return codes.

export const SYS = {
  read: 0, write: 1, open: 2, close: 3, fstat: 5, lseek: 8, mmap: 9, mprotect: 10, munmap: 11,
  brk: 12, rt_sigaction: 13, rt_sigprocmask: 14, ioctl: 16, madvise: 28, dup: 32, dup2: 33,
  pause: 34, nanosleep: 35, getpid: 39, clone: 56, exit: 60, kill: 62, fcntl: 72, chdir: 80,
  fchdir: 81, umask: 95, getrlimit: 97, setresuid: 117, setresgid: 119, setgroups: 116,
  sigaltstack: 131, personality: 135, prctl: 157, arch_prctl: 158, chroot: 161, mremap: 25,
  gettid: 186, tkill: 200, set_tid_address: 218, exit_group: 231, tgkill: 234, openat: 257, openat2: 437,
  set_robust_list: 273, get_robust_list: 274, dup3: 292, rt_tgsigqueueinfo: 297,
  rt_sigqueueinfo: 129, prlimit64: 302, kcmp: 312, mlock2: 325, rseq: 334, close_range: 436,
  clone3: 435, pidfd_open: 434, process_mrelease: 448, getcpu: 309, sched_setaffinity: 203, pidfd_getfd: 438, wait4: 61, unshare: 272, eventfd2: 290, signalfd4: 289, timerfd_create: 283, timerfd_settime: 286, epoll_create1: 291, epoll_ctl: 233, pipe2: 293, tee: 276, setsid: 112, setpgid: 109, mount: 165, memfd_create: 319, restart_syscall: 219,
} as const;

export const ERESTARTSYS = 512;
export const ERESTARTNOINTR = 513;
export const ERESTARTNOHAND = 514;
export const ERESTART_RESTARTBLOCK = 516;
export const EINTR = 4;

// struct user_regs_struct, in the kernel's order (27 x u64).
const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx',
  'rsi', 'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds',
  'es', 'fs', 'gs',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export const USER_REGS_SIZE = REG_NAMES.length * 8;
const REG_OFFSET = new Map<string, number>(REG_NAMES.map((n, i) => [n, i * 8]));

/**
 * `v` as 64 bits at `off` (negative values in two's complement). Non-negative
 * safe integers, most values, are written without making a BigInt.
 */
export function writeU64(buf: Buffer, off: number, v: bigint | number): void {
  if (typeof v === 'number' && v >= 0 && v <= Number.MAX_SAFE_INTEGER && Number.isInteger(v)) {
    // Byte stores: Buffer's writeUInt32LE checks its arguments each call,
    // which in code run once per command (V8's interpreter) added up to ~2 ms.
    const lo = v % 0x100000000, hi = Math.floor(v / 0x100000000);
    buf[off] = lo & 0xff;
    buf[off + 1] = (lo >>> 8) & 0xff;
    buf[off + 2] = (lo >>> 16) & 0xff;
    buf[off + 3] = lo >>> 24;
    buf[off + 4] = hi & 0xff;
    buf[off + 5] = (hi >>> 8) & 0xff;
    buf[off + 6] = (hi >>> 16) & 0xff;
    buf[off + 7] = hi >>> 24;
  } else {
    buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), off);
  }
}

/** A user_regs_struct held in the exact byte layout ptrace uses. */
export class Regs {
  readonly buf: Buffer;
  constructor(buf?: Buffer) {
    this.buf = buf ? Buffer.from(buf) : Buffer.alloc(USER_REGS_SIZE);
    if (this.buf.length !== USER_REGS_SIZE) throw new RangeError(`user_regs_struct must be ${USER_REGS_SIZE} bytes`);
  }
  get(name: RegName): bigint {
    return this.buf.readBigUInt64LE(REG_OFFSET.get(name)!);
  }
  /** The register as a signed value (syscall results, orig_rax). */
  signed(name: RegName): bigint {
    return this.buf.readBigInt64LE(REG_OFFSET.get(name)!);
  }
  set(name: RegName, v: bigint | number): void {
    writeU64(this.buf, REG_OFFSET.get(name)!, v);
  }
  clone(): Regs {
    return new Regs(this.buf);
  }
  toJSON(): Record<string, string> {
    return Object.fromEntries(REG_NAMES.map((n) => [n, '0x' + this.get(n).toString(16)]));
  }
}

/** Argument registers of the syscall ABI, in order. */
export const SYSCALL_ARGS: RegName[] = ['rdi', 'rsi', 'rdx', 'r10', 'r8', 'r9'];

export const PAGE_SIZE = 4096;
/** A CPU mask as sched_{get,set}affinity take it here: 1024 CPUs. */
export const AFFINITY_BYTES = 128;

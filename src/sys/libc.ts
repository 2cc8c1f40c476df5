// The one native surface of stasis: libc entry points bound through koffi.
// Every call here is synchronous and made from the JS main thread, which is
// what ptrace requires (all requests for a tracee come from the thread that
// attached it). Wrappers throw SyscallError with the errno named.
import koffi from './koffi';
import { SyscallError } from './errno';

const libc = koffi.load('libc.so.6');

const c = {
  ptrace: libc.func('long ptrace(int req, int pid, uint64_t addr, void *data)'),
  ptraceN: libc.func('long ptrace(int req, int pid, uint64_t addr, uint64_t data)'),
  waitpid: libc.func('int waitpid(int pid, _Out_ int *status, int options)'),
  processVmReadv: libc.func('intptr_t process_vm_readv(int pid, void *liov, uint64_t liovcnt, void *riov, uint64_t riovcnt, uint64_t flags)'),
  processVmWritev: libc.func('intptr_t process_vm_writev(int pid, void *liov, uint64_t liovcnt, void *riov, uint64_t riovcnt, uint64_t flags)'),
  // memset(p, 0, 0) returns p: the cheapest way to learn a Buffer's address.
  addressOf: libc.func('uint64_t memset(void *p, int c, size_t n)'),
  syscall6: libc.func('long syscall(long nr, long a, long b, long c, long d, long e, long f)'),
  posixSpawn: libc.func('int posix_spawn(_Out_ int *pid, const char *path, void *actions, void *attr, const char **argv, const char **envp)'),
  spawnActionsInit: libc.func('int posix_spawn_file_actions_init(void *fa)'),
  spawnActionsDestroy: libc.func('int posix_spawn_file_actions_destroy(void *fa)'),
  spawnActionsAddDup2: libc.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)'),
  spawnActionsAddOpen: libc.func('int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, uint32_t mode)'),
  spawnActionsAddClosefrom: libc.func('int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)'),
  spawnAttrInit: libc.func('int posix_spawnattr_init(void *attr)'),
  spawnAttrDestroy: libc.func('int posix_spawnattr_destroy(void *attr)'),
  spawnAttrSetFlags: libc.func('int posix_spawnattr_setflags(void *attr, short flags)'),
  spawnAttrSetSigDefault: libc.func('int posix_spawnattr_setsigdefault(void *attr, void *set)'),
  spawnAttrSetSigMask: libc.func('int posix_spawnattr_setsigmask(void *attr, void *set)'),
  memfdCreate: libc.func('int memfd_create(const char *name, uint32_t flags)'),
  mmap: libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)'),
  munmap: libc.func('int munmap(void *addr, size_t len)'),
  mprotect: libc.func('int mprotect(void *addr, size_t len, int prot)'),
};

const writevFn = libc.func('intptr_t writev(int fd, void *iov, int cnt)');

let threadFns: { create: ReturnType<typeof libc.func>; detach: ReturnType<typeof libc.func> } | undefined;

/**
 * A detached native thread running machine code (from executableCode) with
 * `arg`, which must stay allocated for as long as the thread may read it.
 * No JavaScript runs on it: it costs a clone, not a Node worker's start-up.
 */
export function startThread(code: unknown, arg: Buffer, what: string): void {
  threadFns ??= {
    create: libc.func('int pthread_create(_Out_ uint64_t *thread, void *attr, void *start, void *arg)'),
    detach: libc.func('int pthread_detach(uint64_t thread)'),
  };
  const id = [0n];
  const rc = threadFns.create(id, null, code, arg) as number;
  if (rc !== 0) throw new SyscallError('pthread_create', rc, what);
  threadFns.detach(id[0]);
}

/**
 * How a thread's machine code for startThread says it is done: the done
 * word at [rbx] set to 1 and its waiter (awaitDone) woken.
 */
export const SET_DONE = Buffer.from([
  0xc7, 0x03, 0x01, 0x00, 0x00, 0x00, // mov dword [rbx], 1
  0xb8, 0xca, 0x00, 0x00, 0x00, //    mov eax, 202                 (futex wake)
  0x48, 0x89, 0xdf, //                mov rdi, rbx
  0xbe, 0x81, 0x00, 0x00, 0x00, //    mov esi, FUTEX_WAKE_PRIVATE
  0xba, 0x01, 0x00, 0x00, 0x00, //    mov edx, 1
  0x0f, 0x05, //                      syscall
]);

/** SET_DONE, then r13, r12 and rbx popped (pushed in the opposite order) and 0 returned. */
export const DONE_EPILOGUE = Buffer.concat([SET_DONE, Buffer.from([
  0x41, 0x5d, //                      pop r13
  0x41, 0x5c, //                      pop r12
  0x5b, //                            pop rbx
  0x31, 0xc0, //                      xor eax, eax
  0xc3, //                            ret
])]);

/**
 * Wait until a thread from startThread has set the u32 at the start of
 * `block` (its done word) and woken it with FUTEX_WAKE_PRIVATE.
 */
export function awaitDone(block: Buffer): void {
  const SYS_FUTEX = 202, FUTEX_WAIT_PRIVATE = 128;
  while (block.readUInt32LE(0) === 0) {
    try {
      syscall(SYS_FUTEX, 'futex(FUTEX_WAIT)', block, FUTEX_WAIT_PRIVATE, 0, 0);
    } catch { /* EAGAIN: done meanwhile; EINTR: look again */ }
  }
}

/**
 * One writev(2) on a libuv worker thread. Resolves with the bytes written,
 * or -1 on failure (the caller finishes synchronously to learn the errno).
 * The buffers must not be touched until it settles.
 */
export function writevAsync(fd: number, bufs: Buffer[]): Promise<number> {
  const iov = Buffer.alloc(bufs.length * 16);
  bufs.forEach((b, i) => {
    iov.writeBigUInt64LE(BigInt(addressOf(b)), i * 16);
    iov.writeBigUInt64LE(BigInt(b.length), i * 16 + 8);
  });
  return new Promise((resolve, reject) => {
    writevFn.async(fd, iov, bufs.length, (err: unknown, n: number | bigint) => {
      void iov; // kept alive until the call is done
      if (err) reject(err);
      else resolve(Number(n));
    });
  });
}


const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Block this thread for `ms` milliseconds (no event loop runs meanwhile). */
export function sleepSync(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

function check(ret: number | bigint, call: string, where?: string): number {
  const r = Number(ret);
  if (r === -1) throw new SyscallError(call, koffi.errno(), where);
  return r;
}

export function addressOf(buf: Buffer | Uint8Array): number {
  return c.addressOf(buf, 0, 0) as number;
}

// ---- ptrace --------------------------------------------------------------

export const PTRACE = {
  PEEKDATA: 2, POKEDATA: 5, CONT: 7, SYSCALL: 24, KILL: 8, SINGLESTEP: 9, GETREGS: 12, SETREGS: 13,
  GETFPREGS: 14, SETFPREGS: 15, ATTACH: 16, DETACH: 17, SETOPTIONS: 0x4200,
  GETEVENTMSG: 0x4201, GETSIGINFO: 0x4202, SETSIGINFO: 0x4203, GETREGSET: 0x4204,
  SETREGSET: 0x4205, SEIZE: 0x4206, INTERRUPT: 0x4207, LISTEN: 0x4208,
  PEEKSIGINFO: 0x4209, GETSIGMASK: 0x420a, SETSIGMASK: 0x420b,
  GET_RSEQ_CONFIGURATION: 0x420f,
} as const;
export const PTRACE_O_TRACESYSGOOD = 1;
export const PTRACE_O_EXITKILL = 0x100000;
export const PTRACE_EVENT_STOP = 128;
export const NT_PRSTATUS = 1;
export const NT_X86_XSTATE = 0x202;

// Test hook (test/safety*.test.ts): SIGKILL ourselves just before the Nth
// ptrace request, so a test can end stasis between any two of them; the
// count of requests made is printed at exit (and, with -v, in each log line).
const dieAtPtrace = Number(process.env.STASIS_TEST_DIE_AT_PTRACE ?? 0);
let ptraceRequests = 0;
if (dieAtPtrace) process.on('exit', () => process.stderr.write(`ptrace requests: ${ptraceRequests}\n`));

/** Under the test hook, how many ptrace requests were made so far; else undefined. */
export function ptraceRequestsSoFar(): number | undefined {
  return dieAtPtrace ? ptraceRequests : undefined;
}

export function ptrace(req: number, pid: number, addr: number | bigint, data: Buffer | number | bigint | null, what: string): number {
  if (dieAtPtrace && ++ptraceRequests === dieAtPtrace) process.kill(process.pid, 'SIGKILL');
  let r;
  if (data === null || typeof data === 'number' || typeof data === 'bigint') {
    r = c.ptraceN(req, pid, addr, data ?? 0);
  } else {
    r = c.ptrace(req, pid, addr, data);
  }
  return check(r, `ptrace(${what})`, `pid ${pid}`);
}

/** PTRACE_GETREGSET/SETREGSET: the kernel reports the length it used. */
export function ptraceRegset(req: number, pid: number, type: number, buf: Buffer, len = buf.length): number {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(BigInt(addressOf(buf)), 0);
  iov.writeBigUInt64LE(BigInt(len), 8);
  const what = `${req === PTRACE.GETREGSET ? 'GETREGSET' : 'SETREGSET'} ${type === NT_X86_XSTATE ? 'NT_X86_XSTATE' : type}`;
  check(c.ptrace(req, pid, type, iov), `ptrace(${what})`, `pid ${pid}`);
  return Number(iov.readBigUInt64LE(8));
}

export interface WaitStatus { pid: number; status: number }

/** waitpid on the main thread (required for ptrace stops). */
export function waitpidSync(pid: number, options: number): WaitStatus {
  const st = [0];
  for (;;) {
    const r = c.waitpid(pid, st, options) as number;
    if (r === -1) {
      const e = koffi.errno();
      if (e === 4 /* EINTR */) continue;
      throw new SyscallError('waitpid', e, `pid ${pid}`);
    }
    return { pid: r, status: st[0] };
  }
}

/** waitpid on a worker thread, not blocking the event loop: for children we no longer trace. */
export function waitpidAsync(pid: number, options = 0): Promise<WaitStatus> {
  return new Promise((resolve, reject) => {
    const st = [0];
    c.waitpid.async(pid, st, options, (err: unknown, r: number) => {
      if (err) return reject(err);
      if (r === -1) return reject(new SyscallError('waitpid', koffi.errno(), `pid ${pid}`));
      resolve({ pid: r, status: st[0] });
    });
  });
}

export const __WALL = 0x40000000;
export const WNOHANG = 1;
export const WIFEXITED = (s: number) => (s & 0x7f) === 0;
export const WEXITSTATUS = (s: number) => (s >> 8) & 0xff;
export const WIFSIGNALED = (s: number) => ((s & 0x7f) + 1) >> 1 > 0 && (s & 0x7f) !== 0x7f && (s & 0x7f) !== 0;
export const WTERMSIG = (s: number) => s & 0x7f;
export const WIFSTOPPED = (s: number) => (s & 0xff) === 0x7f;
export const WSTOPSIG = (s: number) => (s >> 8) & 0xff;
export const WEVENT = (s: number) => (s >> 16) & 0xff;

// ---- remote memory -------------------------------------------------------

export interface RemoteRange { addr: number; len: number }

function iovecs(parts: Array<{ base: number; len: number }>): Buffer {
  const b = Buffer.alloc(parts.length * 16);
  parts.forEach((p, i) => {
    b.writeBigUInt64LE(BigInt(p.base), i * 16);
    b.writeBigUInt64LE(BigInt(p.len), i * 16 + 8);
  });
  return b;
}

const IOV_MAX = 1024;

/**
 * Copy remote ranges into local buffers (one local buffer per range, or one
 * buffer filled in order). Loops over partial transfers; throws on failure.
 */
export function processVmReadv(pid: number, local: Buffer, localOff: number, ranges: RemoteRange[]): void {
  transferv(c.processVmReadv, 'process_vm_readv', pid, local, localOff, ranges);
}

export function processVmWritev(pid: number, local: Buffer, localOff: number, ranges: RemoteRange[]): void {
  transferv(c.processVmWritev, 'process_vm_writev', pid, local, localOff, ranges);
}

function transferv(fn: typeof c.processVmReadv, name: string, pid: number, local: Buffer, localOff: number, ranges: RemoteRange[]): void {
  const base = addressOf(local);
  let off = localOff;
  for (let i = 0; i < ranges.length; i += IOV_MAX) {
    let chunk = ranges.slice(i, i + IOV_MAX);
    let total = chunk.reduce((s, r) => s + r.len, 0);
    while (total > 0) {
      if (off + total > local.length) throw new RangeError(`${name}: local buffer too small`);
      const liov = iovecs([{ base: base + off, len: total }]);
      const riov = iovecs(chunk.map((r) => ({ base: r.addr, len: r.len })));
      const n = Number(fn(pid, liov, 1, riov, chunk.length, 0));
      if (n === -1) {
        const first = chunk[0];
        throw new SyscallError(name, koffi.errno(), `pid ${pid}, 0x${first.addr.toString(16)}+${total}`);
      }
      if (n === 0) throw new SyscallError(name, 14 /* EFAULT */, `pid ${pid}, 0x${chunk[0].addr.toString(16)}: no progress`);
      off += n;
      total -= n;
      // Drop what was transferred and go on with the remainder.
      let skip = n;
      const rest: RemoteRange[] = [];
      for (const r of chunk) {
        if (skip >= r.len) { skip -= r.len; continue; }
        rest.push({ addr: r.addr + skip, len: r.len - skip });
        skip = 0;
      }
      chunk = rest;
    }
  }
}

// ---- raw syscalls from this process ---------------------------------------

export function syscall(nr: number, what: string, ...args: Array<number | bigint | Buffer>): number {
  const a = [0, 0, 0, 0, 0, 0].map((_, i) => {
    const v = args[i];
    if (v === undefined) return 0;
    if (Buffer.isBuffer(v)) return addressOf(v);
    return v;
  });
  return check(c.syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]), what);
}

export function memfdCreate(name: string, flags: number): number {
  return check(c.memfdCreate(name, flags), 'memfd_create');
}

// ---- process creation without libuv ---------------------------------------

export const POSIX_SPAWN_SETSIGMASK = 0x08;
export const POSIX_SPAWN_SETSIGDEF = 0x04;
export const POSIX_SPAWN_SETSID = 0x80;

export interface SpawnOptions {
  /** fd numbers in the child mapped from fds of this process (child fd -> our fd) */
  fds?: Record<number, number>;
  setsid?: boolean;
  env?: string[];
  /** close every fd from this number up in the child */
  closeFrom?: number;
}

/**
 * posix_spawn: the child is ours but not libuv's, so its ptrace stops and
 * exit status stay ours to collect with waitpid.
 */
export function posixSpawn(path: string, argv: string[], opts: SpawnOptions = {}): number {
  const fa = Buffer.alloc(128);
  const attr = Buffer.alloc(512);
  const sigset = Buffer.alloc(128);
  let rc = c.spawnActionsInit(fa) as number;
  if (rc !== 0) throw new SyscallError('posix_spawn_file_actions_init', rc);
  c.spawnAttrInit(attr);
  try {
    for (const [child, ours] of Object.entries(opts.fds ?? {})) {
      rc = c.spawnActionsAddDup2(fa, ours, Number(child)) as number;
      if (rc !== 0) throw new SyscallError('posix_spawn_file_actions_adddup2', rc);
    }
    if (opts.closeFrom !== undefined) {
      rc = c.spawnActionsAddClosefrom(fa, opts.closeFrom) as number;
      if (rc !== 0) throw new SyscallError('posix_spawn_file_actions_addclosefrom_np', rc);
    }
    // All signals back to default and none blocked: Node ignores SIGPIPE.
    sigset.fill(0xff, 0, 8);
    c.spawnAttrSetSigDefault(attr, sigset);
    const empty = Buffer.alloc(128);
    c.spawnAttrSetSigMask(attr, empty);
    let flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (opts.setsid) flags |= POSIX_SPAWN_SETSID;
    c.spawnAttrSetFlags(attr, flags);
    const pid = [0];
    const env = opts.env ?? Object.entries(process.env).map(([k, v]) => `${k}=${v}`);
    rc = c.posixSpawn(pid, path, fa, attr, [...argv, null], [...env, null]) as number;
    if (rc !== 0) throw new SyscallError('posix_spawn', rc, path);
    return pid[0];
  } finally {
    c.spawnActionsDestroy(fa);
    c.spawnAttrDestroy(attr);
  }
}

// ---- files mapped into this process ---------------------------------------

/**
 * A read-only private mapping of a whole file, as a Buffer (no copy: the
 * page cache itself). unmap() must come after the last use of the Buffer.
 * Not MAP_POPULATE: filling 1 GiB of page table entries took ~35 ms on one
 * CPU before the checksums began; the checksum threads' own read faults
 * (each mapping 16 pages around it) share that work over both CPUs.
 */
export function mapFile(fd: number, size: number, what: string): { buf: Buffer; unmap: () => void } {
  const PROT_READ = 1, MAP_PRIVATE = 2;
  const ptr = c.mmap(null, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (koffi.address(ptr) === 0xffffffffffffffffn) throw new SyscallError('mmap', koffi.errno(), what);
  let mapped = true;
  return {
    buf: Buffer.from(koffi.view(ptr, size)),
    unmap: () => {
      if (mapped) c.munmap(ptr, size);
      mapped = false;
    },
  };
}

// long kill_releasing(int pid, int pidfd): kill(pid, SIGKILL), then at once
// process_mrelease(pidfd, 0): kill's failure, else process_mrelease's result.
// One call, as the release must come before the dying process lets go of its
// memory itself (a few microseconds; ESRCH after): two calls from JavaScript
// came too late four times in six.
const KILL_RELEASING_CODE = Buffer.from([
  0x41, 0x89, 0xf0, //                mov r8d, esi        ; pidfd
  0xb8, 0x3e, 0x00, 0x00, 0x00, //    mov eax, 62         ; kill
  0xbe, 0x09, 0x00, 0x00, 0x00, //    mov esi, 9          ; SIGKILL
  0x0f, 0x05, //                      syscall
  0x48, 0x85, 0xc0, //                test rax, rax
  0x78, 0x0c, //                      js out
  0x44, 0x89, 0xc7, //                mov edi, r8d
  0x31, 0xf6, //                      xor esi, esi
  0xb8, 0xc0, 0x01, 0x00, 0x00, //    mov eax, 448        ; process_mrelease
  0x0f, 0x05, //                      syscall
  0xc3, //                            out: ret
]);
let killReleasingFn: ((pid: number, pidfd: number) => number) | undefined;

/**
 * SIGKILL `pid`, and free its private memory from this thread while it
 * frees the same from the other end as it exits; `pidfd` is its pidfd. 0 or
 * a negative errno, of whichever call failed.
 */
export function killReleasing(pid: number, pidfd: number): number {
  killReleasingFn ??= koffi.decode(executableCode(KILL_RELEASING_CODE), koffi.proto('long stasis_kill_releasing(int pid, int pidfd)')) as (pid: number, pidfd: number) => number;
  return Number(killReleasingFn(pid, pidfd));
}

/** Machine code made callable: copied into a page of its own, then made read-execute. */
export function executableCode(code: Buffer): unknown {
  const PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4, MAP_PRIVATE = 2, MAP_ANONYMOUS = 0x20;
  const size = Math.ceil(code.length / 4096) * 4096;
  const ptr = c.mmap(null, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (koffi.address(ptr) === 0xffffffffffffffffn) throw new SyscallError('mmap', koffi.errno(), 'code page');
  Buffer.from(koffi.view(ptr, size)).set(code);
  if (c.mprotect(ptr, size, PROT_READ | PROT_EXEC) !== 0) throw new SyscallError('mprotect', koffi.errno(), 'code page');
  return ptr;
}

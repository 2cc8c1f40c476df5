// A task under our ptrace control: seize, stop, registers, remote memory,
// and system calls executed inside it.
import fs from 'node:fs';
import {
  ptrace, ptraceRegset, waitpidSync, PTRACE, NT_X86_XSTATE, PTRACE_EVENT_STOP,
  WIFSTOPPED, WSTOPSIG, WEVENT, WIFEXITED, WIFSIGNALED, WTERMSIG, WEXITSTATUS, __WALL,
  processVmReadv, processVmWritev, RemoteRange, addressOf, PTRACE_O_EXITKILL, PTRACE_O_TRACESYSGOOD, sleepSync, syscall, WNOHANG,
} from '../sys/libc';
import { Gadget, resumeRegs, hasVdso, LeftBehind, Range } from './gadget';
import { whoTraces } from './busy';
import { readStat, type Status } from '../proc';
import { StasisError, SyscallError, injectedResult } from '../sys/errno';
import { Regs, SYSCALL_ARGS, USER_REGS_SIZE, SYS } from '../sys/x86';

const SIGTRAP = 5;
const SIGSTOP = 19;
/** SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU */
export const STOP_SIGNALS: ReadonlySet<number> = new Set([19, 20, 21, 22]);
/** WSTOPSIG of a syscall-entry or -exit stop under PTRACE_O_TRACESYSGOOD */
const SYSCALL_STOP = SIGTRAP | 0x80;
const ALL_SIGNALS = (1n << 64n) - 1n;
const XSTATE_MAX = 64 * 1024;
const SYS_SCHED_YIELD = 24;

export interface SeizeOptions {
  /** Kill the task if this process dies (restore stubs only, never targets). */
  exitKill?: boolean;
  /** its process's vDSO (null: none), when the caller has read it (once per process, not per thread) */
  vdso?: Range | null;
}

export class TaskGoneError extends StasisError {}

// Test hooks: a signal sent to a target at its first injected call, or just after its seize.
let signalAtInjection = Number(process.env.STASIS_TEST_SIGNAL_AT_INJECTION ?? 0);
let signalAtSeize = Number(process.env.STASIS_TEST_SIGNAL_AT_SEIZE ?? 0);

/** Synchronous fault signals: SIGILL, SIGBUS, SIGFPE, SIGSEGV. */
const FAULTS = new Set([4, 7, 8, 11]);

export class Tracee {
  readonly pid: number;
  private memFd = -1;
  private attached = false;
  /** Registers as found when the task was stopped; put back at detach. */
  saved?: Regs;
  /** Signals that arrived while we were working; re-sent at detach. */
  readonly deferredSignals: number[] = [];
  /**
   * Its /proc status as a checkpoint's survey read it, the tree frozen: for
   * what nothing injected changes (ids, capabilities, umask), read once.
   */
  statusSeen?: Status;
  /** a SIGSTOP arrived while we were working (see deferSignal) */
  private stopArrived = false;
  /** Its own blocked mask while a checkpoint holds every signal blocked (see FrozenTree). */
  heldMask?: bigint;
  /** Address of a `syscall` instruction inside the task. */
  syscallInsn = 0;
  /**
   * A target (not a restore stub killed with us): injected calls go through
   * the process's Gadget so the task survives our death at any instruction.
   */
  private safe = false;
  /** its process's vDSO as the freeze read it (undefined: not read) */
  private vdso?: Range;
  /** a program we checkpoint, not a restore stub */
  private target = false;
  /** the task's own signal mask, while we keep every signal blocked */
  private savedMask?: bigint;
  /** registers that resume the task by itself (see gadget.ts), once it ran injected code */
  private home?: Regs;
  /** the gadget block points home with our registers and mask */
  private armed = false;
  /** a scratch area a killed stasis left mapped (see leaveAbandoned) */
  private strayScratch?: { addr: number; len: number };
  /** it left injected code by its way home while still ours (see runSafely): never touch it again */
  wentHome = false;

  /** thread group (process) id; equals pid for a main thread */
  readonly tgid: number;
  /** the ids as the task itself sees them (they differ inside a new pid namespace) */
  vpid: number;
  vtgid: number;

  constructor(pid: number, tgid = pid) {
    this.pid = pid;
    this.tgid = tgid;
    this.vpid = pid;
    this.vtgid = tgid;
  }

  /** PTRACE_SEIZE + PTRACE_INTERRUPT, then wait for the stop. */
  seize(opts: SeizeOptions = {}): void {
    this.seizeOnly(opts);
    this.waitStop('the initial stop');
    this.afterStop();
  }

  /**
   * A task created traced (clone with CLONE_PTRACE by a task we seized):
   * it inherited our options (EXITKILL among them) and starts with a
   * trap stop pending. Never untraced, it cannot outlive us by a moment.
   */
  adoptCloned(): void {
    this.attached = true;
    this.waitStop('the first stop of a task created traced');
    this.afterStop();
  }

  /** Attach and ask for a stop, without waiting for it (freezing a tree). */
  seizeOnly(opts: SeizeOptions = {}): void {
    // TRACESYSGOOD: a syscall stop the tracer never answers ends without a
    // signal (a plain SIGTRAP would be delivered to the task).
    const options = (opts.exitKill ? PTRACE_O_EXITKILL : 0) | PTRACE_O_TRACESYSGOOD;
    this.target = !opts.exitKill;
    this.safe = this.target && (opts.vdso !== undefined ? opts.vdso !== null : hasVdso(this.tgid));
    // A frozen target's vDSO stays where it is: the gadget need not read the maps again.
    this.vdso = opts.vdso ?? undefined;
    try {
      ptrace(PTRACE.SEIZE, this.pid, 0, options, 'SEIZE');
    } catch (e) {
      // Someone else got there first (a debugger, or another stasis since our check).
      const why = e instanceof SyscallError && e.code === 'EPERM' ? whoTraces(this.tgid, this.pid) : null;
      throw why ? new StasisError(why) : e;
    }
    this.attached = true;
    if (signalAtSeize && this.target) this.signalBeforeInterrupt();
    ptrace(PTRACE.INTERRUPT, this.pid, 0, 0, 'INTERRUPT');
  }

  /** Test hook (fidelity-signals.test): a signal the task takes between our seize and our interrupt. */
  private signalBeforeInterrupt(): void {
    process.kill(this.pid, signalAtSeize);
    signalAtSeize = 0;
    // Its signal-delivery stop: state t. Bounded, a hook must not hang.
    for (let i = 0; i < 10000 && readStat(this.pid).state !== 't'; i++) sleepSync(0.1);
  }

  /** Once stopped: remember the registers to put back, open its memory. */
  afterStop(): void {
    this.saved = this.getRegs();
    if (this.memFd < 0) this.memFd = fs.openSync(`/proc/${this.pid}/mem`, 'r+');
  }

  /**
   * Stopped in the code a killed stasis left it in (see LeftBehind): go
   * home now, as that code would have, and take `saved` as that stasis
   * found it (the kernel then restarts the call it was in, and the image
   * records that call). The mask first: the task home with every signal
   * blocked would be harmed, while its own mask in the abandoned code only
   * lets a handler run early. Returns whether it was there.
   */
  leaveAbandoned(left: LeftBehind): boolean {
    const back = left.wayHome(this, Number(this.saved!.get('rip')));
    if (!back) return false;
    this.setSigmask(back.mask);
    const r = this.saved!.clone();
    for (const [reg, v] of back.regs) r.set(reg, v);
    this.setRegs(r);
    this.saved = r;
    this.strayScratch = back.scratch;
    return true;
  }

  /**
   * The scratch area the abandoned way home would have unmapped: unmapped
   * now, named to the gadget first so that our own death meanwhile still
   * unmaps it (once all threads are home: the gadget rewrites the blocks).
   */
  sweepStrayScratch(): void {
    const stray = this.strayScratch;
    if (!stray) return;
    const g = Gadget.of(this.gadgetTask());
    g.setScratch(this.gadgetTask(), stray.addr, stray.len);
    this.call('munmap', SYS.munmap, [stray.addr, stray.len], 'scratch area of an abandoned checkpoint');
    g.setScratch(this.gadgetTask(), 0, 0);
    this.strayScratch = undefined;
  }

  /** The task is gone or being killed: no ptrace request will work. */
  forget(): void {
    Gadget.forget(this.tgid);
    this.attached = false;
    this.closeMem();
  }

  /**
   * Wait until the task is in a ptrace stop. Signals that arrive first are
   * remembered and suppressed (they are re-sent at detach) so that the stop
   * we wait for is ours. Returns the stop signal.
   */
  waitStop(what: string, want?: number, resume: number = PTRACE.SINGLESTEP): number {
    for (;;) {
      const { status } = waitpidSync(this.pid, __WALL);
      if (WIFEXITED(status) || WIFSIGNALED(status)) throw this.gone(status, `waiting for ${what}`);
      if (!WIFSTOPPED(status)) continue;
      const sig = WSTOPSIG(status);
      const event = WEVENT(status);
      if (event === PTRACE_EVENT_STOP) {
        // Interrupt or group stop: this is the stop we asked for unless we
        // wait for a specific signal (a single step).
        if (want === undefined) return sig;
        ptrace(resume, this.pid, 0, 0, 'resume');
        continue;
      }
      if (want !== undefined && sig === want) return sig;
      if (want === undefined) {
        // A signal-delivery stop before our interrupt landed. In a target
        // the signal arrived before the freeze: it is delivered now, with
        // its own siginfo, and our interrupt stops the task at its handler
        // (or the process ends, as it would have). Re-sent at detach, it
        // lost its siginfo, and the image never had it. A stop signal is
        // kept for detach: the process stops once let go.
        const deliver = this.target && !STOP_SIGNALS.has(sig) && sig !== SIGTRAP;
        if (!deliver) this.deferSignal(sig);
        ptrace(PTRACE.INTERRUPT, this.pid, 0, 0, 'INTERRUPT');
        ptrace(PTRACE.CONT, this.pid, 0, deliver ? sig : 0, 'CONT');
        continue;
      }
      if (FAULTS.has(sig) && this.kernelSent()) {
        // The injected step itself faulted (memory the image made
        // unusable, e.g. an rseq area in a read-only mapping): resuming
        // would fault again forever.
        throw new StasisError(`pid ${this.pid}: ${what}: the task faulted with signal ${sig}; the image's memory does not allow it`);
      }
      this.deferSignal(sig);
      ptrace(resume, this.pid, 0, 0, 'resume');
    }
  }

  /** The task ended (its wait status says how) while we were `doing`: no longer ours. */
  private gone(status: number, doing: string): TaskGoneError {
    this.attached = false;
    const how = WIFEXITED(status) ? `exited with status ${WEXITSTATUS(status)}` : `was killed by signal ${WTERMSIG(status)}`;
    return new TaskGoneError(`pid ${this.pid} ${how} while ${doing}`);
  }

  /** The pending stop's signal came from the kernel (a fault), not from kill(). */
  private kernelSent(): boolean {
    const info = Buffer.alloc(128);
    ptrace(PTRACE.GETSIGINFO, this.pid, 0, info, 'GETSIGINFO');
    return info.readInt32LE(8) > 0; // si_code > 0: SEGV_MAPERR, BUS_ADRERR, ...
  }

  /**
   * SIGSTOP, which no mask holds back, reaches a task between our stops;
   * it is sent again after detach (to the process: a stop is process-wide),
   * not as the detach's signal, which a task in an event stop ignores.
   */
  private deferSignal(sig: number): void {
    if (sig === SIGSTOP) this.stopArrived = true;
    else if (sig !== SIGTRAP) this.deferredSignals.push(sig);
  }

  getRegs(): Regs {
    const b = Buffer.alloc(USER_REGS_SIZE);
    ptrace(PTRACE.GETREGS, this.pid, 0, b, 'GETREGS');
    return new Regs(b);
  }

  setRegs(r: Regs): void {
    ptrace(PTRACE.SETREGS, this.pid, 0, r.buf, 'SETREGS');
  }

  getXstate(): Buffer {
    const b = Buffer.alloc(XSTATE_MAX);
    const n = ptraceRegset(PTRACE.GETREGSET, this.pid, NT_X86_XSTATE, b);
    return Buffer.from(b.subarray(0, n));
  }

  setXstate(x: Buffer): void {
    ptraceRegset(PTRACE.SETREGSET, this.pid, NT_X86_XSTATE, x);
  }

  getSigmask(): bigint {
    if (this.savedMask !== undefined) return this.savedMask;
    const b = Buffer.alloc(8);
    ptrace(PTRACE.GETSIGMASK, this.pid, 8, b, 'GETSIGMASK');
    return b.readBigUInt64LE(0);
  }

  setSigmask(mask: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(mask);
    ptrace(PTRACE.SETSIGMASK, this.pid, 8, b, 'SETSIGMASK');
  }

  /** Pending signals as raw siginfo_t records (128 bytes each). */
  peekSiginfo(shared: boolean): Buffer[] {
    const out: Buffer[] = [];
    const args = Buffer.alloc(16);
    const buf = Buffer.alloc(128 * 32);
    for (let off = 0; ; ) {
      args.writeBigUInt64LE(BigInt(off), 0);
      args.writeUInt32LE(shared ? 1 : 0, 8);
      args.writeInt32LE(32, 12);
      const n = ptrace(PTRACE.PEEKSIGINFO, this.pid, BigInt(addressOf(args)), buf, 'PEEKSIGINFO');
      if (n <= 0) break;
      for (let i = 0; i < n; i++) out.push(Buffer.from(buf.subarray(i * 128, i * 128 + 128)));
      off += n;
    }
    return out;
  }

  /** rseq area registered by the task, or null. */
  getRseq(): { addr: bigint; len: number; flags: number; sig: number } | null {
    const b = Buffer.alloc(32);
    ptrace(PTRACE.GET_RSEQ_CONFIGURATION, this.pid, 32, b, 'GET_RSEQ_CONFIGURATION');
    const addr = b.readBigUInt64LE(0);
    if (addr === 0n) return null;
    return { addr, len: b.readUInt32LE(8), sig: b.readUInt32LE(12), flags: b.readUInt32LE(16) };
  }

  readMem(addr: number, len: number): Buffer {
    const b = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      let n;
      try {
        n = fs.readSync(this.memFd, b, done, len - done, addr + done);
      } catch (e) {
        throw new StasisError(`reading memory of pid ${this.pid} at 0x${(addr + done).toString(16)}: ${(e as NodeJS.ErrnoException).code}`);
      }
      if (n === 0) throw new StasisError(`reading memory of pid ${this.pid} at 0x${(addr + done).toString(16)}: nothing there`);
      done += n;
    }
    return b;
  }

  /** Write through /proc/pid/mem: works on read-only and code pages too. */
  writeMem(addr: number, data: Buffer): void {
    let done = 0;
    while (done < data.length) {
      let n;
      try {
        n = fs.writeSync(this.memFd, data, done, data.length - done, addr + done);
      } catch (e) {
        throw new StasisError(`writing memory of pid ${this.pid} at 0x${(addr + done).toString(16)}: ${(e as NodeJS.ErrnoException).code}`);
      }
      if (n === 0) throw new StasisError(`writing memory of pid ${this.pid} at 0x${(addr + done).toString(16)}: no progress`);
      done += n;
    }
  }

  readv(local: Buffer, off: number, ranges: RemoteRange[]): void {
    processVmReadv(this.pid, local, off, ranges);
  }

  writev(local: Buffer, off: number, ranges: RemoteRange[]): void {
    processVmWritev(this.pid, local, off, ranges);
  }

  /**
   * Run one system call inside the stopped task: point rip at a `syscall`
   * instruction, load the arguments, single-step it, read rax. orig_rax = -1
   * keeps the kernel's restart logic away from the injected call.
   * Returns the raw (signed) result; use `call` to get errors thrown.
   */
  injectRaw(nr: number, args: Array<number | bigint> = []): bigint {
    if (this.wentHome) throw new StasisError(`pid ${this.pid}: went on by itself; no more calls in it`);
    // Test hook (safety.test): a signal sent to the target as its first injected call starts.
    if (signalAtInjection && this.safe) {
      process.kill(this.tgid, signalAtInjection);
      signalAtInjection = 0;
    }
    if (this.safe) return this.injectSafely(nr, args);
    if (!this.syscallInsn) throw new StasisError(`pid ${this.pid}: no syscall instruction located for injection`);
    const r = this.saved!.clone();
    r.set('rip', this.syscallInsn);
    r.set('rax', nr);
    r.set('orig_rax', -1n);
    SYSCALL_ARGS.forEach((name, i) => r.set(name, BigInt(args[i] ?? 0)));
    this.setRegs(r);
    ptrace(PTRACE.SINGLESTEP, this.pid, 0, 0, 'SINGLESTEP');
    this.waitStop(`injected syscall ${nr}`, SIGTRAP);
    return this.getRegs().signed('rax');
  }

  /**
   * An injected call through the gadget (see gadget.ts). Order matters at
   * every step, since we may die between any two: the block points home
   * before the registers point at the block; signals are blocked only
   * once the way home would unblock them; the task waits in syscall stops.
   */
  private injectSafely(nr: number, args: Array<number | bigint>): bigint {
    this.startSafely(nr, args);
    this.passEntry(nr);
    return this.finishSafely(nr);
  }

  /**
   * injectSafely in three steps, for calls in several threads at once
   * (injectTogether): the call set up and let go to its syscall-entry
   * stop; that stop taken and the call let run; its exit stop and result.
   */
  private startSafely(nr: number, args: Array<number | bigint>): void {
    const g = this.armGadget();
    const r = this.home!.clone();
    r.set('rip', g.entry(this.gadgetTask()));
    r.set('rax', nr);
    r.set('orig_rax', -1n);
    SYSCALL_ARGS.forEach((name, i) => r.set(name, BigInt(args[i] ?? 0)));
    this.setRegs(r);
    this.holdSignals();
    ptrace(PTRACE.SYSCALL, this.pid, 0, 0, 'SYSCALL');
  }

  private passEntry(nr: number): void {
    this.waitStop(`the entry of injected syscall ${nr}`, SYSCALL_STOP, PTRACE.SYSCALL);
    ptrace(PTRACE.SYSCALL, this.pid, 0, 0, 'SYSCALL');
  }

  private finishSafely(nr: number): bigint {
    this.waitStop(`the exit of injected syscall ${nr}`, SYSCALL_STOP, PTRACE.SYSCALL);
    return this.getRegs().signed('rax');
  }

  /**
   * One system call in each of several threads (other than the main one)
   * of one target, their round trips overlapping: each thread's two stops
   * and wake-ups come while stasis sets up the next thread's call, not one
   * after another. Each thread holds a gadget block of its own meanwhile,
   * so at most Gadget.otherBlocks threads at once (the caller's share).
   * Raw results, in order. On a failure every other thread let go is
   * waited for before it is thrown (the one that failed is left to detach).
   */
  static injectTogether(calls: Array<{ task: Tracee; nr: number; args: Array<number | bigint> }>): bigint[] {
    if (calls.length < 2 || calls.some((c) => !c.task.safe || c.task.wentHome || c.task.pid === c.task.tgid) || signalAtInjection) {
      return calls.map((c) => c.task.injectRaw(c.nr, c.args));
    }
    // How far each call got: 1 let go to its entry stop, 2 let go from it to its exit stop.
    const phase = calls.map(() => 0);
    let at = -1;
    const step = (done: number, f: (c: (typeof calls)[number]) => void) => calls.forEach((c, i) => {
      at = i;
      f(c);
      phase[i] = done;
    });
    try {
      step(1, (c) => c.task.startSafely(c.nr, c.args));
      step(2, (c) => c.task.passEntry(c.nr));
      const out: bigint[] = [];
      step(3, (c) => out.push(c.task.finishSafely(c.nr)));
      return out;
    } catch (e) {
      calls.forEach((c, i) => {
        if (i === at) return;
        try {
          if (phase[i] === 1) c.task.passEntry(c.nr);
          if (phase[i] === 1 || phase[i] === 2) c.task.finishSafely(c.nr);
        } catch { /* gone or failed: detach sees to it */ }
      });
      throw e;
    }
  }

  /** The task's gadget block, pointing home with its registers and its own mask. */
  private armGadget(): Gadget {
    const g = Gadget.of(this.gadgetTask());
    this.home ??= resumeRegs(this.saved!);
    if (!this.armed) {
      g.arm(this.gadgetTask(), this.home, this.saved!, this.savedMask ?? this.getSigmask());
      this.armed = true;
    }
    return g;
  }

  /** Every signal blocked while injected code runs (the way home unblocks them). */
  private holdSignals(): void {
    if (this.savedMask !== undefined) return;
    const mask = this.getSigmask();
    this.setSigmask(ALL_SIGNALS);
    this.savedMask = mask;
  }

  /**
   * Where code run by `runSafely` goes when nobody stops it: the way home
   * of the main thread's block, just after its syscall instruction.
   */
  wayHome(): number {
    if (!this.safe || this.pid !== this.tgid) throw new StasisError(`pid ${this.pid}: code runs safely in a target's main thread only`);
    return this.armGadget().entry(this.gadgetTask()) + 2;
  }

  /**
   * Run generated code at `rip`..`end` (a safe batch, see Remote.batch)
   * with PTRACE_CONT until it sets the word at `done`; it then waits in
   * select with a timeout, where we stop it. Were we gone, it would time
   * out and go home by itself. Nobody stopping it in time (stasis itself
   * stopped for that long) lets it go home: that is noted, the task is
   * left to its way home at detach, and the checkpoint fails.
   */
  runSafely(rip: number, end: number, done: number, what: string): void {
    this.wayHome();
    const r = this.home!.clone();
    r.set('rip', rip);
    r.set('orig_rax', -1n);
    this.setRegs(r);
    this.holdSignals();
    ptrace(PTRACE.CONT, this.pid, 0, 0, 'CONT');
    // The calls take microseconds: spin, yielding, then poll each millisecond.
    for (let spins = 0; this.readMem(done, 4).readUInt32LE(0) !== 1; spins++) {
      if (spins < 200) syscall(SYS_SCHED_YIELD, 'sched_yield');
      else sleepSync(1);
      this.passSignalStop(what);
    }
    // Test hook (safety.test): stasis dies while the batch waits to be stopped.
    if (process.env.STASIS_TEST_DIE_IN_BATCH) process.kill(process.pid, 'SIGKILL');
    ptrace(PTRACE.INTERRUPT, this.pid, 0, 0, 'INTERRUPT');
    this.waitStop(what);
    const at = Number(this.getRegs().get('rip'));
    if (at < rip || at > end) {
      this.wentHome = true;
      throw new StasisError(`pid ${this.pid}: ${what} was not stopped in time (was stasis itself stopped?) and the task went on by itself; checkpoint abandoned: try again`);
    }
  }

  /**
   * While the task runs a batch: SIGSTOP and its kind, which no mask
   * blocks, stop it on the way (a signal-delivery stop); the signal is kept
   * for detach, as waitStop does, and the task goes on. Its end is an error.
   */
  private passSignalStop(what: string): void {
    const { pid, status } = waitpidSync(this.pid, __WALL | WNOHANG);
    if (pid !== this.pid) return;
    if (WIFEXITED(status) || WIFSIGNALED(status)) throw this.gone(status, `running ${what}`);
    if (!WIFSTOPPED(status)) return;
    if (WEVENT(status) !== PTRACE_EVENT_STOP) this.deferSignal(WSTOPSIG(status));
    ptrace(PTRACE.CONT, this.pid, 0, 0, 'CONT');
  }

  /** What the gadget needs of this task. */
  gadgetTask() {
    return { pid: this.pid, tgid: this.tgid, vdso: this.vdso, memFd: () => this.memFd, disarm: () => this.disarm() };
  }

  /**
   * Back to the task's own registers and mask, outside the gadget: the
   * mask first (the way home would set it too), then the registers.
   */
  disarm(): void {
    if (!this.armed || this.wentHome) return;
    if (this.savedMask !== undefined) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(this.savedMask);
      ptrace(PTRACE.SETSIGMASK, this.pid, 8, b, 'SETSIGMASK');
      this.savedMask = undefined;
    }
    this.setRegs(this.home!);
    this.armed = false;
    Gadget.existing(this.tgid)?.release(this.gadgetTask());
  }

  get injectsSafely(): boolean {
    return this.safe;
  }

  /**
   * Run generated code at `rip` until it reaches an int3 (PTRACE_CONT):
   * many system calls for one ptrace round trip.
   */
  runUntilTrap(rip: number, what: string): void {
    this.startUntilTrap(rip)(what);
  }

  /** The same, started: the task runs while we go on; the returned function waits for the int3. */
  startUntilTrap(rip: number): (what: string) => void {
    if (this.safe) throw new StasisError(`pid ${this.pid}: batched calls are for restore stubs only (an int3 would kill a target left by a dying stasis)`);
    const r = this.saved!.clone();
    r.set('rip', rip);
    r.set('orig_rax', -1n);
    this.setRegs(r);
    ptrace(PTRACE.CONT, this.pid, 0, 0, 'CONT');
    return (what) => { this.waitStop(what, SIGTRAP, PTRACE.CONT); };
  }

  /** Injected syscall that throws a SyscallError naming the call on failure. */
  call(name: string, nr: number, args: Array<number | bigint> = [], where?: string): number {
    return injectedResult(this.injectRaw(nr, args), name, this.pid, where);
  }

  /** Put the saved registers back and let the task go. */
  detach(restoreRegs = true): void {
    if (!this.attached) return;
    try {
      if (this.wentHome) {
        // On its way home by itself (maybe still in the gadget's code, which
        // therefore stays): its registers and mask are its own business now.
      } else if (this.safe && this.home) {
        // It ran injected code and waits in a syscall stop, where the kernel
        // would not restart its interrupted call: resume with `home`.
        this.disarm();
        // Registers as found where they need no restart fix-up: the saved
        // orig_rax then still says which call the task is in (a task stopped
        // on its way out of a call keeps that call in /proc and in images).
        const home = this.home.get('rip') === this.saved!.get('rip') && this.home.get('rax') === this.saved!.get('rax') ? this.saved! : this.home;
        if (restoreRegs) this.setRegs(home);
        Gadget.existing(this.tgid)?.removeIfIdle(this.gadgetTask());
      } else if (restoreRegs && this.saved) this.setRegs(this.saved);
    } finally {
      const sig = this.deferredSignals.shift() ?? 0;
      try {
        ptrace(PTRACE.DETACH, this.pid, 0, sig, 'DETACH');
      } catch (e) {
        if (!(e instanceof SyscallError && e.code === 'ESRCH')) throw e;
      }
      this.attached = false;
      for (const s of this.deferredSignals.splice(0)) {
        try { process.kill(this.pid, s); } catch { /* gone */ }
      }
      if (this.stopArrived) {
        try { process.kill(this.tgid, 'SIGSTOP'); } catch { /* gone */ }
        this.stopArrived = false;
      }
      this.closeMem();
    }
  }

  /** Kill the task while it is still stopped (it never runs again). */
  kill(): void {
    Gadget.forget(this.tgid);
    process.kill(this.pid, 'SIGKILL');
    this.attached = false;
    this.closeMem();
  }

  closeMem(): void {
    if (this.memFd >= 0) fs.closeSync(this.memFd);
    this.memFd = -1;
  }

  get isAttached(): boolean {
    return this.attached;
  }
}

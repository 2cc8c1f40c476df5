// Signals: per process the dispositions (handler, flags, restorer, mask),
// the process-wide pending queue, the group stop and its signal, what the
// parent was told of it, and the exit signal; per thread the blocked mask,
// its own pending queue and the alternate stack.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { Remote, BatchCall } from '../ptrace/remote';
import { Queries, Answer } from '../ptrace/queries';
import { Tracee, STOP_SIGNALS } from '../ptrace/tracee';
import { SYS } from '../sys/x86';
import { StasisError, UnsupportedError, SyscallError } from '../sys/errno';
import { ptrace, PTRACE } from '../sys/libc';
import { waitStoppedAgain } from '../ptrace/freeze';
import { ImageSignals, ImageSigaction } from '../image/schema';

const SIGTRAP = 5, SIGKILL = 9, SIGCHLD = 17, SIGSTOP = 19, SIGTSTP = 20, SIGTTIN = 21, SIGTTOU = 22;
const SYS_waitid = 247, SYS_rt_sigtimedwait = 128;
const P_ALL = 0, P_PID = 1, WNOHANG = 1, WSTOPPED = 2, WCONTINUED = 8, WNOWAIT = 0x01000000, __WALL = 0x40000000, EAGAIN = 11;
const SIGACTION_SIZE = 32; // kernel struct sigaction on x86-64
const SS_ONSTACK = 1, SS_DISABLE = 2;
const hex = (v: bigint) => '0x' + v.toString(16);

function settable(sig: number): boolean {
  return sig !== SIGKILL && sig !== SIGSTOP;
}

export function dumpSigactions(q: Queries): () => ImageSigaction[] {
  const asked: Array<[number, Answer]> = [];
  for (let sig = 1; sig <= 64; sig++) {
    if (settable(sig)) asked.push([sig, q.ask('rt_sigaction', SYS.rt_sigaction, (act) => [sig, 0, act, 8], { out: SIGACTION_SIZE, where: `signal ${sig}` })]);
  }
  return () => asked.map(([sig, a]) => {
    const b = a.bytes;
    return { sig, handler: hex(b.readBigUInt64LE(0)), flags: hex(b.readBigUInt64LE(8)), restorer: hex(b.readBigUInt64LE(16)), mask: hex(b.readBigUInt64LE(24)) };
  });
}

export function dumpSharedPending(remote: Remote): string[] {
  return remote.task.peekSiginfo(true).map((b) => b.toString('base64'));
}

/** Per-thread signal state; `q` asks that very thread. */
export function dumpThreadSignals(q: Queries): () => ImageSignals {
  const t = q.remote.task;
  const ss = q.ask('sigaltstack', SYS.sigaltstack, (out) => [0, out], { out: 24 });
  return () => {
    const b = ss.bytes;
    return {
      blocked: hex(t.heldMask ?? t.getSigmask()),
      pending: t.peekSiginfo(false).map((x) => x.toString('base64')),
      altstack: { sp: Number(b.readBigUInt64LE(0)), flags: b.readInt32LE(8), size: Number(b.readBigUInt64LE(16)) },
    };
  };
}

/**
 * The dispositions that differ from the default. Every task of a restart
 * is the blank (spawned with every signal set to default, then exec'd:
 * SIG_DFL, no flags, no mask, no restorer) or a clone of a task not yet
 * rebuilt, so default is what each has here; setting 62 of them took ~60
 * calls, mostly of code written in V8's interpreter, per process.
 */
export function restoreSigactions(remote: Remote, actions: ImageSigaction[]): void {
  remote.reset();
  const set = actions.filter((a) => settable(a.sig) && (BigInt(a.handler) | BigInt(a.flags) | BigInt(a.restorer) | BigInt(a.mask)) !== 0n);
  if (!set.length) return;
  const buf = Buffer.alloc(set.length * SIGACTION_SIZE);
  set.forEach((a, k) => {
    const o = k * SIGACTION_SIZE;
    buf.writeBigUInt64LE(BigInt(a.handler), o);
    buf.writeBigUInt64LE(BigInt(a.flags), o + 8);
    buf.writeBigUInt64LE(BigInt(a.restorer), o + 16);
    buf.writeBigUInt64LE(BigInt(a.mask), o + 24);
  });
  const base = remote.putBytes(buf);
  remote.batch(set.map((a, k) => ({ name: 'rt_sigaction', nr: SYS.rt_sigaction, args: [a.sig, base + k * SIGACTION_SIZE, 0, 8], where: `signal ${a.sig}` })));
}

/** The call that sets the alternate signal stack again, if it had one (its struct put in scratch now). */
export function altstackCalls(remote: Remote, s: ImageSignals): BatchCall[] {
  const as = s.altstack;
  if (as.flags & SS_DISABLE) return [];
  const ss = Buffer.alloc(24);
  ss.writeBigUInt64LE(BigInt(as.sp), 0);
  ss.writeInt32LE(as.flags & ~SS_ONSTACK, 8);
  ss.writeBigUInt64LE(BigInt(as.size), 16);
  return [{ name: 'sigaltstack', nr: SYS.sigaltstack, args: [remote.putBytes(ss), 0], where: 'alternate signal stack' }];
}

/**
 * The pending signals queued again from inside the task, in their order
 * (a task may queue any siginfo to itself: the kernel checks si_code only
 * for signals sent to others, so si_code, si_pid, si_uid and si_value come
 * back as they were, SI_USER, SI_QUEUE, SI_TKILL, SI_TIMER and kernel codes
 * alike). `shared` is the process-wide queue, given for the main thread
 * only. Every thread of the process must block every signal meanwhile
 * (blockAllSignals): the signals stay queued, not delivered into a process
 * still being built, until restoreBlocked.
 */
export function restoreSignalState(remote: Remote, s: ImageSignals, shared: string[]): void {
  remote.reset();
  const queue = (b64: string, isShared: boolean) => {
    const info = Buffer.from(b64, 'base64');
    const signo = info.readInt32LE(0);
    const addr = remote.putBytes(info);
    if (isShared) remote.call('rt_sigqueueinfo', SYS.rt_sigqueueinfo, [remote.task.vtgid, signo, addr], `pending signal ${signo}`);
    else remote.call('rt_tgsigqueueinfo', SYS.rt_tgsigqueueinfo, [remote.task.vtgid, remote.task.vpid, signo, addr], `pending signal ${signo}`);
  };
  for (const p of shared) queue(p, true);
  for (const p of s.pending) queue(p, false);
}

/**
 * Every signal blocked in every thread, until restoreBlocked puts the saved
 * masks back. Not SIGTRAP: injection traps with it, and a trap on a blocked
 * SIGTRAP would reset its disposition to SIG_DFL.
 */
export function blockAllSignals(threads: Tracee[]): void {
  for (const t of threads) t.setSigmask(~(1n << BigInt(SIGTRAP - 1)) & 0xffffffffffffffffn);
}

/** The saved blocked masks: the last change before the tasks run (no injection needed). */
export function restoreBlocked(threads: Tracee[], saved: ImageSignals[]): void {
  threads.forEach((t, i) => t.setSigmask(BigInt(saved[i].blocked)));
}

/** The signal a process is stopped by: its group stop reports it to the tracer. */
export const StopSignal = lazySchema(() => z.union([z.literal(SIGSTOP), z.literal(SIGTSTP), z.literal(SIGTTIN), z.literal(SIGTTOU)]));
export type StopSignal = z.infer<typeof StopSignal>;

/** At checkpoint, without zod (which a checkpoint never loads otherwise). */
export function checkStopSignal(sig: number, pid: number): StopSignal {
  if (!STOP_SIGNALS.has(sig)) throw new UnsupportedError(`pid ${pid}: stopped, but its group stop reports signal ${sig}, not a stop signal; not supported`);
  return sig as StopSignal;
}

/**
 * Whether the parent (injected into) has already been told, by wait with
 * WUNTRACED, that `child` stopped: asked with WNOWAIT, which reports
 * without consuming.
 */
export function stopReported(parent: Queries, childVpid: number): () => boolean {
  const si = askWaitid(parent, P_PID, childVpid, WSTOPPED, `whether the stop of child ${childVpid} was reported`);
  return () => si() === 0;
}

/** waitid(WNOHANG | WNOWAIT) in the parent: the si_pid of a child with a report of `kind`, 0 when nothing is left to report. */
function askWaitid(parent: Queries, idtype: number, id: number, kind: number, what: string): () => number {
  const a = parent.ask('waitid', SYS_waitid, (info) => [idtype, id, info, kind | WNOHANG | WNOWAIT, 0], { out: 128, zero: true, where: what });
  return () => a.bytes.readInt32LE(16); // si_pid
}

/**
 * A child continued (SIGCONT) after a stop holds a report for its parent
 * until the parent waits with WCONTINUED (most never do). A restart could
 * make it again only by stopping and continuing the child, whose SIGCONT
 * handler would run once more. Asked with WNOWAIT, which consumes nothing:
 * such a child (its pid as the parent sees it), or 0.
 */
export function continuedUnreported(parent: Queries): () => number {
  return askWaitid(parent, P_ALL, 0, WCONTINUED | __WALL, 'whether a child was continued unreported');
}

/**
 * A child stopped again at restart notifies its parent anew: take that
 * report if the saved parent had taken it, and drop the SIGCHLD it sent if
 * none was pending in the saved parent.
 */
export function consumeStopNotice(parent: Remote, childVpid: number, reported: boolean, sharedPending: string[]): void {
  parent.reset();
  if (reported) {
    const info = parent.alloc(128);
    parent.call('waitid', SYS_waitid, [P_PID, childVpid, info, WSTOPPED | WNOHANG, 0], `the stop report of child ${childVpid}`);
  }
  const hadSigchld = sharedPending.some((b) => Buffer.from(b, 'base64').readInt32LE(0) === SIGCHLD);
  if (hadSigchld) return;
  const set = Buffer.alloc(8);
  set.writeBigUInt64LE(1n << BigInt(SIGCHLD - 1));
  const zero = Buffer.alloc(16);
  const r = parent.task.injectRaw(SYS_rt_sigtimedwait, [parent.putBytes(set), 0, parent.putBytes(zero), 8]);
  if (r < 0n && r !== -BigInt(EAGAIN)) throw new SyscallError(`rt_sigtimedwait in pid ${parent.pid}`, Number(-r), `taking back the SIGCHLD of child ${childVpid}`);
}

/** exit_signal (/proc/PID/stat field 38): what the parent is sent when this child ends. */
export function dumpExitSignal(pid: number): number {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(rest[38 - 3]);
}

export const ExitSignal = lazySchema(() => z.number().int().min(0).max(64));

/**
 * Restart: enter the group stop with the saved signal while still traced,
 * before a user instruction runs. The signal is sent and dequeued as any
 * signal, then let through, as it came to the saved process; only it is
 * unblocked meanwhile, so other pending signals stay queued as they were
 * in the stopped process. Once every thread is stopped (releaseStopped)
 * the parent has been notified; consumeStopNotice in the parent follows.
 */
export function enterGroupStop(threads: Tracee[], sig: number, what: string): void {
  const main = threads[0];
  main.setSigmask(~(1n << BigInt(sig - 1)) & ~(1n << BigInt(SIGTRAP - 1)) & 0xffffffffffffffffn);
  process.kill(main.pid, sig);
  ptrace(PTRACE.CONT, main.pid, 0, 0, 'CONT');
  main.waitStop(`${what} to take signal ${sig}`, sig, PTRACE.CONT);
  ptrace(PTRACE.CONT, main.pid, 0, sig, 'CONT');
  const got = main.waitStop(`${what} to stop with signal ${sig}`);
  if (got !== sig) throw new StasisError(`${what}: stopped with signal ${got}, not ${sig}`);
}

/** Detached in its group stop, a process stays stopped: wait until every thread is. */
export function releaseStopped(threads: Tracee[], what: string): void {
  for (const t of threads) t.detach(false);
  waitStoppedAgain(threads.map((t) => t.pid), what);
}

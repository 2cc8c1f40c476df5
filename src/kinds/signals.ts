// Signals: per process the dispositions (handler, flags, restorer, mask) and
// the process-wide pending queue; per thread the blocked mask, its own
// pending queue and the alternate stack.
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { ImageSignals, ImageSigaction } from '../image/schema';

const SIGKILL = 9, SIGSTOP = 19;
const SIGACTION_SIZE = 32; // kernel struct sigaction on x86-64
const SS_ONSTACK = 1, SS_DISABLE = 2;
const hex = (v: bigint) => '0x' + v.toString(16);

function settable(sig: number): boolean {
  return sig !== SIGKILL && sig !== SIGSTOP;
}

export function dumpSigactions(remote: Remote): ImageSigaction[] {
  const acts = remote.alloc(64 * SIGACTION_SIZE);
  const calls = [];
  for (let sig = 1; sig <= 64; sig++) {
    if (settable(sig)) calls.push({ name: 'rt_sigaction', nr: SYS.rt_sigaction, args: [sig, 0, acts + (sig - 1) * SIGACTION_SIZE, 8], where: `signal ${sig}` });
  }
  remote.batch(calls); // one round trip instead of 62
  const raw = remote.read(acts, 64 * SIGACTION_SIZE);
  const actions: ImageSigaction[] = [];
  for (let sig = 1; sig <= 64; sig++) {
    if (!settable(sig)) continue;
    const o = (sig - 1) * SIGACTION_SIZE;
    actions.push({
      sig,
      handler: hex(raw.readBigUInt64LE(o)),
      flags: hex(raw.readBigUInt64LE(o + 8)),
      restorer: hex(raw.readBigUInt64LE(o + 16)),
      mask: hex(raw.readBigUInt64LE(o + 24)),
    });
  }
  return actions;
}

export function dumpSharedPending(remote: Remote): string[] {
  return remote.task.peekSiginfo(true).map((b) => b.toString('base64'));
}

/** Per-thread signal state; `remote` injects into that very thread. */
export function dumpThreadSignals(remote: Remote): ImageSignals {
  const t = remote.task;
  const ss = remote.alloc(24);
  remote.call('sigaltstack', SYS.sigaltstack, [0, ss]);
  const ssb = remote.read(ss, 24);
  return {
    blocked: hex(t.getSigmask()),
    pending: t.peekSiginfo(false).map((b) => b.toString('base64')),
    altstack: { sp: Number(ssb.readBigUInt64LE(0)), flags: ssb.readInt32LE(8), size: Number(ssb.readBigUInt64LE(16)) },
  };
}

/** Every disposition, 1..64: a fresh process inherits ignored signals. */
export function restoreSigactions(remote: Remote, actions: ImageSigaction[]): void {
  remote.reset();
  const byNumber = new Map(actions.map((a) => [a.sig, a]));
  const buf = Buffer.alloc(64 * SIGACTION_SIZE);
  for (let sig = 1; sig <= 64; sig++) {
    const a = byNumber.get(sig);
    if (!a) continue;
    const o = (sig - 1) * SIGACTION_SIZE;
    buf.writeBigUInt64LE(BigInt(a.handler), o);
    buf.writeBigUInt64LE(BigInt(a.flags), o + 8);
    buf.writeBigUInt64LE(BigInt(a.restorer), o + 16);
    buf.writeBigUInt64LE(BigInt(a.mask), o + 24);
  }
  const base = remote.putBytes(buf);
  const calls = [];
  for (let sig = 1; sig <= 64; sig++) {
    if (settable(sig)) calls.push({ name: 'rt_sigaction', nr: SYS.rt_sigaction, args: [sig, base + (sig - 1) * SIGACTION_SIZE, 0, 8], where: `signal ${sig}` });
  }
  remote.batch(calls);
}

export function restoreAltstack(remote: Remote, s: ImageSignals): void {
  const as = s.altstack;
  if (as.flags & SS_DISABLE) return;
  remote.reset();
  const ss = Buffer.alloc(24);
  ss.writeBigUInt64LE(BigInt(as.sp), 0);
  ss.writeInt32LE(as.flags & ~SS_ONSTACK, 8);
  ss.writeBigUInt64LE(BigInt(as.size), 16);
  remote.call('sigaltstack', SYS.sigaltstack, [remote.putBytes(ss), 0], 'alternate signal stack');
}

/**
 * Blocked mask, then the pending signals queued again from inside the task
 * (a task may queue any siginfo to itself, so si_code and si_pid survive).
 * `shared` is the process-wide queue, given for one thread only.
 */
export function restoreSignalState(remote: Remote, s: ImageSignals, shared: string[]): void {
  remote.task.setSigmask(BigInt(s.blocked));
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

// CPU state of a thread: general registers (with fs/gs base) and the full
// XSAVE area (x87, SSE, AVX, AVX-512, AMX), plus how a thread stopped inside
// a system call must resume in its new process.
import { Tracee } from '../ptrace/tracee';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { Regs, SYS, ERESTART_RESTARTBLOCK, EINTR } from '../sys/x86';

const ARCH_GET_XCOMP_PERM = 0x1022;
const ARCH_REQ_XCOMP_PERM = 0x1023;
const XFEATURE_XTILEDATA = 18;

export interface CpuState {
  regs: Regs;
  xstate: Buffer;
  inSyscall: number | null;
}

export function dumpCpu(t: Tracee): CpuState {
  const regs = t.saved!.clone();
  const orig = regs.signed('orig_rax');
  return { regs, xstate: t.getXstate(), inSyscall: orig >= 0n ? Number(orig) : null };
}

/** Which extended state components the process was granted (AMX). */
export function dumpXcompPerm(q: Queries): () => bigint {
  const perm = q.ask('arch_prctl', SYS.arch_prctl, (out) => [ARCH_GET_XCOMP_PERM, out], { out: 8 });
  return () => perm.bytes.readBigUInt64LE(0);
}

export function restoreXcompPerm(remote: Remote, perm: bigint): void {
  if (perm & (1n << BigInt(XFEATURE_XTILEDATA))) {
    remote.call('arch_prctl', SYS.arch_prctl, [ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA], 'AMX tile data permission');
  }
}

/**
 * The registers to resume with in a new process. The task resumes from a
 * signal-delivery stop, so for -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND
 * the saved registers go back verbatim and the kernel itself decides, as it
 * would have: restart the call, or return EINTR when a signal with a handler
 * arrives first (rewinding rip ourselves would lose such a signal's EINTR).
 * A call that resumes through its restart_block (nanosleep, clock_nanosleep,
 * poll, futex waits with a timeout) cannot continue in another process:
 * the call is made again with its own arguments, still in the registers, so
 * it waits at least as long as it had left (a sleep may always last longer;
 * an absolute deadline is exact). Only when a signal is already deliverable
 * to the thread does it return EINTR, as the original would have.
 */
export function resumeRegs(saved: Regs, signalDeliverable = false): Regs {
  const r = saved.clone();
  if (r.signed('orig_rax') >= 0n && r.signed('rax') === -BigInt(ERESTART_RESTARTBLOCK)) {
    if (signalDeliverable) {
      r.set('rax', -BigInt(EINTR));
    } else {
      r.set('rax', r.get('orig_rax'));
      r.set('rip', r.get('rip') - 2n); // back onto the 2-byte syscall instruction
    }
    r.set('orig_rax', -1n);
  }
  return r;
}

export function restoreCpu(t: Tracee, regs: Regs, xstate: Buffer, signalDeliverable = false): void {
  t.setXstate(xstate);
  t.setRegs(resumeRegs(regs, signalDeliverable));
}

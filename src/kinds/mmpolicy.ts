// Address-space-wide memory settings of a process (mm_struct, not one
// VMA): mlockall(MCL_FUTURE), KSM merge-any, NUMA policy, and whether the
// address space is shared with another process of the tree.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { readVmas } from '../proc';
import { ImageVma } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { UnsupportedError, StasisError } from '../sys/errno';
import { vmaLabel } from './memory';

/** prctl(PR_SET_MEMORY_MERGE): KSM on every eligible VMA, present and future. */
export const MergeAny = lazySchema(() => z.boolean());
export type MergeAny = z.infer<typeof MergeAny>;

/** mlockall(MCL_FUTURE) in force: every new mapping is locked (mm->def_flags). */
export const LockFuture = lazySchema(() => z.enum(['off', 'on', 'onfault']));
export type LockFuture = z.infer<typeof LockFuture>;

/** VmLck of a process: the memory it has locked, in kB. */
export function lockedKb(pid: number): number {
  return Number(/^VmLck:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/**
 * mlockall(MCL_FUTURE) leaves no mark on existing VMAs; it shows on new
 * ones. The scratch area stasis mapped in the task is such a new mapping:
 * VmLck grew by it (`lockedBefore` was read just before it was mapped) only
 * if it was locked, and then its VmFlags say whether on fault. Reading
 * smaps, all of it, is left to the programs that locked. (A probe page of
 * its own would be left behind by a stasis killed meanwhile.)
 */
export function dumpLockFuture(remote: Remote, lockedBefore: number): LockFuture {
  const at = remote.scratch;
  if (!at) throw new StasisError(`pid ${remote.pid}: its scratch area is not mapped; cannot tell whether mlockall(MCL_FUTURE) is in force`);
  if (lockedKb(remote.pid) === lockedBefore) return 'off';
  const vma = readVmas(remote.pid).find((v) => v.start <= at && at < v.end);
  if (!vma) throw new StasisError(`pid ${remote.pid}: its scratch area is not mapped; cannot tell whether mlockall(MCL_FUTURE) is in force`);
  if (!vma.vmFlags.includes('lo')) return 'off';
  return vma.vmFlags.includes('lf') ? 'onfault' : 'on';
}

const MCL_FUTURE = 2, MCL_ONFAULT = 4, SYS_MLOCKALL = 151;

/** After the VMAs are locked: the mappings the program makes later are locked too. */
export function restoreLockFuture(remote: Remote, lock: LockFuture | undefined): void {
  if (lock && lock !== 'off') remote.call('mlockall', SYS_MLOCKALL, [MCL_FUTURE | (lock === 'onfault' ? MCL_ONFAULT : 0)], 'mlockall(MCL_FUTURE)');
}

const PR_SET_MEMORY_MERGE = 67;

/** Whether the process asked KSM to merge all its memory (/proc/PID/ksm_stat). */
export function dumpMergeAny(pid: number): MergeAny {
  let text = '';
  try {
    text = fs.readFileSync(`/proc/${pid}/ksm_stat`, 'utf8');
  } catch { /* a kernel without KSM: nothing to merge */ }
  return /^ksm_merge_any: yes$/m.test(text);
}

/**
 * Set before any VMA is mapped, so each gets "mg" as the kernel gave it;
 * VMAs the program had made unmergeable since are made so again in mapVmas.
 */
export function restoreMergeAny(remote: Remote, mergeAny: MergeAny | undefined): void {
  if (mergeAny) remote.call('prctl', SYS.prctl, [PR_SET_MEMORY_MERGE, 1, 0, 0, 0], 'PR_SET_MEMORY_MERGE');
}

const SYS_GET_MEMPOLICY = 239, MPOL_F_ADDR = 2;
const MPOL_MODE_FLAGS = 0xe000; // MPOL_F_STATIC_NODES, MPOL_F_RELATIVE_NODES, MPOL_F_NUMA_BALANCING
const MPOL_NAMES = ['default', 'preferred', 'bind', 'interleave', 'local', 'preferred many', 'weighted interleave'];

/**
 * /proc/PID/numa_maps names each VMA's policy, or the task's where the VMA
 * has none (the kernel keeps no VMA policy "default": mbind to it removes
 * the policy). All "default" thus means no VMA has a policy, read without
 * an injected call per VMA (two ptrace stops each, about 0.2 ms here).
 * Anything else, or no file (a kernel without NUMA), asks VMA by VMA.
 */
function noVmaPolicy(pid: number): boolean {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/numa_maps`, 'latin1');
  } catch {
    return false;
  }
  const lines = text.split('\n').filter(Boolean);
  return lines.length > 0 && lines.every((l) => l.split(' ', 2)[1] === 'default');
}

/**
 * NUMA memory policies of VMAs (mbind) are not saved: any policy other
 * than the default is refused by name. get_mempolicy(MPOL_F_ADDR) gives a
 * VMA's own policy (the default when it has none, whatever the task's):
 * one batch of calls for every VMA. Task policies (set_mempolicy) are
 * saved per thread by kinds/mempolicy.
 */
export function refuseMempolicy(remote: Remote, vmas: ImageVma[]): void {
  const pid = remote.pid;
  if (noVmaPolicy(pid)) return;
  const targets = vmas.filter((v) => v.kind !== 'vvar' && v.kind !== 'vvar_vclock')
    .map((v) => ({ addr: v.start, what: vmaLabel(v, v.file?.path ?? v.name) }));
  for (let i = 0; i < targets.length; i += 256) {
    const part = targets.slice(i, i + 256);
    remote.reset();
    const modes = remote.alloc(4 * part.length);
    remote.batch(part.map((t, k) => ({
      name: 'get_mempolicy', nr: SYS_GET_MEMPOLICY,
      args: [modes + 4 * k, 0, 0, t.addr, MPOL_F_ADDR], where: `NUMA policy of ${t.what}`,
    })));
    const got = remote.task.readMem(modes, 4 * part.length);
    part.forEach((t, k) => {
      const mode = got.readInt32LE(4 * k) & ~MPOL_MODE_FLAGS;
      if (mode !== 0) {
        throw new UnsupportedError(`pid ${pid}: ${t.what} has NUMA memory policy "${MPOL_NAMES[mode] ?? mode}" (set_mempolicy or mbind): not supported; checkpoint it with the default policy`);
      }
    });
  }
}

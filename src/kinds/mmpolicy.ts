// Address-space-wide memory settings of a process (mm_struct, not one
// VMA): mlockall(MCL_FUTURE), KSM merge-any, NUMA policy, and whether the
// address space is shared with another process of the tree.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { readVmas } from '../proc';
import { ImageVma } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
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
 * the policy). All "default" thus means no VMA has a policy.
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
 * Whether asking each VMA's policy costs less than reading numa_maps,
 * which walks every page table the process has filled (~5 ms per GiB
 * resident); a call planned in the batch costs ~10 µs, mostly writing its
 * code in V8's interpreter. So: a few VMAs, or up to 512 per GiB resident.
 */
function askEach(pid: number, vmas: number): boolean {
  if (vmas <= 64) return true;
  let rssPages = 0;
  try {
    rssPages = Number(fs.readFileSync(`/proc/${pid}/statm`, 'latin1').split(' ')[1]) || 0;
  } catch { /* numa_maps then tells */ }
  return vmas <= rssPages / 512;
}

/**
 * NUMA memory policies of VMAs (mbind) are not saved: any policy other
 * than the default is refused by name. get_mempolicy(MPOL_F_ADDR) gives a
 * VMA's own policy (the default when it has none, whatever the task's),
 * planned on `q` for every VMA (unless numa_maps says none has one); the
 * returned check refuses once they ran. Task policies (set_mempolicy) are
 * saved per thread by kinds/mempolicy.
 */
export function refuseMempolicy(q: Queries, vmas: ImageVma[]): () => void {
  const targets = vmas.filter((v) => v.kind !== 'vvar' && v.kind !== 'vvar_vclock');
  if (!askEach(q.pid, targets.length) && noVmaPolicy(q.pid)) return () => {};
  const asked = targets.map((v) => {
    const what = vmaLabel(v, v.file?.path ?? v.name);
    return { what, mode: q.ask('get_mempolicy', SYS_GET_MEMPOLICY, (out) => [out, 0, 0, v.start, MPOL_F_ADDR], { out: 4, where: `NUMA policy of ${what}` }) };
  });
  return () => {
    for (const a of asked) {
      const mode = a.mode.bytes.readInt32LE(0) & ~MPOL_MODE_FLAGS;
      if (mode !== 0) {
        throw new UnsupportedError(`pid ${q.pid}: ${a.what} has NUMA memory policy "${MPOL_NAMES[mode] ?? mode}" (set_mempolicy or mbind): not supported; checkpoint it with the default policy`);
      }
    }
  };
}

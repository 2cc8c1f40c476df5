// NUMA memory policy of each thread (set_mempolicy): mode, mode flags and
// nodes, asked inside the thread with get_mempolicy and set again there.
// Policies of single mappings (mbind) belong to the VMAs.
import { z, lazySchema } from '../image/zod';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { StasisError, errnoName } from '../sys/errno';

const NR_set_mempolicy = 238, NR_get_mempolicy = 239;
/** bits of node mask passed: 1024 nodes (set_mempolicy reads one bit fewer than it is told) */
const MAXNODE = 1024, MASK_BYTES = MAXNODE / 8;

export const MempolicyState = lazySchema(() => z.object({
  /** MPOL_* mode with its MPOL_F_* flags, as get_mempolicy reports it */
  mode: z.number().int().min(0).max(0xffff),
  /** nodes, hex, node 0 in the lowest bit ('0x0' for default and local) */
  nodes: z.string().regex(/^0x[0-9a-f]{1,256}$/),
}));
export type MempolicyState = z.infer<typeof MempolicyState>;

export function dumpMempolicy(q: Queries): () => MempolicyState {
  // One out: the mode's int, then the node mask.
  const got = q.ask('get_mempolicy', NR_get_mempolicy, (out) => [out, out + 8, MAXNODE, 0, 0], { out: 8 + MASK_BYTES, where: 'memory policy' });
  return () => {
    const m = got.bytes.subarray(8);
    let nodes = 0n;
    for (let i = MASK_BYTES - 1; i >= 0; i--) nodes = (nodes << 8n) | BigInt(m[i]);
    return { mode: got.bytes.readInt32LE(0), nodes: '0x' + nodes.toString(16) };
  };
}

/** `now`: the thread's policy as it is (dumpMempolicy, asked with the thread's other questions). */
export function restoreMempolicy(remote: Remote, s: MempolicyState, now: MempolicyState): void {
  if (now.mode === s.mode && now.nodes === s.nodes) return;
  remote.reset();
  const m = Buffer.alloc(MASK_BYTES);
  let v = BigInt(s.nodes);
  for (let i = 0; i < MASK_BYTES && v; i++, v >>= 8n) m[i] = Number(v & 0xffn);
  const r = remote.task.injectRaw(NR_set_mempolicy, BigInt(s.nodes) === 0n ? [s.mode, 0, 0] : [s.mode, remote.putBytes(m), MAXNODE]);
  if (r < 0n) {
    throw new StasisError(`pid ${remote.task.tgid} thread ${remote.task.pid}: cannot set its memory policy (mode 0x${s.mode.toString(16)}, nodes ${s.nodes}): ${errnoName(Number(-r))}; restart on a machine with those NUMA nodes`);
  }
}

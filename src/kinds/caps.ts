// Credentials and capabilities of each thread: uids, gids, groups, the five
// capability sets and the securebits (keepcaps among them). Restored last,
// in an order the kernel allows: inheritable while the bounding set is
// still whole, the bounding set while CAP_SETPCAP is effective, the ids
// with SECBIT_NO_SETUID_FIXUP so that setresuid keeps the capabilities,
// ambient ones while permitted and inheritable allow them, the saved
// securebits, and the saved sets last (lowering needs no privilege).
import { z, lazySchema } from '../image/zod';
import { readStatus, type Status } from '../proc';
import type { ImageCreds } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { SYS } from '../sys/x86';
import { StasisError, SyscallError } from '../sys/errno';

const NR_capset = 126;
const PR_CAPBSET_DROP = 24, PR_GET_SECUREBITS = 27, PR_SET_SECUREBITS = 28, PR_SET_KEEPCAPS = 8, PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_RAISE = 2, PR_CAP_AMBIENT_CLEAR_ALL = 4;
const SECBIT_NO_SETUID_FIXUP = 1 << 2, SECBIT_KEEP_CAPS = 1 << 4;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;

const hex64 = lazySchema(() => z.string().regex(/^0x[0-9a-f]{1,16}$/));
export const CapsState = lazySchema(() => z.object({
  inh: hex64, prm: hex64, eff: hex64, bnd: hex64, amb: hex64,
  /** PR_GET_SECUREBITS (SECBIT_KEEP_CAPS is keepcaps) */
  securebits: z.number().int().min(0).max(0xffff),
}));
export type CapsState = z.infer<typeof CapsState>;

const hex = (v: bigint) => '0x' + v.toString(16);

const askSecurebits = (q: Queries) => q.ask('prctl', SYS.prctl, [PR_GET_SECUREBITS], { where: 'securebits' });

/** One thread's capability sets (from /proc) and securebits (asked inside it). */
export function dumpCaps(q: Queries): () => CapsState {
  const tid = q.remote.task.pid;
  const bits = askSecurebits(q);
  const seen = q.remote.task.statusSeen;
  return () => {
    const st = seen ?? readStatus(tid);
    return {
      inh: hex(st.capInh), prm: hex(st.capPrm), eff: hex(st.capEff), bnd: hex(st.capBnd), amb: hex(st.capAmb),
      securebits: bits.value,
    };
  };
}

function capset(remote: Remote, eff: bigint, prm: bigint, inh: bigint, where: string): void {
  const b = Buffer.alloc(8 + 24);
  b.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  const lo = (v: bigint) => Number(v & 0xffffffffn), hi = (v: bigint) => Number(v >> 32n);
  [[lo(eff), lo(prm), lo(inh)], [hi(eff), hi(prm), hi(inh)]].forEach((w, i) => w.forEach((v, j) => b.writeUInt32LE(v, 8 + i * 12 + j * 4)));
  remote.call('capset', NR_capset, [remote.putBytes(b), remote.putBytes(b.subarray(8))], where);
}

const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/** A thread's credentials as they are, for restoreCredsAndCaps: its securebits asked with its other questions. */
export function credsNow(q: Queries): () => { status: Status; securebits: number } {
  const tid = q.remote.task.pid;
  const bits = askSecurebits(q);
  return () => ({ status: readStatus(tid), securebits: bits.value });
}

/**
 * Credentials and capabilities of one thread: the last thing set in it but
 * its signals. `current`: credsNow's. Whether the credentials were changed
 * (which clears the parent-death signal).
 */
export function restoreCredsAndCaps(remote: Remote, c: ImageCreds, caps: CapsState, current: { status: Status; securebits: number }): boolean {
  const tid = remote.task.pid;
  const who = `pid ${remote.task.tgid} thread ${tid}`;
  const { status: now, securebits: bits } = current;
  const want = { inh: BigInt(caps.inh), prm: BigInt(caps.prm), eff: BigInt(caps.eff), bnd: BigInt(caps.bnd), amb: BigInt(caps.amb) };
  const idsDiffer = !same(now.uid, c.uid) || !same(now.gid, c.gid) || !same(now.groups, c.groups);
  remote.reset();
  const capsDiffer = now.capInh !== want.inh || now.capPrm !== want.prm || now.capEff !== want.eff || now.capBnd !== want.bnd || now.capAmb !== want.amb;
  if (!idsDiffer && !capsDiffer && bits === caps.securebits) return false;
  if (!idsDiffer && !capsDiffer && (bits ^ caps.securebits) === SECBIT_KEEP_CAPS) {
    // keepcaps alone needs no privilege, and changes no id or set
    remote.call('prctl', SYS.prctl, [PR_SET_KEEPCAPS, caps.securebits & SECBIT_KEEP_CAPS ? 1 : 0], `${who}: keepcaps`);
    return false;
  }
  try {
    if (now.capInh !== want.inh) capset(remote, now.capEff, now.capPrm, want.inh, 'inheritable set');
    for (let cap = 0n; cap < 64n; cap++) {
      if ((now.capBnd >> cap) & 1n && !((want.bnd >> cap) & 1n)) remote.call('prctl', SYS.prctl, [PR_CAPBSET_DROP, cap], `bounding set, capability ${cap}`);
    }
    if (idsDiffer) {
      if (!(bits & SECBIT_NO_SETUID_FIXUP)) remote.call('prctl', SYS.prctl, [PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP], 'securebits for the uid change');
      const groups = Buffer.alloc(4 * Math.max(1, c.groups.length));
      c.groups.forEach((g, i) => groups.writeUInt32LE(g, i * 4));
      // In a user namespace setgroups is denied, and the groups are already right there.
      if (!same(now.groups, c.groups)) remote.call('setgroups', SYS.setgroups, [c.groups.length, remote.putBytes(groups)]);
      remote.call('setresgid', SYS.setresgid, [c.gid[0], c.gid[1], c.gid[2]]);
      remote.call('setresuid', SYS.setresuid, [c.uid[0], c.uid[1], c.uid[2]]);
    }
    remote.call('prctl', SYS.prctl, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0], 'ambient set');
    for (let cap = 0n; cap < 64n; cap++) {
      if ((want.amb >> cap) & 1n) remote.call('prctl', SYS.prctl, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0], `ambient capability ${cap}`);
    }
    const bitsNow = remote.call('prctl', SYS.prctl, [PR_GET_SECUREBITS], 'securebits');
    if (bitsNow !== caps.securebits) remote.call('prctl', SYS.prctl, [PR_SET_SECUREBITS, caps.securebits], 'securebits');
    capset(remote, want.eff, want.prm, want.inh, 'capability sets');
    return true;
  } catch (e) {
    if (e instanceof SyscallError) {
      throw new StasisError(`${who}: cannot give it uid ${c.uid.join('/')} with capabilities eff ${caps.eff} prm ${caps.prm} inh ${caps.inh} bnd ${caps.bnd} amb ${caps.amb} securebits 0x${caps.securebits.toString(16)}: ${e.message}; restart as root`);
    }
    throw e;
  }
}

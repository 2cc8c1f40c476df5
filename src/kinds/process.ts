// Per-process attributes: name, personality, umask, cwd and root,
// resource limits and credentials; per-thread rseq, clear_child_tid and the
// robust futex list.
import fs from 'node:fs';
import os from 'node:os';
import { readStatus, readLimits, RLIM_INFINITY, type Status } from '../proc';
import type { ImageCreds, ImageProcess, ImageThread } from '../image/schema';
import type { CapsState } from './caps';
import { Remote, BatchCall } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { Tracee } from '../ptrace/tracee';
import { SYS } from '../sys/x86';
import { syscall } from '../sys/libc';
import { StasisError } from '../sys/errno';

const PR_SET_NAME = 15, PR_GET_TID_ADDRESS = 40;
const hex = (v: bigint) => '0x' + v.toString(16);

export type ProcessAttrs = Pick<ImageProcess, 'comm' | 'personality' | 'umask' | 'cwd' | 'root' | 'rlimits' | 'creds' | 'kernel'>;

/** `seen`: its main thread's status as the survey read it (Tracee.statusSeen). */
export function dumpProcessAttrs(pid: number, seen?: Status): ProcessAttrs {
  const status = seen ?? readStatus(pid);
  const creds: ImageCreds = {
    uid: status.uid, gid: status.gid, groups: status.groups,
    capEff: hex(status.capEff), capPrm: hex(status.capPrm), capInh: hex(status.capInh),
    capBnd: hex(status.capBnd), capAmb: hex(status.capAmb), noNewPrivs: status.noNewPrivs,
  };
  return {
    comm: fs.readFileSync(`/proc/${pid}/comm`, 'utf8').replace(/\n$/, ''),
    personality: parseInt(fs.readFileSync(`/proc/${pid}/personality`, 'utf8'), 16),
    umask: status.umask,
    cwd: fs.readlinkSync(`/proc/${pid}/cwd`),
    root: fs.readlinkSync(`/proc/${pid}/root`),
    rlimits: readLimits(pid).map((l) => ({ resource: l.resource, name: l.name, soft: hex(l.soft), hard: hex(l.hard) })),
    creds,
    kernel: os.release(),
  };
}

const CAP_NAMES = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER',
  'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE',
  'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP',
  'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF',
  'CHECKPOINT_RESTORE',
];

function capNames(mask: bigint): string {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (mask & (1n << BigInt(bit))) names.push(bit < CAP_NAMES.length ? `CAP_${CAP_NAMES[bit]}` : `capability ${bit}`);
  }
  return names.length > 4 ? `${names.slice(0, 4).join(', ')} and ${names.length - 4} more` : names.join(', ');
}

/**
 * An image never grants more than the restoring user already has: an
 * ordinary user restores only their own uid and gid (and groups they are
 * in); nobody restores capabilities they lack, a larger bounding set, or
 * the absence of no_new_privs they are under. Root may become anyone.
 */
export function checkCreds(c: ImageCreds, who: string, threadCaps: Array<{ tid: number; caps: CapsState }> = [], me = readStatus('self')): void {
  if (me.uid[1] !== 0) {
    const uid = me.uid[1], gid = me.gid[1];
    const mine = new Set([gid, ...me.groups]);
    if (c.uid.some((u) => u !== uid)) {
      throw new StasisError(`${who}: the image runs as uid ${c.uid.join('/')}; you are uid ${uid}: only root may restart a process as another user`);
    }
    if (c.gid.some((g) => g !== gid)) {
      throw new StasisError(`${who}: the image runs as gid ${c.gid.join('/')}; your gid is ${gid}: only root may restart a process in another group`);
    }
    const foreign = c.groups.filter((g) => !mine.has(g));
    if (foreign.length) throw new StasisError(`${who}: the image holds supplementary group(s) ${foreign.join(', ')} you are not in: only root may grant them`);
  }
  const claim = (name: string, mask: string, allowed: bigint) => {
    const extra = BigInt(mask) & ~allowed;
    if (extra) throw new StasisError(`${who}: the image claims ${name} ${mask} with ${capNames(extra)} that you do not hold: restart as a user who holds them`);
  };
  // The process's sets, and each thread's own, which are what restart gives it (kinds/caps).
  const claims = (label: string, sets: { prm: string; eff: string; inh: string; amb: string; bnd: string }) => {
    claim(`${label}permitted capabilities`, sets.prm, me.capPrm);
    claim(`${label}effective capabilities`, sets.eff, me.capPrm);
    claim(`${label}inheritable capabilities`, sets.inh, me.capPrm | me.capInh);
    claim(`${label}ambient capabilities`, sets.amb, me.capPrm);
    claim(`${label}a capability bounding set`, sets.bnd, me.capBnd);
  };
  claims('', { prm: c.capPrm, eff: c.capEff, inh: c.capInh, amb: c.capAmb, bnd: c.capBnd });
  for (const { tid, caps } of threadCaps) claims(`for thread ${tid} `, caps);
  if (me.noNewPrivs && !c.noNewPrivs) throw new StasisError(`${who}: the image runs without no_new_privs, which you are under: restart from a process without it`);
}

const S_ISUID = 0o4000, S_ISGID = 0o2000;
const SYS_GETXATTR = 191;

/**
 * A file the process was started from or maps that grants privilege when
 * executed (setuid, setgid, file capabilities) is refused: the image's own
 * credentials are what the restored process gets, and they are checked
 * above; such a file means the saved process may hold what the image hides.
 */
export function checkFilePrivilege(path: string, what: string): void {
  let mode: number;
  try {
    mode = fs.statSync(path).mode;
  } catch {
    return; // a missing file is refused by the identity check, by name
  }
  if (mode & (S_ISUID | S_ISGID)) {
    throw new StasisError(`${what}: ${path} is ${mode & S_ISUID ? 'setuid' : 'setgid'}: restoring a process of a privileged program is refused`);
  }
  let caps = false;
  try {
    caps = syscall(SYS_GETXATTR, 'getxattr', Buffer.from(path + '\0'), Buffer.from('security.capability\0'), 0, 0) > 0;
  } catch { /* ENODATA: no file capabilities */ }
  if (caps) throw new StasisError(`${what}: ${path} has file capabilities: restoring a process of a privileged program is refused`);
}

export function restoreProcessAttrs(remote: Remote, p: ImageProcess): void {
  remote.reset();
  // One batch. Both paths are as seen from our root: cwd first, then chroot
  // (which leaves cwd alone, inside the new root or not, as the program had it).
  remote.batch([
    { name: 'personality', nr: SYS.personality, args: [p.personality] },
    { name: 'umask', nr: SYS.umask, args: [p.umask] },
    { name: 'chdir', nr: SYS.chdir, args: [remote.putString(p.cwd)], where: `cwd ${p.cwd}` },
    ...(p.root !== '/' ? [{ name: 'chroot', nr: SYS.chroot, args: [remote.putString(p.root)], where: p.root }] : []),
    { name: 'prctl', nr: SYS.prctl, args: [PR_SET_NAME, remote.putString(p.comm)], where: 'comm' },
  ]);
  const current = new Map(readLimits(remote.pid).map((l) => [l.resource, l]));
  for (const l of p.rlimits) {
    const soft = BigInt(l.soft), hard = BigInt(l.hard);
    const now = current.get(l.resource);
    if (now && now.soft === soft && now.hard === hard) continue;
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(soft, 0);
    b.writeBigUInt64LE(hard, 8);
    const r = remote.task.injectRaw(SYS.prlimit64, [0, l.resource, remote.putBytes(b), 0]);
    if (r < 0n) {
      const fmt = (v: bigint) => (v === RLIM_INFINITY ? 'unlimited' : v.toString());
      throw new StasisError(`rlimit "${l.name}": cannot set ${fmt(soft)}/${fmt(hard)} (errno ${-r}): raising a hard limit needs CAP_SYS_RESOURCE; raise it for the restoring shell (ulimit -H) and retry`);
    }
  }
}

export type ThreadAttrs = Pick<ImageThread, 'rseq' | 'tidAddress' | 'robustList'>;

export function dumpThreadAttrs(q: Queries): () => ThreadAttrs {
  const t: Tracee = q.remote.task;
  const tidAddress = q.ask('prctl', SYS.prctl, (out) => [PR_GET_TID_ADDRESS, out], { out: 8 });
  return () => {
    const rseq = t.getRseq();
    const head = Buffer.alloc(8), len = Buffer.alloc(8);
    syscall(SYS.get_robust_list, 'get_robust_list', t.pid, head, len);
    return {
      rseq: rseq && { addr: hex(rseq.addr), len: rseq.len, sig: rseq.sig, flags: rseq.flags },
      tidAddress: hex(tidAddress.bytes.readBigUInt64LE(0)),
      robustList: { head: hex(head.readBigUInt64LE(0)), len: Number(len.readBigUInt64LE(0)) },
    };
  };
}

/** The calls that set a thread's rseq, tid address and robust list again (for the thread's setup batch). */
export function threadAttrCalls(th: ThreadAttrs): BatchCall[] {
  return [
    ...(th.rseq ? [{ name: 'rseq', nr: SYS.rseq, args: [BigInt(th.rseq.addr), th.rseq.len, 0, th.rseq.sig], where: 'rseq registration' }] : []),
    { name: 'set_tid_address', nr: SYS.set_tid_address, args: [BigInt(th.tidAddress)] },
    ...(BigInt(th.robustList.head) !== 0n ? [{ name: 'set_robust_list', nr: SYS.set_robust_list, args: [BigInt(th.robustList.head), th.robustList.len], where: 'robust futex list' }] : []),
  ];
}

// Per-process attributes: name, personality, umask, cwd and root,
// resource limits and credentials; per-thread rseq, clear_child_tid and the
// robust futex list.
import fs from 'node:fs';
import os from 'node:os';
import { readStatus, readLimits, RLIM_INFINITY } from '../proc';
import { ImageCreds, ImageProcess, ImageThread } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { Tracee } from '../ptrace/tracee';
import { SYS } from '../sys/x86';
import { syscall } from '../sys/libc';
import { StasisError } from '../sys/errno';

const PR_SET_NAME = 15, PR_GET_TID_ADDRESS = 40;
const hex = (v: bigint) => '0x' + v.toString(16);

export type ProcessAttrs = Pick<ImageProcess, 'comm' | 'personality' | 'umask' | 'cwd' | 'root' | 'rlimits' | 'creds' | 'kernel'>;

export function dumpProcessAttrs(pid: number): ProcessAttrs {
  const status = readStatus(pid);
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

/** An image never grants more than the restoring user already has. */
export function checkCreds(c: ImageCreds): void {
  const me = readStatus('self');
  const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
  if (me.uid[1] === 0) return; // root may become anyone
  if (!same(c.uid, me.uid) || !same(c.gid, me.gid)) {
    throw new StasisError(`the image runs as uid ${c.uid.join('/')} gid ${c.gid.join('/')}; you are uid ${me.uid.join('/')}: restart as that user or as root`);
  }
}

export function restoreProcessAttrs(remote: Remote, p: ImageProcess): void {
  remote.reset();
  remote.call('personality', SYS.personality, [p.personality]);
  remote.call('umask', SYS.umask, [p.umask]);
  // Both paths are as seen from our root: cwd first, then chroot (which
  // leaves cwd alone, inside the new root or not, as the program had it).
  remote.call('chdir', SYS.chdir, [remote.putString(p.cwd)], `cwd ${p.cwd}`);
  if (p.root !== '/') remote.call('chroot', SYS.chroot, [remote.putString(p.root)], p.root);
  remote.call('prctl', SYS.prctl, [PR_SET_NAME, remote.putString(p.comm)], 'comm');
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

/** Credentials last: after them the task may no longer be allowed the rest. */
export function restoreCreds(remote: Remote, c: ImageCreds): void {
  const me = readStatus(remote.pid);
  const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
  if (same(me.uid, c.uid) && same(me.gid, c.gid) && same(me.groups, c.groups)) return;
  remote.reset();
  const groups = Buffer.alloc(4 * Math.max(1, c.groups.length));
  c.groups.forEach((g, i) => groups.writeUInt32LE(g, i * 4));
  remote.call('setgroups', SYS.setgroups, [c.groups.length, remote.putBytes(groups)]);
  remote.call('setresgid', SYS.setresgid, [c.gid[0], c.gid[1], c.gid[2]]);
  remote.call('setresuid', SYS.setresuid, [c.uid[0], c.uid[1], c.uid[2]]);
}

export type ThreadAttrs = Pick<ImageThread, 'rseq' | 'tidAddress' | 'robustList'>;

export function dumpThreadAttrs(remote: Remote): ThreadAttrs {
  const t: Tracee = remote.task;
  const rseq = t.getRseq();
  const out = remote.alloc(8);
  remote.call('prctl', SYS.prctl, [PR_GET_TID_ADDRESS, out]);
  const tidAddress = remote.read(out, 8).readBigUInt64LE(0);
  const head = Buffer.alloc(8), len = Buffer.alloc(8);
  syscall(SYS.get_robust_list, 'get_robust_list', t.pid, head, len);
  return {
    rseq: rseq && { addr: hex(rseq.addr), len: rseq.len, sig: rseq.sig, flags: rseq.flags },
    tidAddress: hex(tidAddress),
    robustList: { head: hex(head.readBigUInt64LE(0)), len: Number(len.readBigUInt64LE(0)) },
  };
}

export function restoreThreadAttrs(remote: Remote, th: ThreadAttrs): void {
  if (th.rseq) remote.call('rseq', SYS.rseq, [BigInt(th.rseq.addr), th.rseq.len, 0, th.rseq.sig], 'rseq registration');
  remote.call('set_tid_address', SYS.set_tid_address, [BigInt(th.tidAddress)]);
  if (BigInt(th.robustList.head) !== 0n) {
    remote.call('set_robust_list', SYS.set_robust_list, [BigInt(th.robustList.head), th.robustList.len], 'robust futex list');
  }
}

// `stasis check`: prove on this machine each kernel feature stasis uses, by
// using it on a blank process of our own.
import fs from 'node:fs';
import os from 'node:os';
import { spawnBlank, BLANK_SYSCALL } from '../ptrace/blank';
import { Tracee } from '../ptrace/tracee';
import { Remote } from '../ptrace/remote';
import { readMaps, readPagemap, readStatus } from '../proc';
import { specialVmas } from '../kinds/vdso';
import { SYS, PAGE_SIZE } from '../sys/x86';
import { waitpidSync, __WALL } from '../sys/libc';
import { FD_KINDS } from '../kinds/fdkinds';
import { REFUSED_FDS, REFUSED_MAPPINGS } from '../kinds/refused';
import { VmaKind } from '../image/schema';

interface Check { name: string; ok: boolean; detail: string; required: boolean }

function attempt(name: string, required: boolean, fn: () => string): Check {
  try {
    return { name, ok: true, detail: fn(), required };
  } catch (e) {
    return { name, ok: false, detail: (e as Error).message, required };
  }
}

export function collectChecks(): Check[] {
  const checks: Check[] = [];
  checks.push(attempt('kernel', true, () => {
    if (process.arch !== 'x64') throw new Error(`${process.arch} is not supported (x86-64 only)`);
    return `${os.release()} x86-64`;
  }));
  const caps = readStatus('self').capEff;
  const has = (bit: number) => ((caps >> BigInt(bit)) & 1n) === 1n;
  // Without them stasis works as an ordinary user: own processes only,
  // frozen with ptrace, restarted in a user namespace (checked below).
  checks.push(attempt('privileges', false, () => {
    const missing = [[19, 'CAP_SYS_PTRACE'], [21, 'CAP_SYS_ADMIN'], [40, 'CAP_CHECKPOINT_RESTORE']].filter(([b]) => !has(b as number)).map(([, n]) => n);
    if (missing.length) throw new Error(`missing ${missing.join(', ')}: your own processes only, restarted in a user namespace`);
    return 'CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE';
  }));
  const pid = spawnBlank();
  const t = new Tracee(pid);
  try {
    checks.push(attempt('ptrace seize/interrupt', true, () => { t.seize({ exitKill: true }); return 'ok'; }));
    const remote = new Remote(t);
    t.syscallInsn = BLANK_SYSCALL;
    checks.push(attempt('syscall injection', true, () => {
      remote.mapScratch(PAGE_SIZE);
      return `getpid() in the task returned ${remote.call('getpid', SYS.getpid)}`;
    }));
    checks.push(attempt('process_vm_readv/writev', true, () => {
      const b = Buffer.from('stasis');
      t.writev(b, 0, [{ addr: remote.scratch, len: b.length }]);
      const back = Buffer.alloc(b.length);
      t.readv(back, 0, [{ addr: remote.scratch, len: b.length }]);
      if (!back.equals(b)) throw new Error('data read back differs');
      return 'ok';
    }));
    checks.push(attempt('PR_SET_MM_MAP (CONFIG_CHECKPOINT_RESTORE)', true, () => {
      const out = remote.alloc(4);
      remote.call('prctl', SYS.prctl, [35, 15 /* PR_SET_MM_MAP_SIZE */, out, 0, 0]);
      return `struct prctl_mm_map is ${remote.read(out, 4).readUInt32LE(0)} bytes`;
    }));
    checks.push(attempt('xstate regset', true, () => `${t.getXstate().length} bytes of XSAVE state`));
    checks.push(attempt('rseq configuration', true, () => { t.getRseq(); return 'PTRACE_GET_RSEQ_CONFIGURATION ok'; }));
    checks.push(attempt('vdso layout', true, () => {
      const sp = specialVmas(readMaps(pid));
      if (!sp.has('[vdso]')) throw new Error('no [vdso] mapping');
      return [...sp].map(([n, r]) => `${n} ${(r.end - r.start) / PAGE_SIZE} pages`).join(', ');
    }));
    checks.push(attempt('pagemap', true, () => {
      const m = readMaps(pid).find((v) => v.path === '[stack]');
      if (!m) throw new Error('no stack mapping to probe');
      const pm = readPagemap(pid, m.end - PAGE_SIZE, m.end);
      if (!((pm[0] >> 63n) & 1n)) throw new Error('present bit not reported');
      return 'present/swapped/file bits readable';
    }));
    // Last: it moves the blank into the new namespaces.
    checks.push(attempt('user + pid namespace (restart as a user)', !has(40), () => {
      remote.call('unshare', SYS.unshare, [0x10000000 /* CLONE_NEWUSER */]);
      const uid = process.geteuid!(), gid = process.getegid!();
      fs.writeFileSync(`/proc/${pid}/uid_map`, `${uid} ${uid} 1\n`);
      fs.writeFileSync(`/proc/${pid}/setgroups`, 'deny');
      fs.writeFileSync(`/proc/${pid}/gid_map`, `${gid} ${gid} 1\n`);
      remote.call('unshare', SYS.unshare, [0x20000000 /* CLONE_NEWPID */]);
      return `uid ${uid} and gid ${gid} mapped; a pid namespace made inside`;
    }));
  } finally {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    try { waitpidSync(pid, __WALL); } catch { /* reaped */ }
    t.closeMem();
  }
  return checks;
}

export function runChecks(): number {
  const checks = collectChecks();
  let bad = 0;
  for (const c of checks) {
    const mark = c.ok ? 'ok     ' : c.required ? 'MISSING' : 'absent ';
    if (!c.ok && c.required) bad++;
    process.stdout.write(`${mark} ${c.name}: ${c.detail}\n`);
  }
  process.stdout.write(bad ? `${bad} required feature(s) missing\n` : 'everything stasis needs is here\n');
  return bad ? 1 : 0;
}

/**
 * `stasis check --kinds`: every fd and mapping kind with "supported" or
 * "refused", from the registry of kind modules and the list of refusals
 * (src/kinds/refused.ts), so it stays true as kinds are added.
 */
export function kindList(): Array<{ of: 'fd' | 'mapping'; name: string; status: 'supported' | 'refused' }> {
  const supportedFds = [...new Set(FD_KINDS.flatMap((k) => [...k.kinds]))];
  return [
    ...supportedFds.map((name) => ({ of: 'fd' as const, name, status: 'supported' as const })),
    ...REFUSED_FDS.map((r) => ({ of: 'fd' as const, name: r.name, status: 'refused' as const })),
    { of: 'fd', name: 'any other fd', status: 'refused' },
    ...VmaKind.options.map((name) => ({ of: 'mapping' as const, name, status: 'supported' as const })),
    ...REFUSED_MAPPINGS.map((r) => ({ of: 'mapping' as const, name: r.name, status: 'refused' as const })),
    { of: 'mapping', name: 'any other mapping', status: 'refused' },
  ];
}

export function runKindList(): number {
  for (const k of kindList()) process.stdout.write(`${k.of.padEnd(8)} ${k.status.padEnd(10)} ${k.name}\n`);
  return 0;
}

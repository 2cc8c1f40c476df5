// The mm descriptor: code/data/brk/stack/arg/env bounds, the auxv vector and
// the exe file, set in one PR_SET_MM_MAP once every VMA exists (the kernel
// checks that the addresses lie inside mappings).
import { readStat, readAuxv } from '../proc';
import fs from 'node:fs';
import { ImageMm } from '../image/schema';
import { Remote } from '../ptrace/remote';
import { Queries } from '../ptrace/queries';
import { SYS } from '../sys/x86';
import { injectedResult } from '../sys/errno';
import { fileIdentity } from './memory';
import { openNoSymlinks } from './regular';

const PR_SET_MM = 35, PR_SET_MM_MAP = 14;

export function dumpMm(q: Queries): () => ImageMm {
  const pid = q.pid;
  const brk = q.ask('brk', SYS.brk, [0]);
  return () => {
    const st = readStat(pid);
    const exePath = fs.readlinkSync(`/proc/${pid}/exe`);
    return {
      startCode: st.startCode, endCode: st.endCode, startData: st.startData, endData: st.endData,
      startBrk: st.startBrk, brk: brk.value, startStack: st.startStack,
      argStart: st.argStart, argEnd: st.argEnd, envStart: st.envStart, envEnd: st.envEnd,
      auxv: readAuxv(pid).toString('base64'),
      exe: fileIdentity(exePath),
    };
  };
}

export function restoreMm(remote: Remote, mm: ImageMm): void {
  remote.reset();
  const auxv = Buffer.from(mm.auxv, 'base64');
  const auxvAddr = remote.putBytes(auxv);
  const exeFd = remote.call('openat2', SYS.openat2, openNoSymlinks(remote, mm.exe.path, 0), `exe ${mm.exe.path}`);
  const map = Buffer.alloc(104);
  [mm.startCode, mm.endCode, mm.startData, mm.endData, mm.startBrk, mm.brk, mm.startStack,
    mm.argStart, mm.argEnd, mm.envStart, mm.envEnd, auxvAddr].forEach((v, i) => map.writeBigUInt64LE(BigInt(v), i * 8));
  map.writeUInt32LE(auxv.length, 96);
  map.writeUInt32LE(exeFd, 100);
  // One batch (each call is a round trip into the task): the fd is closed whatever PR_SET_MM_MAP gave.
  const [set] = remote.batchRaw([
    { name: 'prctl', nr: SYS.prctl, args: [PR_SET_MM, PR_SET_MM_MAP, remote.putBytes(map), map.length, 0], where: 'PR_SET_MM_MAP' },
    { name: 'close', nr: SYS.close, args: [exeFd] },
  ]);
  injectedResult(set, 'prctl', remote.pid, 'PR_SET_MM_MAP');
}

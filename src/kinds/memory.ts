// Memory: VMAs and their page contents. Dump classifies every mapping,
// refuses kinds it cannot restore, finds the pages that exist only in memory
// (pagemap) and streams them; restore maps every VMA at its address and
// writes the pages back.
import fs from 'node:fs';
import { Vma, readPagemap } from '../proc';
import { FileIdentity, ImageVma, ImageCreds } from '../image/schema';
import { savesPages, vmaAt } from '../image/validate';
import { mayOpen, openNoSymlinks } from './files';
import { ImageWriter, RecordType, encodePagesHeader, PageRun } from '../image/stream';
import { Remote, BatchCall, PROT_READ, PROT_WRITE, PROT_EXEC, MAP_PRIVATE, MAP_SHARED, MAP_ANONYMOUS, MAP_FIXED, MAP_GROWSDOWN, AT_FDCWD } from '../ptrace/remote';
import { SYS, PAGE_SIZE } from '../sys/x86';
import { MemfdTable, MemfdKeeper, memfdName } from './memfd';
import { StasisError, UnsupportedError, ImageError } from '../sys/errno';

const SPECIAL: Record<string, ImageVma['kind']> = { '[vdso]': 'vdso', '[vvar]': 'vvar', '[vvar_vclock]': 'vvar_vclock' };

/** VmFlags that mean state we cannot recreate: refused by name. */
const REFUSED_FLAGS: Record<string, string> = {
  io: 'a device (VM_IO) mapping',
  pf: 'a raw PFN mapping',
  um: 'a userfaultfd-registered range',
  uw: 'a userfaultfd write-protected range',
  ss: 'a shadow stack',
  sl: 'a sealed (mseal) range',
};

/** VmFlags restored with madvise after mapping. */
const MADVISE_FOR_FLAG: Record<string, number> = {
  dd: 16, // MADV_DONTDUMP
  dc: 10, // MADV_DONTFORK
  wf: 18, // MADV_WIPEONFORK
  hg: 14, // MADV_HUGEPAGE
  nh: 15, // MADV_NOHUGEPAGE
  mg: 12, // MADV_MERGEABLE
};

export function fileIdentity(path: string): FileIdentity {
  const st = fs.statSync(path, { bigint: true });
  return { path, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeNs: st.mtimeNs.toString() };
}

/** Refuse a restart when a file the image relies on changed or vanished. */
export function checkFileIdentity(id: FileIdentity, what: string): void {
  let now: FileIdentity;
  try {
    // lstat: a symlink put in the file's place is not the file.
    const st = fs.lstatSync(id.path, { bigint: true });
    if (st.isSymbolicLink()) throw new StasisError(`${what}: ${id.path} is now a symbolic link; refusing to follow it`);
    now = { path: id.path, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeNs: st.mtimeNs.toString() };
  } catch (e) {
    if (e instanceof StasisError) throw e;
    throw new StasisError(`${what}: ${id.path} is missing (${(e as NodeJS.ErrnoException).code}); restore the file or restart where it exists`);
  }
  const diffs: string[] = [];
  if (now.dev !== id.dev || now.ino !== id.ino) diffs.push(`inode ${id.dev}:${id.ino} became ${now.dev}:${now.ino}`);
  if (now.size !== id.size) diffs.push(`size ${id.size} became ${now.size}`);
  if (now.mtimeNs !== id.mtimeNs) diffs.push('mtime changed');
  if (diffs.length) throw new StasisError(`${what}: ${id.path} changed since the checkpoint (${diffs.join(', ')}); refusing to map different contents`);
}

/**
 * Before any process exists: every mapped file is the one the image names,
 * and the saved process could have opened it the way mapVmas will (read
 * and write for a shared mapping that may become writable).
 */
export function checkMappedFiles(vmas: ImageVma[], creds: ImageCreds, pid: number): void {
  for (const v of vmas) {
    if (v.kind !== 'file') continue;
    const what = `pid ${pid}: mapping at 0x${v.start.toString(16)}`;
    checkFileIdentity(v.file!, what);
    const mode = v.shared && v.vmFlags.includes('mw') ? O_RDWR : O_RDONLY;
    const st = fs.statSync(v.file!.path);
    // A private mapping of a program the process may only execute came from exec(): fine.
    const execOnly = mode === O_RDONLY && (st.mode & (st.uid === creds.uid[3] ? 0o100 : st.gid === creds.gid[3] || creds.groups.includes(st.gid) ? 0o010 : 0o001)) !== 0;
    if (!execOnly && !mayOpen(st, mode, creds)) {
      throw new StasisError(`${what}: the saved process (uid ${creds.uid[3]}) could not open ${v.file!.path} ${mode === O_RDWR ? 'for writing' : 'for reading'}; refusing to map it with this restarter's rights`);
    }
  }
}

function vmaLabel(v: { start: number; end: number }, path: string): string {
  return `vma ${v.start.toString(16)}-${v.end.toString(16)}${path ? ` (${path})` : ''}`;
}

/** Turn /proc VMAs into image VMAs, refusing what cannot be restored. */
export function classifyVmas(vmas: Vma[], pid = 0, memfds?: MemfdTable): ImageVma[] {
  const out: ImageVma[] = [];
  for (const v of vmas) {
    const label = vmaLabel(v, v.path);
    for (const f of v.vmFlags) {
      if (REFUSED_FLAGS[f] && !SPECIAL[v.path]) throw new UnsupportedError(`${label}: ${REFUSED_FLAGS[f]} is not supported yet`);
    }
    const prot = `${v.prot.read ? 'r' : '-'}${v.prot.write ? 'w' : '-'}${v.prot.exec ? 'x' : '-'}`;
    const base = { start: v.start, end: v.end, prot, shared: v.shared, offset: v.offset, vmFlags: v.vmFlags, savedPages: 0 };
    if (SPECIAL[v.path]) {
      out.push({ ...base, kind: SPECIAL[v.path], name: v.path });
    } else if (v.path.startsWith('[') || v.path === '') {
      if (v.path && v.path !== '[heap]' && v.path !== '[stack]' && !v.path.startsWith('[anon:')) {
        throw new UnsupportedError(`${label}: special mapping ${v.path} is not supported yet`);
      }
      if (v.shared) throw new UnsupportedError(`${label}: shared anonymous mapping without a backing object is not supported yet`);
      out.push({ ...base, kind: 'anon', name: v.path });
    } else if (v.shared && v.path === '/dev/zero (deleted)') {
      out.push({ ...base, kind: 'shmem', name: '', shmem: { ino: v.inode } });
    } else if (memfdName(v.path) !== null && memfds) {
      if (!v.shared) throw new UnsupportedError(`${label}: private mapping of a memfd is not supported yet`);
      const range = `${v.start.toString(16)}-${v.end.toString(16)}`;
      out.push({ ...base, kind: 'shmem', name: v.path, memfd: memfds.note(v.inode, memfdName(v.path)!, `/proc/${pid}/map_files/${range}`) });
    } else if (v.path.startsWith('/SYSV')) {
      throw new UnsupportedError(`${label}: System V shared memory is not supported yet`);
    } else if (v.deleted) {
      throw new UnsupportedError(`${label}: mapping of a deleted file is not supported yet`);
    } else {
      let file: FileIdentity;
      try {
        file = fileIdentity(v.path);
      } catch (e) {
        throw new StasisError(`${label}: cannot stat the mapped file (${(e as NodeJS.ErrnoException).code})`);
      }
      if (file.ino !== v.inode) throw new StasisError(`${label}: the file at ${v.path} is no longer the mapped one (inode ${v.inode} vs ${file.ino})`);
      out.push({ ...base, kind: 'file', name: '', file });
    }
  }
  return out;
}

/**
 * Shared anonymous memory seen in several processes of a tree is one object:
 * the first process to map it keeps it, the later ones point at it.
 */
export function linkSharedMemory(procs: Array<{ pid: number; vmas: ImageVma[] }>): void {
  const owners = new Map<number, { pid: number; start: number; end: number }>();
  for (const p of procs) {
    for (const v of p.vmas) {
      if (!v.shmem) continue;
      const owner = owners.get(v.shmem.ino);
      if (!owner) owners.set(v.shmem.ino, { pid: p.pid, start: v.start, end: v.end });
      else if (owner.pid !== p.pid) v.shmem.from = owner;
    }
  }
}

/**
 * Physical pages already saved, by page frame number: a later process that
 * still shares one copy-on-write with an ancestor, at the same address,
 * does not save it again.
 */
export class SavedFrames {
  private readonly frames = new Map<number, { pid: number; addr: number }>();

  /** The ancestor this page can be taken from, or undefined (and remember it). */
  sharedWith(pfn: number, pid: number, addr: number, ancestors: Set<number>): number | undefined {
    const seen = this.frames.get(pfn);
    if (seen && seen.addr === addr && ancestors.has(seen.pid)) return seen.pid;
    if (!seen) this.frames.set(pfn, { pid, addr });
    return undefined;
  }
}

function addRun(runs: PageRun[], addr: number): void {
  const last = runs[runs.length - 1];
  if (last && last.addr + last.len === addr) last.len += PAGE_SIZE;
  else runs.push({ addr, len: PAGE_SIZE });
}

/**
 * Pages that exist only in this process's memory, as address runs. With
 * `frames`, pages still shared copy-on-write with an ancestor are listed
 * in v.inherited instead (saved once, with that ancestor).
 */
export function pagesToSave(pid: number, v: ImageVma, frames?: SavedFrames, ancestors: Set<number> = new Set()): PageRun[] {
  if (v.kind === 'vdso' || v.kind === 'vvar' || v.kind === 'vvar_vclock') return [];
  if (v.kind === 'file' && v.shared) return []; // the file holds them
  if (v.shmem?.from) return []; // saved with the process that maps it first
  if (v.memfd !== undefined) return []; // the Memfds record holds the file
  const pm = readPagemap(pid, v.start, v.end);
  // The entries as 32-bit halves: no BigInt work per page (a 1 GiB VMA has
  // 262144 of them). Bits 63/62/61 (present/swapped/file) are in the high half.
  const halves = new Uint32Array(pm.buffer, pm.byteOffset, pm.length * 2);
  const privateFile = v.kind === 'file';
  const runs: PageRun[] = [];
  for (let i = 0; i < pm.length; i++) {
    const hi = halves[2 * i + 1];
    const present = hi >>> 31;
    const swapped = (hi >>> 30) & 1;
    const filePage = (hi >>> 29) & 1;
    // In a private file mapping only copied-on-write (anonymous) pages are
    // ours; file pages come back from the file.
    const keep = swapped === 1 || (present === 1 && !(privateFile && filePage === 1));
    if (!keep) continue;
    const addr = v.start + i * PAGE_SIZE;
    const pfn = present && frames ? (hi & 0x7fffff) * 0x100000000 + halves[2 * i] : 0;
    const from = frames && pfn ? frames.sharedWith(pfn, pid, addr, ancestors) : undefined;
    if (from === undefined) {
      addRun(runs, addr);
      continue;
    }
    v.inherited ??= [];
    let group = v.inherited.find((g) => g.from === from);
    if (!group) v.inherited.push(group = { from, runs: [] });
    addRun(group.runs, addr);
  }
  v.savedPages = runs.reduce((s, r) => s + r.len / PAGE_SIZE, 0);
  return runs;
}

/** Where each saved page of a process is in the image, to copy inherited pages from. */
export class PageIndex {
  private readonly runs: Array<{ addr: number; len: number; data: Buffer; off: number }> = [];

  constructor(records: Array<{ runs: PageRun[]; data: Buffer }>) {
    for (const r of records) {
      let off = 0;
      for (const run of r.runs) {
        this.runs.push({ addr: run.addr, len: run.len, data: r.data, off });
        off += run.len;
      }
    }
    this.runs.sort((a, b) => a.addr - b.addr);
  }

  /** The bytes of [addr, addr+len), which must all have been saved. */
  copy(addr: number, len: number, into: Buffer, at: number, where: string): void {
    while (len > 0) {
      let lo = 0, hi = this.runs.length - 1, hit = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        const r = this.runs[mid];
        if (addr < r.addr) hi = mid - 1;
        else if (addr >= r.addr + r.len) lo = mid + 1;
        else { hit = mid; break; }
      }
      if (hit < 0) throw new ImageError(`${where}: inherited page 0x${addr.toString(16)} is not in the image`);
      const r = this.runs[hit];
      const n = Math.min(len, r.addr + r.len - addr);
      r.data.copy(into, at, r.off + (addr - r.addr), r.off + (addr - r.addr) + n);
      addr += n;
      at += n;
      len -= n;
    }
  }
}

const RECORD_BYTES = 16 << 20;

interface PageBatch { runs: PageRun[]; bytes: number; slow: boolean }

/** Split the runs into Pages records of at most RECORD_BYTES; unreadable VMAs apart. */
function batchRuns(vmas: ImageVma[], runsByVma: PageRun[][]): PageBatch[] {
  const out: PageBatch[] = [];
  let cur: PageBatch | undefined;
  vmas.forEach((v, i) => {
    const slow = !v.prot.startsWith('r');
    for (const run of runsByVma[i]) {
      for (let off = 0; off < run.len; ) {
        if (!cur || cur.slow !== slow || cur.bytes >= RECORD_BYTES) out.push(cur = { runs: [], bytes: 0, slow });
        const len = Math.min(run.len - off, RECORD_BYTES - cur.bytes);
        cur.runs.push({ addr: run.addr + off, len });
        cur.bytes += len;
        off += len;
      }
    }
  });
  return out;
}

/**
 * Readable VMAs go through process_vm_readv in large iovecs; unreadable ones
 * (PROT_NONE after a write) through /proc/pid/mem.
 */
function readBatch(remote: Remote, b: PageBatch, into: Buffer): Buffer {
  const data = into.subarray(0, b.bytes);
  if (!b.slow) {
    remote.task.readv(data, 0, b.runs);
    return data;
  }
  let off = 0;
  for (const r of b.runs) {
    remote.task.readMem(r.addr, r.len).copy(data, off);
    off += r.len;
  }
  return data;
}

/** The same as dumpPages, all on this thread, for synchronous callers. */
export function dumpPagesSync(remote: Remote, vmas: ImageVma[], runsByVma: PageRun[][], writer: ImageWriter): number {
  const buffer = Buffer.allocUnsafe(RECORD_BYTES);
  let total = 0;
  for (const b of batchRuns(vmas, runsByVma)) {
    writer.record(RecordType.Pages, [encodePagesHeader(b.runs, remote.task.tgid), readBatch(remote, b, buffer)]);
    total += b.bytes;
  }
  return total;
}

/**
 * Read the given runs out of the task and write them as Pages records,
 * pipelined: while records are checksummed and written on worker threads,
 * the next ones are read here (ptrace's thread). Three reused buffers, warm
 * after their first record (process_vm_readv runs several times faster
 * into touched memory).
 */
export async function dumpPages(remote: Remote, vmas: ImageVma[], runsByVma: PageRun[][], writer: ImageWriter): Promise<number> {
  const pid = remote.task.tgid;
  const buffers: Buffer[] = [];
  const busy: Array<Promise<void>> = [];
  let last: Promise<void> = Promise.resolve();
  let total = 0;
  let i = 0;
  try {
    for (const b of batchRuns(vmas, runsByVma)) {
      const slot = i++ % 3;
      await busy[slot]; // the record that used this buffer is written
      const data = readBatch(remote, b, buffers[slot] ??= Buffer.allocUnsafe(RECORD_BYTES));
      last = busy[slot] = writer.recordAsync(RecordType.Pages, [encodePagesHeader(b.runs, pid), data], last);
      total += b.bytes;
    }
  } finally {
    // Never leave a write behind on a buffer or a stream being given up.
    await Promise.allSettled(busy);
  }
  await last;
  return total;
}

function protBits(prot: string): number {
  return (prot[0] === 'r' ? PROT_READ : 0) | (prot[1] === 'w' ? PROT_WRITE : 0) | (prot[2] === 'x' ? PROT_EXEC : 0);
}

const O_RDONLY = 0, O_RDWR = 2;

/** Contents will be written into it (its own saved pages or inherited ones). */
function receivesPages(v: ImageVma): boolean {
  return v.savedPages > 0 || !!v.inherited?.length;
}

/**
 * Map every (non-special) VMA of the image at its address. Mappings that
 * will receive saved pages are made writable for now; `finishVmas` puts the
 * final protection in place once the pages are written.
 */
export function mapVmas(remote: Remote, vmas: ImageVma[], hostPid: (pid: number) => number = (p) => p, memfds?: MemfdKeeper): void {
  const wanted = vmas.filter((v) => v.kind !== 'vdso' && v.kind !== 'vvar' && v.kind !== 'vvar_vclock');
  // What each mapping is backed by: a path to open (and how), or nothing.
  const source = (v: ImageVma, label: string): { path: string; mode: number; what: string; image?: boolean } | null => {
    if (v.memfd !== undefined) {
      if (!memfds) throw new StasisError(`${label}: memfd mapping without its file`);
      return { path: memfds.pathFor(v.memfd), mode: v.vmFlags.includes('mw') ? O_RDWR : O_RDONLY, what: label };
    }
    if (v.shmem?.from) {
      // The same shmem object as an earlier process: opened through that
      // process's map_files and mapped shared again.
      const f = v.shmem.from;
      return { path: `/proc/${hostPid(f.pid)}/map_files/${f.start.toString(16)}-${f.end.toString(16)}`, mode: O_RDWR, what: `${label}: shared memory of pid ${f.pid}` };
    }
    if (v.kind === 'file') {
      // A shared mapping that may become writable needs a writable fd.
      return { path: v.file!.path, mode: v.shared && v.vmFlags.includes('mw') ? O_RDWR : O_RDONLY, what: v.file!.path, image: true };
    }
    return null;
  };
  const labels = wanted.map((v) => vmaLabel(v, v.file?.path ?? v.name));
  wanted.forEach((v, i) => {
    // Made writable to receive pages: only memory of the process's own.
    if (receivesPages(v) && !savesPages(v)) throw new ImageError(`${labels[i]}: a ${v.shared ? 'shared' : 'private'} ${v.kind} mapping never receives saved pages`);
  });
  const sources = wanted.map((v, i) => source(v, labels[i]));
  // Three batches: open every backing file once, map everything, close.
  remote.reset();
  const keys = [...new Set(sources.filter((x) => x).map((x) => `${x!.mode}:${x!.path}`))];
  const opens = keys.map((k) => {
    const x = sources.find((y) => y && `${y.mode}:${y.path}` === k)!;
    // The image's files without following links; stasis's own /proc paths (memfd, shared memory) as they are.
    return x.image
      ? { name: 'openat2', nr: SYS.openat2, args: openNoSymlinks(remote, x.path, x.mode), where: x.what }
      : { name: 'openat', nr: SYS.openat, args: [AT_FDCWD, remote.putString(x.path), x.mode, 0], where: x.what };
  });
  const fdList = remote.batch(opens);
  const fds = new Map(keys.map((k, i) => [k, fdList[i]]));
  try {
    const maps = wanted.map((v, i) => {
      let prot = protBits(v.prot);
      if (receivesPages(v)) prot |= PROT_WRITE;
      const src = sources[i];
      let flags = MAP_FIXED | (v.shared ? MAP_SHARED : MAP_PRIVATE) | (src ? 0 : MAP_ANONYMOUS);
      if (v.vmFlags.includes('gd')) flags |= MAP_GROWSDOWN;
      const fd = src ? fds.get(`${src.mode}:${src.path}`)! : -1;
      return { name: 'mmap', nr: SYS.mmap, args: [v.start, v.end - v.start, prot, flags, fd, src ? v.offset : 0], where: labels[i] };
    });
    remote.batch(maps).forEach((got, i) => {
      if (got !== wanted[i].start) throw new StasisError(`${labels[i]}: mmap placed it at 0x${got.toString(16)}`);
    });
  } finally {
    remote.batch([...fds.values()].map((fd) => ({ name: 'close', nr: SYS.close, args: [fd] })));
  }
}

/**
 * Write saved page runs into the task (the VMAs are mapped writable).
 * Defence in depth besides the image checks: a run must lie in one mapping
 * that a checkpoint saves pages for, never in a shared file mapping,
 * whose pages would land in the file.
 */
export function writePages(remote: Remote, vmas: ImageVma[], runs: PageRun[], data: Buffer): void {
  for (const r of runs) {
    const v = vmas[vmaAt(vmas, r.addr)] as ImageVma | undefined; // sorted: checked at load
    if (!v || r.addr + r.len > v.end || !savesPages(v)) {
      throw new ImageError(`pages at 0x${r.addr.toString(16)}-0x${(r.addr + r.len).toString(16)}: ${v ? `aimed at a ${v.shared ? 'shared' : 'private'} ${v.kind} mapping, which never has saved pages` : 'outside every mapping'}`);
    }
  }
  remote.task.writev(data, 0, runs);
}

/** Final protections and VmFlags once the contents are in place. */
export function finishVmas(remote: Remote, vmas: ImageVma[]): void {
  const calls: BatchCall[] = [];
  for (const v of vmas) {
    if (v.kind === 'vdso' || v.kind === 'vvar' || v.kind === 'vvar_vclock') continue;
    const label = vmaLabel(v, v.file?.path ?? v.name);
    const len = v.end - v.start;
    if (receivesPages(v) && v.prot[1] !== 'w') calls.push({ name: 'mprotect', nr: SYS.mprotect, args: [v.start, len, protBits(v.prot)], where: label });
    for (const f of v.vmFlags) {
      const advice = MADVISE_FOR_FLAG[f];
      if (advice !== undefined) calls.push({ name: 'madvise', nr: SYS.madvise, args: [v.start, len, advice], where: `${label}, flag ${f}` });
    }
    if (v.vmFlags.includes('lo')) calls.push({ name: 'mlock2', nr: SYS.mlock2, args: [v.start, len, v.vmFlags.includes('lf') ? 1 : 0], where: label });
  }
  remote.batch(calls);
}

/** A free address range of `size` bytes outside every listed range. */
export function findGap(size: number, taken: Array<{ start: number; end: number }>, from = 0x10000000): number {
  const sorted = [...taken].sort((a, b) => a.start - b.start);
  let cand = from;
  for (const r of sorted) {
    if (r.end <= cand) continue;
    if (r.start >= cand + size) break;
    cand = Math.ceil(r.end / PAGE_SIZE) * PAGE_SIZE;
  }
  if (cand + size > 0x7fffffff0000) throw new StasisError(`no free address range of ${size} bytes for stasis's own pages`);
  return cand;
}

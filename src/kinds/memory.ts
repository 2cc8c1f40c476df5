// Memory: VMAs and their page contents. Dump classifies every mapping,
// refuses kinds it cannot restore, finds the pages that exist only in memory
// (pagemap) and streams them; restore maps every VMA at its address and
// writes the pages back.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { Vma, readPagemap } from '../proc';
import type { FileIdentity, ImageVma, ImageCreds } from '../image/schema';
import { savesPages, vmaAt } from '../image/vma';
import { mayOpen, openNoSymlinks } from './regular';
import { ImageWriter, RecordType, encodePagesHeader, PageRun } from '../image/stream';
import { Remote, BatchCall, PROT_READ, PROT_WRITE, PROT_EXEC, MAP_PRIVATE, MAP_SHARED, MAP_ANONYMOUS, MAP_FIXED, MAP_GROWSDOWN, MAP_NORESERVE, AT_FDCWD } from '../ptrace/remote';
import { SYS, PAGE_SIZE } from '../sys/x86';
import { MemfdTable, MemfdKeeper, memfdName, dataRanges } from './memfd';
import type { GhostTable, GhostKeeper } from './ghost';
import { StasisError, UnsupportedError, ImageError, SyscallError } from '../sys/errno';
import { refuseMapping } from './refused';
import { syscall } from '../sys/libc';
import { PagemapRead } from '../sys/background-read';
import { takeFd, closeFd } from '../sys/sockopt';
import { copyPages, CopyJob, COPY_PIECE } from '../sys/page-copy';
import { SysvShmTable, attachSegments } from './sysvshm';

/** Page runs of a VMA that are guard regions (MADV_GUARD_INSTALL): nothing to read, installed again. */
export const GuardRuns = lazySchema(() => z.array(z.object({
  addr: z.number().int().min(0).max(2 ** 47).multipleOf(4096),
  len: z.number().int().min(4096).max(2 ** 47).multipleOf(4096),
})).max(1 << 20));
export type GuardRuns = z.infer<typeof GuardRuns>;

/** Size in bytes of a shared anonymous object (absent in older images: the VMA's end). */
export const ShmemSize = lazySchema(() => z.number().int().min(0).max(2 ** 47));
export type ShmemSize = z.infer<typeof ShmemSize>;

const SPECIAL: Record<string, ImageVma['kind']> = { '[vdso]': 'vdso', '[vvar]': 'vvar', '[vvar_vclock]': 'vvar_vclock' };

/**
 * Every VmFlags mnemonic of this kernel (fs/proc/task_mmu.c) and what
 * happens to it: restored by how the VMA is mapped, restored by a call
 * after mapping, irrelevant, or refused by name. A mnemonic not listed here
 * is refused: it is state stasis does not know.
 */
const MAPPED_FLAGS = new Set([
  'rd', 'wr', 'ex', 'sh', // prot and MAP_SHARED
  'mr', 'mw', 'me', 'ms', // what the mapping may become: from the backing file's open mode and MAP_SHARED
  'gd', // MAP_GROWSDOWN
  'ac', // VM_ACCOUNT: mapped writable (then mprotect'ed) when it was
  'nr', // MAP_NORESERVE
  'dp', // MAP_DROPPABLE
]);

/** VmFlags restored with madvise right after mapping, before any page is written. */
const MADVISE_FOR_FLAG: Record<string, number> = {
  dd: 16, // MADV_DONTDUMP
  dc: 10, // MADV_DONTFORK
  wf: 18, // MADV_WIPEONFORK
  hg: 14, // MADV_HUGEPAGE
  nh: 15, // MADV_NOHUGEPAGE
  mg: 12, // MADV_MERGEABLE
  sr: 2, // MADV_SEQUENTIAL
  rr: 1, // MADV_RANDOM
};

/** Restored by calls of their own: gu (mapVmas, finishVmas: guard pages), lo lf sl (lockVmas: mlock2, mseal). */
const CALL_FLAGS = new Set(['lo', 'lf', 'gu', 'sl']);

/** No behaviour a program can see: soft-dirty only feeds /proc's clear_refs tracking. */
const IRRELEVANT_FLAGS = new Set(['sd']);

/** VmFlags that mean state we cannot recreate: refused by name. */
const REFUSED_FLAGS: Record<string, string> = {
  io: 'a device (VM_IO) mapping',
  pf: 'a raw PFN mapping',
  mm: 'a mixed PFN (device or DAX) mapping',
  de: 'a driver mapping that cannot be expanded (VM_DONTEXPAND)',
  ar: 'a PAT-reserved device mapping',
  sf: 'a synchronous DAX (MAP_SYNC) mapping',
  ht: 'a hugetlbfs mapping',
  um: 'a userfaultfd-registered range',
  uw: 'a userfaultfd write-protected range',
  ui: 'a userfaultfd minor-fault range',
  ss: 'a shadow stack',
  bt: 'a branch-target-protected range',
  mt: 'a memory-tagged range',
  nl: 'a nonlinear mapping',
};

const MADV_GUARD_INSTALL = 102, MADV_GUARD_REMOVE = 103;
const MAP_DROPPABLE = 0x08;
const MLOCK_ONFAULT = 1;
const SYS_MSEAL = 462;
const MADV_UNMERGEABLE = 13, MADV_DONTNEED = 4, MADV_POPULATE_WRITE = 23;

/** Refuse a VMA whose flags or protection key stasis cannot give back. */
function refuseFlags(v: Vma, label: string, pid: number): void {
  const who = pid ? `pid ${pid}: ` : '';
  for (const f of v.vmFlags) {
    if (MAPPED_FLAGS.has(f) || MADVISE_FOR_FLAG[f] !== undefined || CALL_FLAGS.has(f) || IRRELEVANT_FLAGS.has(f)) continue;
    const what = REFUSED_FLAGS[f] ?? `a range with VmFlag "${f}" (unknown to stasis)`;
    throw new UnsupportedError(`${who}${label}: ${what} is not supported; unmap it (or undo what set it) before the checkpoint`);
  }
  if (v.protectionKey) {
    throw new UnsupportedError(`${who}${label}: memory protection key ${v.protectionKey} is not supported; pkey_mprotect it back to key 0 before the checkpoint`);
  }
}

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
export function checkMappedFiles(vmas: ImageVma[], creds: ImageCreds, pid: number, checked = new Set<string>()): void {
  // A library is mapped four or five times, by every process of a tree:
  // each file, way of opening it and credentials checked once (`checked`).
  const who = JSON.stringify([creds.uid[3], creds.gid[3], creds.groups]);
  for (const v of vmas) {
    if (v.kind !== 'file') continue;
    const what = `pid ${pid}: mapping at 0x${v.start.toString(16)}`;
    const mode = v.shared && v.vmFlags.includes('mw') ? O_RDWR : O_RDONLY;
    const key = JSON.stringify([v.file, mode]) + who;
    if (checked.has(key)) continue;
    checked.add(key);
    checkFileIdentity(v.file!, what);
    const st = fs.statSync(v.file!.path);
    // A private mapping of a program the process may only execute came from exec(): fine.
    const execOnly = mode === O_RDONLY && (st.mode & (st.uid === creds.uid[3] ? 0o100 : st.gid === creds.gid[3] || creds.groups.includes(st.gid) ? 0o010 : 0o001)) !== 0;
    if (!execOnly && !mayOpen(st, mode, creds)) {
      throw new StasisError(`${what}: the saved process (uid ${creds.uid[3]}) could not open ${v.file!.path} ${mode === O_RDWR ? 'for writing' : 'for reading'}; refusing to map it with this restarter's rights`);
    }
  }
}

function mapFilesPath(pid: number, v: { start: number; end: number }): string {
  return `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
}

/** Use the object behind a shared mapping, opened through /proc/PID/map_files. */
function openMapFiles<T>(pid: number, v: { start: number; end: number }, label: string, use: (fd: number) => T): T {
  let fd: number;
  try {
    fd = fs.openSync(mapFilesPath(pid, v), 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new StasisError(`pid ${pid}: ${label}: cannot open its shared memory object through map_files (${code})${code === 'EPERM' ? '; that needs CAP_CHECKPOINT_RESTORE: checkpoint as root' : ''}`);
  }
  try {
    return use(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function vmaLabel(v: { start: number; end: number }, path: string): string {
  return `vma ${v.start.toString(16)}-${v.end.toString(16)}${path ? ` (${path})` : ''}`;
}

/** Turn /proc VMAs into image VMAs, refusing what cannot be restored. */
export function classifyVmas(vmas: Vma[], pid = 0, memfds?: MemfdTable, sysv?: SysvShmTable, ghosts?: GhostTable): ImageVma[] {
  const out: ImageVma[] = [];
  const identities = new Map<string, FileIdentity>();
  for (const v of vmas) {
    const label = vmaLabel(v, v.path);
    refuseMapping({ path: v.path, label, pid, shared: v.shared });
    if (!SPECIAL[v.path]) refuseFlags(v, label, pid);
    const prot = `${v.prot.read ? 'r' : '-'}${v.prot.write ? 'w' : '-'}${v.prot.exec ? 'x' : '-'}`;
    const base = { start: v.start, end: v.end, prot, shared: v.shared, offset: v.offset, vmFlags: v.vmFlags, savedPages: 0 };
    if (SPECIAL[v.path]) {
      out.push({ ...base, kind: SPECIAL[v.path], name: v.path });
    } else if (v.path.startsWith('[') || v.path === '') {
      if (v.path && v.path !== '[heap]' && v.path !== '[stack]') {
        throw new UnsupportedError(`${label}: special mapping ${v.path} is not supported yet`);
      }
      if (v.shared) throw new UnsupportedError(`${label}: shared anonymous mapping without a backing object is not supported yet`);
      out.push({ ...base, kind: 'anon', name: v.path });
    } else if (v.shared && v.path === '/dev/zero (deleted)') {
      // The object may be larger than this VMA (split, partly unmapped): its size.
      const size = pid ? openMapFiles(pid, v, label, (fd) => fs.fstatSync(fd).size) : v.offset + v.end - v.start;
      out.push({ ...base, kind: 'shmem', name: '', shmem: { ino: v.inode, size } });
    } else if (memfdName(v.path) !== null && memfds) {
      const range = `${v.start.toString(16)}-${v.end.toString(16)}`;
      out.push({ ...base, kind: 'shmem', name: v.path, memfd: memfds.note(v.inode, memfdName(v.path)!, `/proc/${pid}/map_files/${range}`) });
    } else if (v.path.startsWith('/SYSV') && v.deleted && v.shared && sysv) {
      // A System V segment: its inode number is its id; contents in the Objects record.
      out.push({ ...base, kind: 'shmem', name: v.path, sysv: v.inode });
    } else if (v.path.startsWith('/SYSV')) {
      throw new UnsupportedError(`${label}: System V shared memory is not supported yet`);
    } else if (v.deleted && (!ghosts || !v.path.startsWith('/') || v.path === '/[aio] (deleted)')) {
      throw new UnsupportedError(`${label}: mapping of a deleted file is not supported yet`);
    } else if (v.deleted && !ghosts!.linkedName(v)) {
      // Shared or private: the ghosts table carries the file, Pages the private copies.
      out.push({ ...base, kind: 'ghost', name: v.path, ghost: ghosts!.noteMapping(pid, v, label) });
    } else {
      // A file; or one whose mapped name was removed while another name in
      // the same directory stays (glibc's sem_open maps its temporary name):
      // mapped again by that name.
      const at = v.deleted ? ghosts!.linkedName(v)! : v.path;
      // A library is mapped four or five times: stat it once.
      let file = identities.get(at);
      try {
        file ??= fileIdentity(at);
      } catch (e) {
        throw new StasisError(`${label}: cannot stat the mapped file (${(e as NodeJS.ErrnoException).code})`);
      }
      identities.set(at, file);
      if (file.ino !== v.inode) throw new StasisError(`${label}: the file at ${at} is no longer the mapped one (inode ${v.inode} vs ${file.ino})`);
      out.push({ ...base, kind: 'file', name: '', file: { ...file } });
    }
  }
  sysv?.note(pid, out, (v) => vmaLabel(v, v.name));
  return out;
}

/**
 * Shared anonymous memory is one object however many VMAs map it, in one
 * process or several: the first VMA to map it makes it at restart, every
 * later one (in the same process too) points at that VMA and maps the same
 * object at its own offset.
 */
export function linkSharedMemory(procs: Array<{ pid: number; vmas: ImageVma[] }>): void {
  const owners = new Map<number, { pid: number; start: number; end: number }>();
  for (const p of procs) {
    for (const v of p.vmas) {
      if (!v.shmem || v.memfd !== undefined) continue;
      const owner = owners.get(v.shmem.ino);
      if (!owner) owners.set(v.shmem.ino, { pid: p.pid, start: v.start, end: v.end });
      else v.shmem.from = owner;
    }
  }
}

/**
 * The pages of shared anonymous objects, each saved once, through the first
 * VMA that maps it. Which pages exist is asked of the object itself
 * (SEEK_DATA through map_files): a page written by one process is in no
 * page table of another, and pagemap would miss it there.
 */
export class ShmemPages {
  private readonly objects = new Map<number, { data: Array<[number, number]>; claimed: Set<number> }>();

  /** Whether the page at object offset `off` holds data not claimed yet; claims it. */
  claim(pid: number, v: ImageVma, off: number): boolean {
    const ino = v.shmem!.ino;
    let o = this.objects.get(ino);
    if (!o) {
      o = { data: openMapFiles(pid, v, vmaLabel(v, v.name), (fd) => dataRanges(fd, fs.fstatSync(fd).size)), claimed: new Set() };
      this.objects.set(ino, o);
    }
    if (o.claimed.has(off) || !o.data.some(([a, b]) => a <= off && off < b)) return false;
    o.claimed.add(off);
    return true;
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

let zeroFrame: number | undefined;

/**
 * The frame of the kernel's shared zero page, which backs anonymous memory
 * that was only read: found by read-faulting a fresh page of our own.
 * Such pages hold no data; saving them would make them real, locked and
 * counted in Rss after restart.
 */
function zeroPfn(): number {
  if (zeroFrame !== undefined) return zeroFrame;
  const addr = syscall(SYS.mmap, 'mmap', 0, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  try {
    const fd = fs.openSync('/proc/self/mem', 'r');
    try { fs.readSync(fd, Buffer.alloc(1), 0, 1, addr); } finally { fs.closeSync(fd); }
    const e = readPagemap('self', addr, addr + PAGE_SIZE)[0];
    zeroFrame = e >> 63n ? Number(e & ((1n << 55n) - 1n)) : 0;
  } finally {
    syscall(SYS.munmap, 'munmap', addr, PAGE_SIZE);
  }
  return zeroFrame;
}

/** A run of pages to read; `slow` ones go through /proc/pid/mem (see readBatch). */
export interface ReadRun extends PageRun { slow?: boolean }

function addRun(runs: ReadRun[], addr: number, slow = false, len = PAGE_SIZE): void {
  const last = runs[runs.length - 1];
  if (last && last.addr + last.len === addr && !!last.slow === slow) last.len += len;
  else runs.push(slow ? { addr, len, slow } : { addr, len });
}

// A page of this process alone, the common case: present (bit 63), not
// swapped (62), not a file page (61), mapped once (56). No ancestor can
// share it and it is not the zero page (never mapped "exclusively").
// Both as int32, as `&` gives them.
const OWN_MASK = 0xe1000000 | 0, OWN_PAGE = 0x81000000 | 0;
/** A run of pagemap entries saying nothing is there (not present, not swapped, no marker): all zero. */
const ZERO_RUN = 512;
const NO_ENTRIES = Buffer.alloc(ZERO_RUN * 8);

/**
 * Pages that exist only in this process's memory, as address runs. With
 * `frames`, pages still shared copy-on-write with an ancestor are listed
 * in v.inherited instead (saved once, with that ancestor). Guard regions
 * are listed in v.guards: they hold no data and fault on any access.
 */
export interface PagesToSaveOptions {
  /** pages saved so far in the tree, and this process's ancestors in it */
  frames?: SavedFrames;
  ancestors?: Set<number>;
  shmem?: ShmemPages;
  /** the VMA's pagemap, read ahead (readPagemapsAhead) */
  ahead?: PagemapRead;
  /** the process's pagemap, open (withPagemap) */
  pagemapFd?: number;
}

export function pagesToSave(pid: number, v: ImageVma, opts: PagesToSaveOptions = {}): ReadRun[] {
  const { frames, ancestors = new Set<number>(), shmem = new ShmemPages(), ahead } = opts;
  if (!hasPrivatePages(v)) return [];
  if (v.shmem) {
    // By object offset, whether this process ever touched the page or not.
    const runs: ReadRun[] = [];
    for (let addr = v.start; addr < v.end; addr += PAGE_SIZE) {
      if (shmem.claim(pid, v, v.offset + addr - v.start)) addRun(runs, addr);
    }
    v.savedPages = runs.reduce((n, r) => n + r.len / PAGE_SIZE, 0);
    return runs;
  }
  const read = ahead?.result();
  const pm = read?.entries ?? readPagemap(pid, v.start, v.end, opts.pagemapFd);
  // Stretches of own pages and of nothing, found on PagemapRead's thread.
  const stretches = read?.stretches;
  let next = 0;
  // The entries as 32-bit halves: no BigInt work per page (a 1 GiB VMA has
  // 262144 of them). Bits 63..56 are in the high half.
  const halves = new Uint32Array(pm.buffer, pm.byteOffset, pm.length * 2);
  const privateFile = v.kind === 'file' || v.kind === 'ghost';
  const runs: ReadRun[] = [];
  const guards: PageRun[] = [];
  const zero = zeroPfn();
  const bytes = Buffer.from(pm.buffer, pm.byteOffset, pm.byteLength);
  for (let i = 0; i < pm.length; i++) {
    // 512 entries of nothing at once (one native compare): a thread's
    // stack or a reserved heap is mostly that, and entry by entry the
    // interpreter took ~13 ms for the stacks of 100 threads.
    if (!stretches && (i & (ZERO_RUN - 1)) === 0 && i + ZERO_RUN <= pm.length && bytes.compare(NO_ENTRIES, 0, NO_ENTRIES.length, i * 8, i * 8 + NO_ENTRIES.length) === 0) {
      i += ZERO_RUN - 1;
      continue;
    }
    if (stretches && next < stretches.length && (stretches[next] & 0x7fffffff) === i) {
      const end = stretches[next + 1];
      if (!(stretches[next] & 0x80000000)) addRun(runs, v.start + i * PAGE_SIZE, false, (end - i) * PAGE_SIZE);
      next += 2;
      i = end - 1;
      continue;
    }
    const hi = halves[2 * i + 1];
    if (hi === 0) continue; // nothing there (bits 63..32 clear: not present, not swapped, no marker)
    if (!stretches && (hi & OWN_MASK) === OWN_PAGE) {
      // A whole stretch at once: a per-page pass, run by the interpreter
      // in a fresh command, took ~13 ms for 1 GiB.
      let j = i + 1;
      while (j < pm.length && (halves[2 * j + 1] & OWN_MASK) === OWN_PAGE) j++;
      addRun(runs, v.start + i * PAGE_SIZE, false, (j - i) * PAGE_SIZE);
      i = j - 1;
      continue;
    }
    const present = hi >>> 31;
    const swapped = (hi >>> 30) & 1;
    const filePage = (hi >>> 29) & 1;
    const exclusive = (hi >>> 24) & 1;
    const addr = v.start + i * PAGE_SIZE;
    // A guard region is a swap-like marker entry (bit 58): reading it faults.
    if (!present && (hi >>> 26) & 1) {
      addRun(guards, addr);
      continue;
    }
    // In a private file mapping only copied-on-write (anonymous) pages are
    // ours; file pages come back from the file.
    const keep = swapped === 1 || (present === 1 && !(privateFile && filePage === 1));
    if (!keep) continue;
    // process_vm_readv pins pages, and pinning a page shared copy-on-write
    // makes the kernel give the reader's task its own copy: a checkpoint
    // would silently undo the sharing in the live tree. Such pages (mapped
    // more than once, or swapped) are read through /proc/pid/mem instead.
    const pfn = present ? (hi & 0x7fffff) * 0x100000000 + halves[2 * i] : 0;
    if (pfn !== 0 && pfn === zero && !privateFile) continue; // never written: reads as zeros again
    const slow = present === 0 || exclusive === 0;
    const from = frames && pfn ? frames.sharedWith(pfn, pid, addr, ancestors) : undefined;
    if (from === undefined) {
      addRun(runs, addr, slow);
      continue;
    }
    v.inherited ??= [];
    let group = v.inherited.find((g) => g.from === from);
    if (!group) v.inherited.push(group = { from, runs: [] });
    addRun(group.runs, addr);
  }
  if (guards.length) v.guards = guards;
  v.savedPages = runs.reduce((s, r) => s + r.len / PAGE_SIZE, 0);
  return runs;
}

/** Whether the VMA's pages are saved from the process's memory (not from a file or another record). */
function hasPrivatePages(v: ImageVma): boolean {
  if (v.kind === 'vdso' || v.kind === 'vvar' || v.kind === 'vvar_vclock') return false;
  if ((v.kind === 'file' || v.kind === 'ghost') && v.shared) return false; // the file holds them
  if (v.memfd !== undefined) return false; // the Memfds record holds the file
  if (v.sysv !== undefined) return false; // the Objects record holds the segment
  return true;
}

/** From this size a mapping's pagemap is read ahead (a thread costs ~50 µs; 8 MiB of entries take ~40 µs to read). */
const AHEAD_FROM = 8 << 20;
/** Threads at most, for the largest mappings of the tree, and the entries they may hold at once (those of 32 GiB). */
const AHEAD_MAX = 8, AHEAD_BYTES = 64 << 20;

/**
 * The pagemaps of the tree's largest private mappings, read on native
 * threads while the processes are dumped (the tree is frozen, and what the
 * dump injects maps its own scratch area, not these), for pagesToSave.
 * Each must be settled if pagesToSave is not called for it.
 */
export function readPagemapsAhead(procs: Array<{ pid: number; vmas: ImageVma[] }>): Map<ImageVma, PagemapRead> {
  const large = procs.flatMap((p) => p.vmas.filter((v) => hasPrivatePages(v) && !v.shmem && v.end - v.start >= AHEAD_FROM).map((v) => ({ pid: p.pid, v })));
  large.sort((a, b) => (b.v.end - b.v.start) - (a.v.end - a.v.start));
  const ahead = new Map<ImageVma, PagemapRead>();
  let bytes = 0;
  for (const { pid, v } of large) {
    if (ahead.size === AHEAD_MAX) break;
    const entries = (v.end - v.start) / PAGE_SIZE * 8;
    if (bytes + entries > AHEAD_BYTES) continue; // read when its turn comes, as a small one
    bytes += entries;
    ahead.set(v, new PagemapRead(pid, v.start, v.end));
  }
  return ahead;
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

// 4 MiB: each record's pages are read, checksummed and written while they
// are still in this core's cache, and the three buffers are few pages for a
// cold process to fault in. A cold 1 GiB checkpoint to /dev/shm took
// 1.2-2.2 s with 4 MiB records against 2.0-2.7 s with 16 MiB (bench/results.md).
const RECORD_BYTES = 4 << 20;

interface PageBatch { runs: PageRun[]; bytes: number; slow: boolean }

/** Split the runs into Pages records of at most RECORD_BYTES; runs read the slow way apart. */
function batchRuns(vmas: ImageVma[], runsByVma: ReadRun[][]): PageBatch[] {
  const out: PageBatch[] = [];
  let cur: PageBatch | undefined;
  vmas.forEach((v, i) => {
    for (const run of runsByVma[i]) {
      const slow = !v.prot.startsWith('r') || !!run.slow;
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
 * (PROT_NONE after a write) and pages shared copy-on-write through
 * /proc/pid/mem, which neither needs read permission nor unshares.
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

/**
 * The buffers pages are read into, made once per checkpoint and reused for
 * every process (three for the pipeline): allocated per process, a tree of
 * 1,000 processes made and faulted in 48 GB of buffers.
 */
export class PageBuffers {
  private readonly buffers: Buffer[] = [];

  get(slot: number): Buffer {
    return this.buffers[slot] ??= Buffer.allocUnsafe(RECORD_BYTES);
  }
}

/** The same as dumpPages, all on this thread, for synchronous callers. */
export function dumpPagesSync(remote: Remote, vmas: ImageVma[], runsByVma: ReadRun[][], writer: ImageWriter, buffers = new PageBuffers()): number {
  let total = 0;
  for (const b of batchRuns(vmas, runsByVma)) {
    writer.record(RecordType.Pages, [encodePagesHeader(b.runs, remote.task.tgid), readBatch(remote, b, buffers.get(0))]);
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
export async function dumpPages(remote: Remote, vmas: ImageVma[], runsByVma: ReadRun[][], writer: ImageWriter, buffers = new PageBuffers()): Promise<number> {
  const pid = remote.task.tgid;
  const busy: Array<Promise<void>> = [];
  let last: Promise<void> = Promise.resolve();
  let total = 0;
  let i = 0;
  try {
    for (const b of batchRuns(vmas, runsByVma)) {
      const slot = i++ % 3;
      await busy[slot]; // the record that used this buffer is written
      const data = readBatch(remote, b, buffers.get(slot));
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
 * Mapped writable first and given its final protection in finishVmas: to
 * receive pages, or to carry VM_ACCOUNT, which the kernel sets only on a
 * private mapping that was writable at some point.
 */
function mappedWritable(v: ImageVma): boolean {
  return receivesPages(v) || (!v.shared && v.vmFlags.includes('ac'));
}

/** An object this one VMA maps whole is simply mapped shared and anonymous, with no object to open. */
function mappedWhole(v: ImageVma, vmas: ImageVma[]): boolean {
  const whole = v.offset === 0 && (v.shmem!.size ?? v.end - v.start) === v.end - v.start;
  return whole && vmas.filter((w) => w.shmem?.ino === v.shmem!.ino && w.memfd === undefined).length === 1;
}

/**
 * Whether rebuilding this shared anonymous mapping opens its object through
 * /proc/PID/map_files (which needs CAP_CHECKPOINT_RESTORE in the initial
 * user namespace): every one but an object a single VMA maps whole.
 */
export function opensSharedObject(v: ImageVma, vmas: ImageVma[]): boolean {
  return v.kind === 'shmem' && v.memfd === undefined && v.sysv === undefined && (v.shmem?.from !== undefined || !mappedWhole(v, vmas));
}

/**
 * Map every (non-special) VMA of the image at its address. Mappings that
 * will receive saved pages are made writable for now; `finishVmas` puts the
 * final protection in place once the pages are written.
 */
export function mapVmas(remote: Remote, vmas: ImageVma[], hostPid: (pid: number) => number = (p) => p, memfds?: MemfdKeeper, mergeAny = false, ghosts?: GhostKeeper): void {
  const wanted = vmas.filter((v) => v.kind !== 'vdso' && v.kind !== 'vvar' && v.kind !== 'vvar_vclock' && v.sysv === undefined);
  // System V attachments: attached (shmat) after the mappings, advised with them.
  const sysv = vmas.filter((v) => v.sysv !== undefined);
  const advised = [...wanted, ...sysv];
  const label = (v: ImageVma) => vmaLabel(v, v.file?.path ?? v.name);
  // What each mapping is backed by: a path to open (and how), or nothing.
  const source = (v: ImageVma, label: string): { path: string; mode: number; what: string; image?: boolean } | null => {
    if (v.memfd !== undefined) {
      if (!memfds) throw new StasisError(`${label}: memfd mapping without its file`);
      return { path: memfds.pathFor(v.memfd), mode: v.vmFlags.includes('mw') ? O_RDWR : O_RDONLY, what: label };
    }
    if (v.ghost !== undefined) {
      // A deleted file stasis re-created and holds: through /proc, like a memfd.
      if (!ghosts) throw new StasisError(`${label}: mapping of a deleted file without the file`);
      return { path: ghosts.pathFor(v.ghost), mode: v.shared && v.vmFlags.includes('mw') ? O_RDWR : O_RDONLY, what: label };
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
  // Shared anonymous objects this process makes: created full size in a
  // scratch mapping, opened through its map_files, then that mapping is
  // dropped (the fd keeps the object) before any VMA is placed.
  remote.reset();
  const own = new Map<number, number>();
  const mine = wanted.filter((v) => v.shmem && v.memfd === undefined && (!v.shmem.from || hostPid(v.shmem.from.pid) === remote.task.pid));
  for (const v of mine) {
    if (mappedWhole(v, mine)) continue;
    own.set(v.shmem!.ino, Math.max(own.get(v.shmem!.ino) ?? 0, v.shmem!.size ?? v.offset + v.end - v.start));
  }
  const inos = [...own.keys()];
  const sizes = inos.map((ino) => Math.ceil(own.get(ino)! / PAGE_SIZE) * PAGE_SIZE);
  const temps = remote.batch(inos.map((ino, i) => ({ name: 'mmap', nr: SYS.mmap, args: [0, sizes[i], PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0], where: `shared memory object of ${sizes[i]} bytes` })));
  const objectPath = new Map(inos.map((ino, i) => [ino, `/proc/${remote.task.pid}/map_files/${temps[i].toString(16)}-${(temps[i] + sizes[i]).toString(16)}`]));
  const sources = wanted.map((v, i) => {
    const path = v.shmem && objectPath.get(v.shmem.ino);
    return path ? { path, mode: O_RDWR, what: `${labels[i]}: shared memory` } : source(v, labels[i]);
  });
  // Two batches (each is a round trip into the task): open every backing
  // file once; then drop the objects' scratch mappings, map everything,
  // advise, and close the files.
  const keys = [...new Set(sources.filter((x) => x).map((x) => `${x!.mode}:${x!.path}`))];
  const opens = keys.map((k) => {
    const x = sources.find((y) => y && `${y.mode}:${y.path}` === k)!;
    // The image's files without following links; stasis's own /proc paths (memfd, shared memory) as they are.
    return x.image
      ? { name: 'openat2', nr: SYS.openat2, args: openNoSymlinks(remote, x.path, x.mode), where: x.what }
      : { name: 'openat', nr: SYS.openat, args: [AT_FDCWD, remote.putString(x.path), x.mode, 0], where: x.what };
  });
  const unmapTemps = inos.map((_, i) => ({ name: 'munmap', nr: SYS.munmap, args: [temps[i], sizes[i]], where: 'shared memory object' }));
  let fdList: number[];
  try {
    fdList = remote.batch(opens);
  } catch (e) {
    remote.batch(unmapTemps);
    throw e;
  }
  const fds = new Map(keys.map((k, i) => [k, fdList[i]]));
  const maps = wanted.map((v, i) => {
    let prot = protBits(v.prot);
    if (mappedWritable(v)) prot |= PROT_WRITE;
    const src = sources[i];
    const type = v.vmFlags.includes('dp') ? MAP_DROPPABLE : v.shared ? MAP_SHARED : MAP_PRIVATE;
    let flags = MAP_FIXED | type | (src ? 0 : MAP_ANONYMOUS);
    if (v.vmFlags.includes('gd')) flags |= MAP_GROWSDOWN;
    if (v.vmFlags.includes('nr')) flags |= MAP_NORESERVE; // glibc's thread arenas: no commit charge
    const fd = src ? fds.get(`${src.mode}:${src.path}`)! : -1;
    return { name: 'mmap', nr: SYS.mmap, args: [v.start, v.end - v.start, prot, flags, fd, src ? v.offset : 0], where: labels[i] };
  });
  // Advice before any page is written: a huge page policy decides how the
  // writes below are backed.
  const advice = advised.flatMap((v) => v.vmFlags.filter((f) => MADVISE_FOR_FLAG[f] !== undefined).map((f) =>
    ({ name: 'madvise', nr: SYS.madvise, args: [v.start, v.end - v.start, MADVISE_FOR_FLAG[f]], where: `${label(v)}, flag ${f}` })));
  if (mergeAny) {
    advice.push(...advised.flatMap((v) => v.vmFlags.includes('mg') ? [] : [
      { name: 'madvise', nr: SYS.madvise, args: [v.start, v.end - v.start, MADV_UNMERGEABLE], where: `${label(v)}, not mergeable` }]));
  }
  // "gu" stays on a VMA whose guard regions were all removed: one page
  // guarded and unguarded again, before any page is written.
  advice.push(...advised.flatMap((v) => v.vmFlags.includes('gu') && !v.guards?.length ? [
    { name: 'madvise', nr: SYS.madvise, args: [v.start, PAGE_SIZE, MADV_GUARD_INSTALL], where: `${label(v)}, flag gu` },
    { name: 'madvise', nr: SYS.madvise, args: [v.start, PAGE_SIZE, MADV_GUARD_REMOVE], where: `${label(v)}, flag gu` },
  ] : []));
  const closes = [...fds.values()].map((fd) => ({ name: 'close', nr: SYS.close, args: [fd] }));
  // Every call is made whatever the others gave (the files are closed); the first failure is thrown.
  // System V segments are attached after the mappings, and advised with them.
  const got = remote.batch([...unmapTemps, ...maps, ...(sysv.length ? [] : advice), ...closes]);
  maps.forEach((m, i) => {
    const at = got[unmapTemps.length + i];
    if (at !== wanted[i].start) throw new StasisError(`${labels[i]}: mmap placed it at 0x${at.toString(16)}`);
  });
  if (sysv.length) {
    attachSegments(remote, sysv, label);
    remote.batch(advice);
  }
}

/**
 * Write saved page runs into the task (the VMAs are mapped writable).
 * Defence in depth besides the image checks: a run must lie in one mapping
 * that a checkpoint saves pages for, never in a shared file mapping,
 * whose pages would land in the file.
 */
export function writePages(remote: Remote, vmas: ImageVma[], runs: PageRun[], data: Buffer): void {
  checkRuns(vmas, runs);
  remote.task.writev(data, 0, runs);
}

function checkRuns(vmas: ImageVma[], runs: PageRun[]): void {
  for (const r of runs) {
    const v = vmas[vmaAt(vmas, r.addr)] as ImageVma | undefined; // sorted: checked at load
    if (!v || r.addr + r.len > v.end || !savesPages(v)) {
      throw new ImageError(`pages at 0x${r.addr.toString(16)}-0x${(r.addr + r.len).toString(16)}: ${v ? `aimed at a ${v.shared ? 'shared' : 'private'} ${v.kind} mapping, which never has saved pages` : 'outside every mapping'}`);
    }
  }
}

/** Below this many bytes of pages a process's memory is written as it faults in. */
const POPULATE_FROM = 1 << 20;
/** Pages the task faults in while stasis copies the ones before. */
const FILL_GROUP = 64 << 20;

type PageSet = { runs: PageRun[]; data: Buffer };

/**
 * The saved pages of a process written into it: with UFFDIO_COPY into the
 * private anonymous memory that can take it (copyByUffd), the rest by
 * populateAndWrite. Small amounts are simply written. Returns the bytes
 * UFFDIO_COPY put in. `fileMapped`: the page buffers map the image file
 * (LoadedImage.fileMapped), and may be dropped once copied.
 */
export function fillPages(remote: Remote, vmas: ImageVma[], pages: PageSet[], fresh: ImageVma[], fileMapped = false): number {
  for (const pg of pages) checkRuns(vmas, pg.runs);
  const total = pages.reduce((n, pg) => n + pg.data.length, 0);
  if (total < POPULATE_FROM) {
    for (const pg of pages) remote.task.writev(pg.data, 0, pg.runs);
    return 0;
  }
  const rest = copyByUffd(remote, fresh, pages, fileMapped);
  populateAndWrite(remote, rest);
  return total - rest.reduce((n, pg) => n + pg.data.length, 0);
}

const SYS_USERFAULTFD = 323, UFFD_USER_MODE_ONLY = 1, O_CLOEXEC = 0x80000, O_NONBLOCK = 0x800;
const UFFD_API = 0xaa, UFFDIO_API = 0xc018aa3f, UFFDIO_REGISTER = 0xc020aa00, UFFDIO_UNREGISTER = 0x8010aa01;
const UFFDIO_REGISTER_MODE_MISSING = 1;
const SYS_IOCTL = 16;

/**
 * Whether the kernel backs this VMA's faults with 4 KiB pages anyway, as
 * UFFDIO_COPY does: huge pages stay where the VMA's advice and the
 * system's setting give them.
 */
function smallPagesOnly(v: ImageVma, thp: string): boolean {
  if (v.vmFlags.includes('nh')) return true;
  if (thp === 'always') return false;
  return thp === 'never' || !v.vmFlags.includes('hg');
}

function thpSetting(): string {
  try {
    return /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? 'never';
  } catch {
    return 'never';
  }
}

/**
 * A userfaultfd of the task's memory, held here (the task's own fd closed
 * at once), its API agreed; null where the kernel, or a seccomp filter, or
 * ptrace access denies any step: the pages then go the ordinary way.
 */
function openUffd(remote: Remote): number | null {
  if (process.env.STASIS_TEST_NO_UFFD) return null; // cli.test: the ordinary way, for large memory
  let fd: number;
  try {
    fd = remote.call('userfaultfd', SYS_USERFAULTFD, [O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY], 'pages by UFFDIO_COPY');
  } catch (e) {
    if (e instanceof SyscallError) return null;
    throw e;
  }
  let uffd: number;
  try {
    uffd = takeFd(remote.task.pid, fd, 'its userfaultfd');
  } catch (e) {
    if (e instanceof SyscallError) return null;
    throw e;
  } finally {
    remote.call('close', SYS.close, [fd], 'its userfaultfd');
  }
  try {
    const api = Buffer.alloc(24);
    api.writeBigUInt64LE(BigInt(UFFD_API), 0);
    syscall(SYS_IOCTL, 'ioctl(UFFDIO_API)', uffd, UFFDIO_API, api);
    return uffd;
  } catch (e) {
    closeFd(uffd);
    if (e instanceof SyscallError) return null;
    throw e;
  }
}

/**
 * Pages copied with UFFDIO_COPY into `fresh` VMAs (just mapped, empty):
 * a userfaultfd made in the task (user faults only: nothing of the kernel
 * waits on it), taken here, the private anonymous VMAs registered, the
 * copies run on two threads (page-copy.ts), then unregistered and closed,
 * which leaves the VMAs as they were. Returns what it did not copy, for
 * the ordinary way; everything if the kernel has no userfaultfd for us.
 */
function copyByUffd(remote: Remote, fresh: ImageVma[], pages: PageSet[], fileMapped: boolean): PageSet[] {
  const thp = thpSetting();
  const eligible = fresh.filter((v) => v.kind === 'anon' && !v.shared && !v.vmFlags.includes('dp') && smallPagesOnly(v, thp));
  if (!eligible.length) return pages;
  const uffd = openUffd(remote);
  if (uffd === null) return pages;
  const registered: ImageVma[] = [];
  try {
    for (const v of eligible) {
      const reg = Buffer.alloc(32);
      reg.writeBigUInt64LE(BigInt(v.start), 0);
      reg.writeBigUInt64LE(BigInt(v.end - v.start), 8);
      reg.writeBigUInt64LE(BigInt(UFFDIO_REGISTER_MODE_MISSING), 16);
      try {
        syscall(SYS_IOCTL, 'ioctl(UFFDIO_REGISTER)', uffd, UFFDIO_REGISTER, reg);
        registered.push(v);
      } catch (e) {
        if (!(e instanceof SyscallError)) throw e; // this VMA the ordinary way
      }
    }
    const jobs: CopyJob[] = [];
    const rest: PageSet[] = [];
    for (const pg of pages) {
      // Runs left to the ordinary way stay together while they follow one
      // another in the record: one process_vm_writev for many.
      let group: PageSet | undefined;
      let groupAt = 0, at = 0;
      for (const r of pg.runs) {
        const v = registered[vmaAt(registered, r.addr)] as ImageVma | undefined;
        if (v && r.addr + r.len <= v.end) {
          for (let o = 0; o < r.len; o += COPY_PIECE) jobs.push({ dst: r.addr + o, src: pg.data, off: at + o, len: Math.min(COPY_PIECE, r.len - o) });
          group = undefined;
        } else {
          if (!group) {
            rest.push(group = { runs: [], data: pg.data });
            groupAt = at;
          }
          group.runs.push(r);
          group.data = pg.data.subarray(groupAt, at + r.len);
        }
        at += r.len;
      }
    }
    copyPages(uffd, jobs, fileMapped).forEach((done, i) => {
      const j = jobs[i];
      if (done < j.len) rest.push({ runs: [{ addr: j.dst + done, len: j.len - done }], data: j.src.subarray(j.off + done, j.off + j.len) });
    });
    return rest;
  } finally {
    // Before any other write: a registered range makes process_vm_writev fail (user faults only).
    for (const v of registered) {
      const range = Buffer.alloc(16);
      range.writeBigUInt64LE(BigInt(v.start), 0);
      range.writeBigUInt64LE(BigInt(v.end - v.start), 8);
      syscall(SYS_IOCTL, 'ioctl(UFFDIO_UNREGISTER)', uffd, UFFDIO_UNREGISTER, range);
    }
    closeFd(uffd);
  }
}

/**
 * Pages written with process_vm_writev, which faults fresh memory a page
 * at a time through get_user_pages; MADV_POPULATE_WRITE on the runs about
 * to be written (nothing else: a sparse mapping stays sparse), then the
 * copy, restored 1 GiB in 0.49-0.54 s here against 0.96-1.25 s. And the two
 * overlap: the task populates the next 64 MiB on its CPU while stasis
 * copies the last on its own. The pages end up exactly as the writes alone
 * would leave them (copy-on-write broken, huge pages where the VMA's
 * advice asks for them). Only faster: a kernel without the advice (before
 * 5.14) just writes.
 */
function populateAndWrite(remote: Remote, pages: PageSet[]): void {
  const write = (pg: PageSet) => remote.task.writev(pg.data, 0, pg.runs);
  if (pages.reduce((n, pg) => n + pg.data.length, 0) < POPULATE_FROM) {
    pages.forEach(write);
    return;
  }
  const groups: PageSet[][] = [];
  let bytes = FILL_GROUP;
  for (const pg of pages) {
    if (bytes >= FILL_GROUP) {
      groups.push([]);
      bytes = 0;
    }
    groups.at(-1)!.push(pg);
    bytes += pg.data.length;
  }
  const populate = (group: PageSet[]) => remote.startBatch(mergeRuns(group.flatMap((pg) => pg.runs)).map((r) =>
    ({ name: 'madvise', nr: SYS.madvise, args: [r.addr, r.len, MADV_POPULATE_WRITE], where: 'pages about to be written' })));
  const settle = (finish: () => number[]) => {
    try {
      finish();
    } catch (e) {
      if (!(e instanceof SyscallError)) throw e;
    }
  };
  let populating = populate(groups[0]);
  groups.forEach((group, i) => {
    settle(populating);
    if (i + 1 < groups.length) populating = populate(groups[i + 1]);
    group.forEach(write);
  });
}

function mergeRuns(runs: PageRun[]): PageRun[] {
  const merged: PageRun[] = [];
  for (const r of [...runs].sort((a, b) => a.addr - b.addr)) {
    const last = merged.at(-1);
    if (last && last.addr + last.len === r.addr) last.len += r.len;
    else merged.push({ addr: r.addr, len: r.len });
  }
  return merged;
}

/**
 * Final protections and guard pages once the contents are in place, in one
 * batch with `first` (unsharedDrops).
 */
export function finishVmas(remote: Remote, vmas: ImageVma[], first: BatchCall[] = []): void {
  // The kernel keeps VM_ACCOUNT through mprotect only on anonymous memory
  // that was ever faulted (has an anon_vma): one that receives no page
  // (a PROT_NONE page split off written memory) gets a page touched and
  // dropped again first, or it would lose the flag.
  const touch = vmas.filter((v) => v.kind === 'anon' && !v.shared && v.vmFlags.includes('ac') && v.prot[1] !== 'w' && !receivesPages(v));
  if (touch.length) {
    remote.task.writev(Buffer.alloc(touch.length), 0, touch.map((v) => ({ addr: v.start, len: 1 })));
    remote.batch(touch.map((v) => ({ name: 'madvise', nr: SYS.madvise, args: [v.start, PAGE_SIZE, MADV_DONTNEED], where: `${vmaLabel(v, v.name)}: the page touched for VM_ACCOUNT` })));
  }
  const calls: BatchCall[] = [...first];
  for (const v of vmas) {
    if (v.kind === 'vdso' || v.kind === 'vvar' || v.kind === 'vvar_vclock') continue;
    const label = vmaLabel(v, v.file?.path ?? v.name);
    if (mappedWritable(v) && v.prot[1] !== 'w') calls.push({ name: 'mprotect', nr: SYS.mprotect, args: [v.start, v.end - v.start, protBits(v.prot)], where: label });
    for (const g of v.guards ?? []) calls.push({ name: 'madvise', nr: SYS.madvise, args: [g.addr, g.len, MADV_GUARD_INSTALL], where: `${label}, guard pages` });
  }
  remote.batch(calls);
}

/**
 * Locks and seals, once the process's rlimits are its own (RLIMIT_MEMLOCK
 * bounds mlock for a user without CAP_IPC_LOCK): mlock2 after the guards
 * (which locked ranges refuse), mseal last (a sealed range takes no change).
 */
export function lockVmas(remote: Remote, vmas: ImageVma[]): void {
  const locks: BatchCall[] = [];
  const seals: BatchCall[] = [];
  for (const v of vmas) {
    if (v.kind === 'vdso' || v.kind === 'vvar' || v.kind === 'vvar_vclock') continue;
    const label = vmaLabel(v, v.file?.path ?? v.name);
    const len = v.end - v.start;
    if (v.vmFlags.includes('lo')) {
      locks.push({ name: 'mlock2', nr: SYS.mlock2, args: [v.start, len, v.vmFlags.includes('lf') ? MLOCK_ONFAULT : 0], where: `${label}: lock it (RLIMIT_MEMLOCK or CAP_IPC_LOCK of the restarting user)` });
    }
    if (v.vmFlags.includes('sl')) seals.push({ name: 'mseal', nr: SYS_MSEAL, args: [v.start, len, 0], where: label });
  }
  remote.batch([...locks, ...seals]);
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

/**
 * Copy-on-write sharing kept at restart: a child is forked from its parent
 * once the parent's memory is rebuilt, so it starts with the parent's
 * pages. A VMA of the child stays as forked when it is the same private
 * mapping as the parent's (address, protection, backing, flags) and holds
 * pages that were the parent's at checkpoint; everything else is unmapped
 * and rebuilt as usual. Returns, per kept VMA, the page addresses to leave
 * as forked.
 */
export function keptFromParent(child: ImageVma[], parent: ImageVma[], parentPid: number): Map<ImageVma, Set<number>> {
  const kept = new Map<ImageVma, Set<number>>();
  const same = (a: string[], b: string[]) => {
    const norm = (x: string[]) => x.filter((f) => f !== 'lo' && f !== 'lf' && f !== 'sl').sort().join(' ');
    return norm(a) === norm(b);
  };
  const forkable = (v: ImageVma) => (v.kind === 'anon' || v.kind === 'file') && !v.shared && !v.guards?.length
    && !v.vmFlags.some((f) => f === 'wf' || f === 'dc' || f === 'gu' || f === 'dp');
  const byStart = new Map(parent.map((w) => [w.start, w]));
  for (const v of child) {
    const w = byStart.get(v.start);
    if (!w || w.end !== v.end || !forkable(v) || !forkable(w) || v.kind !== w.kind || v.prot !== w.prot || v.offset !== w.offset
      || v.name !== w.name || v.file?.path !== w.file?.path || v.file?.ino !== w.file?.ino || !same(v.vmFlags, w.vmFlags)) continue;
    // The parent holds the very page the child had at X: it was the
    // parent's (from === parent) or both had it from the same ancestor.
    const parentHas = new Map<number, Set<number>>();
    for (const g of w.inherited ?? []) {
      const s = new Set<number>();
      for (const r of g.runs) for (let a = r.addr; a < r.addr + r.len; a += PAGE_SIZE) s.add(a);
      parentHas.set(g.from, s);
    }
    const shared = new Set<number>();
    let copies = false;
    for (const g of v.inherited ?? []) {
      for (const r of g.runs) {
        for (let a = r.addr; a < r.addr + r.len; a += PAGE_SIZE) {
          if (g.from === parentPid || parentHas.get(g.from)?.has(a)) shared.add(a);
          else copies = true;
        }
      }
    }
    if (!shared.size) continue;
    // Pages written into it need it writable as it stands.
    if (v.prot[1] !== 'w' && (copies || v.savedPages > 0)) continue;
    kept.set(v, shared);
  }
  return kept;
}

/**
 * In a VMA kept as forked, the pages the child did not have at checkpoint
 * (never touched, dropped): the calls that drop them, for finishVmas's
 * batch (its own and inherited pages, written before, are left alone).
 */
export function unsharedDrops(kept: Map<ImageVma, Set<number>>, ownRuns: PageRun[]): BatchCall[] {
  // Nothing kept as forked (every lone process): no set of every saved page (~80 ms for 1 GiB, cold).
  if (!kept.size) return [];
  const own = new Set<number>();
  for (const r of ownRuns) for (let a = r.addr; a < r.addr + r.len; a += PAGE_SIZE) own.add(a);
  const calls: BatchCall[] = [];
  for (const [v, shared] of kept) {
    const inherited = new Set<number>();
    for (const g of v.inherited ?? []) for (const r of g.runs) for (let a = r.addr; a < r.addr + r.len; a += PAGE_SIZE) inherited.add(a);
    let from = -1;
    for (let a = v.start; a <= v.end; a += PAGE_SIZE) {
      const drop = a < v.end && !shared.has(a) && !own.has(a) && !inherited.has(a);
      if (drop && from < 0) from = a;
      if (!drop && from >= 0) {
        calls.push({ name: 'madvise', nr: SYS.madvise, args: [from, a - from, MADV_DONTNEED], where: `${vmaLabel(v, v.file?.path ?? v.name)}: pages the child did not have` });
        from = -1;
      }
    }
  }
  return calls;
}

// System V shared memory segments attached by the tree (shmat). A segment
// belongs to the IPC namespace, not to a process: its key, id, size, owner,
// mode, SHM_LOCK and removal mark (IPC_RMID while attached) and its
// contents are saved once, in the Objects record's `sysvShm` table; each
// attachment is a VMA naming the segment by id (`sysv`), whole: an
// attachment partly unmapped is refused by name.
//
// At restart, before any process exists, stasis finds or makes every
// segment: one that still exists under the saved id (the original was
// killed, the segment outlived it) is used only if it is the saved one,
// byte for byte (key, size, owner, mode, contents): processes outside the
// tree attached to it keep sharing it with the restored tree. A different
// segment under that id or key is refused by name. A missing one is created
// with the same id (/proc/sys/kernel/shm_next_id) and key and filled. The
// tasks attach it at the saved addresses; a segment removed at checkpoint
// is removed again (IPC_RMID) once every process has attached it.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import type { ImageVma } from '../image/schema';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';
import { count, int, u32, base64Max } from '../image/fields';
import type { ObjectTable } from './fdkind';
import { dataRanges } from './memfd';
import { Remote, BatchCall } from '../ptrace/remote';
import { SYS, PAGE_SIZE } from '../sys/x86';

const SYS_SHMGET = 29, SYS_SHMAT = 30, SYS_SHMCTL = 31, SYS_SHMDT = 67;
const IPC_CREAT = 0o1000, IPC_EXCL = 0o2000, IPC_RMID = 0, IPC_SET = 1, IPC_STAT = 2, SHM_LOCK = 11;
const SHM_RDONLY = 0o10000, SHM_DEST = 0o1000, SHM_LOCKED = 0o2000;
const PROT = { r: 1, w: 2, x: 4 };
/** Larger than any segment a checkpoint of this machine writes into JSON. */
const SEGMENT_MAX = 1 << 30;

/** "/SYSV%08x (deleted)": the key of the segment; its inode number is the segment id. */
export function sysvKey(path: string): number | null {
  const m = /^\/SYSV([0-9a-f]{8}) \(deleted\)$/.exec(path);
  return m ? parseInt(m[1], 16) : null;
}

export const SysvShmObject = lazySchema(() => z.object({
  /** shmid, kept across the restart */
  id: int(0, 0x7fffffff),
  /** the key (0: IPC_PRIVATE, which a segment removed while attached has too) */
  key: u32,
  size: int(1, SEGMENT_MAX),
  mode: int(0, 0o777),
  uid: u32,
  gid: u32,
  /** SHM_LOCK'ed */
  locked: z.boolean(),
  /** marked for removal (IPC_RMID while attached): removed again after the restart */
  removed: z.boolean(),
  /** data segments (holes are not saved), base64 */
  segments: z.array(z.object({ offset: count, data: base64Max(SEGMENT_MAX) })).max(1 << 18),
}));
export type SysvShmObject = z.infer<typeof SysvShmObject>;

/** The id of the segment an attachment maps (a VMA field). */
export const SysvId = lazySchema(() => int(0, 0x7fffffff));

interface SegmentInfo { key: number; id: number; mode: number; size: number; uid: number; gid: number }

/** /proc/sysvipc/shm, by id. */
function readSegments(): Map<number, SegmentInfo> {
  const out = new Map<number, SegmentInfo>();
  let text = '';
  try { text = fs.readFileSync('/proc/sysvipc/shm', 'utf8'); } catch { return out; }
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 9) continue;
    const info = { key: Number(f[0]) >>> 0, id: Number(f[1]), mode: parseInt(f[2], 8), size: Number(f[3]), uid: Number(f[7]), gid: Number(f[8]) };
    out.set(info.id, info);
  }
  return out;
}

/** Attachments of one checkpoint, by segment; contents read once each. */
export class SysvShmTable implements ObjectTable {
  private readonly seen = new Map<number, { pid: number; start: number; end: number; label: string }>();
  private segments?: Map<number, SegmentInfo>;

  /**
   * The attachments among a process's VMAs (`sysv` set), each whole: the
   * pieces of one attachment (same segment, same base) must cover it.
   */
  note(pid: number, vmas: ImageVma[], label: (v: ImageVma) => string): void {
    const groups = new Map<string, ImageVma[]>();
    for (const v of vmas) {
      if (v.sysv === undefined) continue;
      const k = `${v.sysv}@${v.start - v.offset}`;
      let g = groups.get(k);
      if (!g) groups.set(k, g = []);
      g.push(v);
      if (!this.seen.has(v.sysv)) this.seen.set(v.sysv, { pid, start: v.start, end: v.end, label: label(v) });
    }
    if (!groups.size) return;
    this.segments ??= readSegments();
    for (const g of groups.values()) {
      const id = g[0].sysv!;
      const seg = this.segments.get(id);
      if (!seg) throw new StasisError(`pid ${pid}: ${label(g[0])}: System V segment ${id} is not in /proc/sysvipc/shm`);
      const base = g[0].start - g[0].offset;
      const end = base + Math.ceil(seg.size / PAGE_SIZE) * PAGE_SIZE;
      let at = base;
      for (const v of g) {
        if (v.start !== at) break;
        at = v.end;
      }
      if (at !== end || g[0].start !== base) {
        throw new UnsupportedError(`pid ${pid}: ${label(g[0])}: part of the attachment of System V segment ${id} at 0x${base.toString(16)} was unmapped or moved, which stasis cannot restore yet; keep the attachment whole (or shmdt it) before the checkpoint`);
      }
    }
  }

  collect(): { sysvShm: SysvShmObject[] } | Record<string, never> {
    if (!this.seen.size) return {};
    const segments = readSegments();
    const out: SysvShmObject[] = [];
    for (const [id, at] of this.seen) {
      const seg = segments.get(id);
      if (!seg) throw new StasisError(`pid ${at.pid}: ${at.label}: System V segment ${id} vanished`);
      const path = `/proc/${at.pid}/map_files/${at.start.toString(16)}-${at.end.toString(16)}`;
      let fd: number;
      try {
        fd = fs.openSync(path, 'r');
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw new StasisError(`pid ${at.pid}: ${at.label}: cannot read System V segment ${id} through map_files (${code})${code === 'EPERM' ? '; that needs CAP_CHECKPOINT_RESTORE: checkpoint as root' : ''}`);
      }
      const data: SysvShmObject['segments'] = [];
      try {
        for (const [from, to] of dataRanges(fd, seg.size)) {
          const b = Buffer.alloc(to - from);
          fs.readSync(fd, b, 0, b.length, from);
          data.push({ offset: from, data: b.toString('base64') });
        }
      } finally {
        fs.closeSync(fd);
      }
      out.push({
        id, key: seg.key, size: seg.size, mode: seg.mode & 0o777, uid: seg.uid, gid: seg.gid,
        locked: (seg.mode & SHM_LOCKED) !== 0, removed: (seg.mode & SHM_DEST) !== 0, segments: data,
      });
    }
    return { sysvShm: out };
  }
}

/** The saved contents of a segment, holes as zeros. */
function contentsOf(s: SysvShmObject): Buffer {
  const b = Buffer.alloc(s.size);
  for (const seg of s.segments) Buffer.from(seg.data, 'base64').copy(b, seg.offset);
  return b;
}

/** Attach a segment to stasis itself for a moment; `use` gets its address and /proc/self/mem. */
function withAttached<T>(id: number, readOnly: boolean, use: (addr: number, mem: number) => T): T {
  const addr = syscall(SYS_SHMAT, 'shmat', id, 0, readOnly ? SHM_RDONLY : 0);
  try {
    const mem = fs.openSync('/proc/self/mem', readOnly ? 'r' : 'r+');
    try {
      return use(addr, mem);
    } finally {
      fs.closeSync(mem);
    }
  } finally {
    syscall(SYS_SHMDT, 'shmdt', addr);
  }
}

/** struct shmid64_ds as IPC_STAT fills it: key, owner, mode, size. */
function stat(id: number): { key: number; uid: number; gid: number; mode: number; size: number } | null {
  const b = Buffer.alloc(112);
  try {
    syscall(SYS_SHMCTL, 'shmctl(IPC_STAT)', id, IPC_STAT, b);
  } catch (e) {
    if ((e as { code?: string }).code === 'EINVAL' || (e as { code?: string }).code === 'EIDRM') return null;
    throw e;
  }
  return { key: b.readUInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8), mode: b.readUInt16LE(20), size: Number(b.readBigUInt64LE(48)) };
}

/** Restore side: every segment found or made before any process exists. */
export class SysvShmKeeper {
  private readonly created: number[] = [];

  constructor(private readonly segments: SysvShmObject[]) {
    try {
      for (const s of segments) this.make(s);
    } catch (e) {
      this.close(true);
      throw e;
    }
  }

  private make(s: SysvShmObject): void {
    const what = `System V segment ${s.id} (key 0x${s.key.toString(16).padStart(8, '0')})`;
    const want = contentsOf(s);
    const now = stat(s.id);
    if (now) {
      const diffs: string[] = [];
      if (now.key !== s.key) diffs.push(`key 0x${now.key.toString(16)}`);
      if (now.size !== s.size) diffs.push(`size ${now.size}`);
      if ((now.mode & 0o777) !== s.mode || now.uid !== s.uid || now.gid !== s.gid) diffs.push(`owner ${now.uid}:${now.gid} mode ${(now.mode & 0o777).toString(8)}`);
      if (!diffs.length) {
        const same = withAttached(s.id, true, (addr, mem) => {
          const b = Buffer.alloc(s.size);
          fs.readSync(mem, b, 0, b.length, addr);
          return b.equals(want);
        });
        if (!same) diffs.push('other contents');
      }
      if (diffs.length) throw new StasisError(`${what}: segment ${s.id} exists with ${diffs.join(', ')}; remove it (ipcrm -m ${s.id}) to restart with the saved segment, or restore it as it was`);
      return; // the saved segment itself, outliving the original
    }
    if (s.key !== 0) {
      let other = -1;
      try { other = syscall(SYS_SHMGET, 'shmget', s.key, 0, 0); } catch { /* free */ }
      if (other >= 0) throw new StasisError(`${what}: key 0x${s.key.toString(16)} is taken by segment ${other}; remove it (ipcrm -m ${other}) or restart where the key is free`);
    }
    try {
      fs.writeFileSync('/proc/sys/kernel/shm_next_id', String(s.id));
    } catch (e) {
      throw new StasisError(`${what}: cannot choose its id through /proc/sys/kernel/shm_next_id (${(e as NodeJS.ErrnoException).code}); restart as root`);
    }
    const id = syscall(SYS_SHMGET, 'shmget', s.key, s.size, IPC_CREAT | IPC_EXCL | s.mode);
    this.created.push(id);
    if (id !== s.id) throw new StasisError(`${what}: created as segment ${id}: id ${s.id} is taken; restart where it is free`);
    withAttached(id, false, (addr, mem) => {
      for (const seg of s.segments) {
        const b = Buffer.from(seg.data, 'base64');
        fs.writeSync(mem, b, 0, b.length, addr + seg.offset);
      }
    });
    const ds = Buffer.alloc(112);
    syscall(SYS_SHMCTL, 'shmctl(IPC_STAT)', id, IPC_STAT, ds);
    ds.writeUInt32LE(s.uid, 4);
    ds.writeUInt32LE(s.gid, 8);
    ds.writeUInt16LE(s.mode, 20);
    syscall(SYS_SHMCTL, 'shmctl(IPC_SET)', id, IPC_SET, ds);
    if (s.locked) syscall(SYS_SHMCTL, 'shmctl(SHM_LOCK)', id, SHM_LOCK, 0);
  }

  /** Every process has attached: segments removed at checkpoint are removed again. */
  finish(): void {
    for (const s of this.segments) if (s.removed) syscall(SYS_SHMCTL, 'shmctl(IPC_RMID)', s.id, IPC_RMID, 0);
    this.created.length = 0;
  }

  /** `failed`: segments this restart created go again. */
  close(failed = false): void {
    if (failed) for (const id of this.created) { try { syscall(SYS_SHMCTL, 'shmctl(IPC_RMID)', id, IPC_RMID, 0); } catch { /* gone */ } }
    this.created.length = 0;
  }
}

/**
 * Attach every segment the process had attached, at its address (SHM_RDONLY
 * unless it may be written), and give each piece its protection.
 */
export function attachSegments(remote: Remote, vmas: ImageVma[], label: (v: ImageVma) => string): void {
  const attaches: BatchCall[] = [];
  const protects: BatchCall[] = [];
  const bases = new Set<string>();
  for (const v of vmas) {
    if (v.sysv === undefined) continue;
    const base = v.start - v.offset;
    if (!bases.has(`${v.sysv}@${base}`)) {
      bases.add(`${v.sysv}@${base}`);
      attaches.push({ name: 'shmat', nr: SYS_SHMAT, args: [v.sysv, base, v.vmFlags.includes('mw') ? 0 : SHM_RDONLY], where: label(v) });
    }
    const prot = (v.prot[0] === 'r' ? PROT.r : 0) | (v.prot[1] === 'w' ? PROT.w : 0) | (v.prot[2] === 'x' ? PROT.x : 0);
    protects.push({ name: 'mprotect', nr: SYS.mprotect, args: [v.start, v.end - v.start, prot], where: label(v) });
  }
  remote.batch(attaches).forEach((got, i) => {
    if (got !== attaches[i].args[1]) throw new StasisError(`${attaches[i].where}: shmat placed it at 0x${got.toString(16)}`);
  });
  remote.batch(protects);
}

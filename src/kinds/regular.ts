// Regular files and directories held open: reopened by path, without
// following any symlink, only when the path still names the same file (a
// regular file by device and inode) and the saved process could have
// opened it so; then put back at their offset.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import type { ImageCreds, FileIdentity as FileIdentityType } from '../image/schema';
import { Remote, AT_FDCWD, BatchCall } from '../ptrace/remote';
import { StasisError } from '../sys/errno';
import { count, decimalI64, path } from '../image/fields';
import { FdKind, CommonFd, reopenFlags, seekTo } from './fdkind';
import { procPidOf } from './procfs';
import { SYS } from '../sys/x86';

const O_PATH = 0o10000000, O_ACCMODE = 3;
const RESOLVE_NO_SYMLINKS = 0x04;
/** Flags openat2 accepts (VALID_OPEN_FLAGS); openat ignored the others, openat2 refuses them. */
const VALID_OPEN_FLAGS = 0o37777703;
const CAP_DAC_OVERRIDE = 1n, CAP_DAC_READ_SEARCH = 2n;

/** How a file is recognised again at restart. */
export const FileIdentity = lazySchema(() => z.object({
  path,
  dev: count,
  ino: count,
  size: count,
  /** mtime in nanoseconds, as a decimal string */
  mtimeNs: decimalI64,
}));

/** A regular file: the common `path`, `pos`, and which file it was. */
export const FileFd = lazySchema(() => z.object({ kind: z.literal('file'), file: FileIdentity }));
export const DirFd = lazySchema(() => z.object({ kind: z.literal('dir') }));
type FileFd = z.infer<typeof FileFd>;
type DirFd = z.infer<typeof DirFd>;

export function fileIdentity(p: string): FileIdentityType {
  const st = fs.statSync(p, { bigint: true });
  return { path: p, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeNs: st.mtimeNs.toString() };
}

/**
 * Arguments of an openat2 that follows no symlink anywhere in `path` (nor
 * a /proc magic link): a path named by an image reaches exactly that
 * file, not wherever a link planted since points.
 */
export function openNoSymlinks(remote: Remote, p: string, flags: number): number[] {
  const how = Buffer.alloc(24); // struct open_how: flags, mode, resolve
  how.writeBigUInt64LE(BigInt(flags & VALID_OPEN_FLAGS), 0);
  how.writeBigUInt64LE(BigInt(RESOLVE_NO_SYMLINKS), 16);
  return [AT_FDCWD, remote.putString(p), remote.putBytes(how), how.length];
}

/**
 * Could the saved process itself have opened this file so? Its fs
 * credentials and capabilities from the image against the file's owner
 * and mode bits (ACLs are not consulted: they may only refuse more).
 * A restart as root must not open what the image's process could not.
 */
export function mayOpen(st: fs.Stats, flags: number, creds: ImageCreds): boolean {
  if (flags & O_PATH) return true;
  const acc = flags & O_ACCMODE;
  const read = acc !== 1, write = acc !== 0;
  const caps = BigInt(creds.capEff);
  if (caps & (1n << CAP_DAC_OVERRIDE)) return true;
  if (!write && caps & (1n << CAP_DAC_READ_SEARCH)) return true;
  const fsuid = creds.uid[3], fsgid = creds.gid[3];
  const bits = st.uid === fsuid ? (st.mode >> 6) & 7
    : st.gid === fsgid || creds.groups.includes(st.gid) ? (st.mode >> 3) & 7 : st.mode & 7;
  return (!read || (bits & 4) !== 0) && (!write || (bits & 2) !== 0);
}

/**
 * Before any process exists: the path is there, no symlink, of the right
 * type, and the saved process could have opened it with the record's flags.
 * /proc directories of the image's own tasks come into being with them.
 */
export function checkPath(r: CommonFd, creds: ImageCreds, where: string, ownTasks: Set<number>, type: string, isType: (st: fs.Stats) => boolean): fs.Stats | null {
  const procPid = procPidOf(r.path);
  if (procPid !== null && ownTasks.has(procPid)) return null;
  let st: fs.Stats;
  try {
    st = fs.lstatSync(r.path);
  } catch (e) {
    throw new StasisError(`${where}: ${r.path} is missing (${(e as NodeJS.ErrnoException).code}); restore the file or restart where it exists`);
  }
  if (st.isSymbolicLink()) throw new StasisError(`${where}: ${r.path} is now a symbolic link; refusing to follow it`);
  if (!isType(st)) throw new StasisError(`${where}: ${r.path} is no longer a ${type}`);
  if (!mayOpen(st, r.flags, creds)) {
    throw new StasisError(`${where}: the saved process (uid ${creds.uid[3]}) could not open ${r.path} ${(r.flags & O_ACCMODE) === 0 ? 'for reading' : 'for writing'}; refusing to open it with this restarter's rights`);
  }
  return st;
}

/** Open the record's path in the task, following no symlink. */
export function openByPath(remote: Remote, r: CommonFd, where: string): number {
  const c = openByPathCall(remote, r, where);
  return remote.call(c.name, c.nr, c.args as number[], where);
}

/** openByPath as a call for a batch (FdKind.openCall). */
export function openByPathCall(remote: Remote, r: CommonFd, where: string): BatchCall {
  return { name: 'openat2', nr: SYS.openat2, args: openNoSymlinks(remote, r.path, reopenFlags(r)), where };
}

export const fileKind: FdKind<FileFd> = {
  kinds: ['file'],
  claims: (f) => f.target.startsWith('/') && !f.target.endsWith(' (deleted)') && f.stat().isFile(),
  dump(f) {
    const file = fileIdentity(f.target);
    if (file.ino !== Number(f.stat().ino)) throw new StasisError(`${f.where}: ${f.target} was replaced by another file while open`);
    return { kind: 'file', pos: f.info().pos, file };
  },
  open: (remote, r, _ctx, where) => openByPath(remote, r, where),
  openCall: openByPathCall,
  settle: seekTo,
  check(r, creds, where, ownTasks) {
    const st = checkPath(r, creds, where, ownTasks, 'regular file', (s) => s.isFile());
    if (st && (st.dev !== r.file.dev || st.ino !== r.file.ino)) {
      throw new StasisError(`${where}: ${r.path} is not the file the image had open (inode ${r.file.dev}:${r.file.ino}, now ${st.dev}:${st.ino}); refusing to open a different file`);
    }
  },
};

export const dirKind: FdKind<DirFd> = {
  kinds: ['dir'],
  claims: (f) => f.target.startsWith('/') && !f.target.endsWith(' (deleted)') && f.stat().isDirectory(),
  dump: (f) => ({ kind: 'dir', pos: f.info().pos }),
  open: (remote, r, _ctx, where) => openByPath(remote, r, where),
  openCall: openByPathCall,
  settle: seekTo,
  check(r, creds, where, ownTasks) {
    checkPath(r, creds, where, ownTasks, 'directory', (s) => s.isDirectory());
  },
};

// A symbolic link held open with O_PATH|O_NOFOLLOW: the fd refers to the
// link itself. Reopened the same way by path (openat2 then hands back the
// link, following no symlink on the way), only when the path still names
// the same link (device and inode).
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import { StasisError } from '../sys/errno';
import { count } from '../image/fields';
import { FdKind } from './fdkind';
import { openByPath } from './regular';

const O_PATH = 0o10000000, O_NOFOLLOW = 0o400000;

/** The link's device and inode; the common `path` is where it is. */
export const SymlinkFd = lazySchema(() => z.object({ kind: z.literal('symlink'), symlink: z.object({ dev: count, ino: count }) }));
type SymlinkFd = z.infer<typeof SymlinkFd>;

export const symlinkKind: FdKind<SymlinkFd> = {
  kinds: ['symlink'],
  claims: (f) => f.target.startsWith('/') && !f.target.endsWith(' (deleted)') && f.stat().isSymbolicLink(),
  dump(f) {
    const st = f.stat();
    let here: fs.BigIntStats;
    try {
      here = fs.lstatSync(f.target, { bigint: true });
    } catch (e) {
      throw new StasisError(`${f.where}: the symbolic link ${f.target} cannot be found (${(e as NodeJS.ErrnoException).code})`);
    }
    if (here.ino !== st.ino || here.dev !== st.dev) throw new StasisError(`${f.where}: ${f.target} was replaced by another file while open`);
    return { kind: 'symlink', pos: 0, symlink: { dev: Number(st.dev), ino: Number(st.ino) } };
  },
  open: (remote, r, _ctx, where) => openByPath(remote, r, where),
  check(r, _creds, where) {
    // An O_PATH fd needs no permission on the link itself; only such an fd can be on a link.
    if ((r.flags & (O_PATH | O_NOFOLLOW)) !== (O_PATH | O_NOFOLLOW)) throw new StasisError(`${where}: a symbolic link can only be held with O_PATH|O_NOFOLLOW`);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(r.path);
    } catch (e) {
      throw new StasisError(`${where}: ${r.path} is missing (${(e as NodeJS.ErrnoException).code}); restore the link or restart where it exists`);
    }
    if (!st.isSymbolicLink() || st.dev !== r.symlink.dev || st.ino !== r.symlink.ino) {
      throw new StasisError(`${where}: ${r.path} is not the symbolic link the image had open (inode ${r.symlink.dev}:${r.symlink.ino}, now ${st.dev}:${st.ino}); refusing to open a different file`);
    }
  },
};

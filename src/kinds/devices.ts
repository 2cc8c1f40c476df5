// Character devices with no state of their own (/dev/null, /dev/zero,
// /dev/full, /dev/random, /dev/urandom): reopened by path. Any other
// device is refused by name (terminals are src/kinds/tty.ts's).
import { z, lazySchema } from '../image/zod';
import { UnsupportedError, StasisError } from '../sys/errno';
import { FdKind, FoundFd } from './fdkind';
import { checkPath, openByPath, openByPathCall } from './regular';

/** major:minor -> the path it is reopened by */
const PLAIN_DEVICES: Record<string, string> = {
  '1:3': '/dev/null', '1:5': '/dev/zero', '1:7': '/dev/full', '1:8': '/dev/random', '1:9': '/dev/urandom',
};

/** The common `path` is the device's canonical one. */
export const ChrFd = lazySchema(() => z.object({ kind: z.literal('chr') }));
type ChrFd = z.infer<typeof ChrFd>;

function deviceNumber(f: FoundFd): string {
  const rdev = f.stat().rdev;
  return `${Number(rdev >> 8n) & 0xfff}:${Number(rdev & 0xffn)}`;
}

export const chrKind: FdKind<ChrFd> = {
  kinds: ['chr'],
  claims: (f) => f.target.startsWith('/') && f.stat().isCharacterDevice(),
  dump(f) {
    const dev = deviceNumber(f);
    const path = PLAIN_DEVICES[dev];
    if (path) return { kind: 'chr', path, pos: 0 };
    throw new UnsupportedError(`${f.where}: character device ${f.target} (${dev}) is not supported yet`);
  },
  open: (remote, r, _ctx, where) => openByPath(remote, r, where),
  openCall: openByPathCall,
  check(r, creds, where, ownTasks) {
    if (!Object.values(PLAIN_DEVICES).includes(r.path)) throw new StasisError(`${where}: ${r.path} is not one of the devices a checkpoint saves`);
    checkPath(r, creds, where, ownTasks, 'character device', (s) => s.isCharacterDevice());
  },
};

// The registry of fd kinds, asked in this order: the first whose claims()
// is true dumps and restores the fd. Names from /proc links come first;
// kinds recognised by stat() of a path after them.
import { FdKind, KindRecord } from './fdkind';
import { memfdKind } from './memfd';
import { eventfdKind } from './eventfd';
import { signalfdKind, timerfdKind } from './timerfd';
import { epollKind } from './epoll';
import { unixKind } from './unix';
import { pipeKind } from './pipes';
import { fileKind, dirKind } from './regular';
import { chrKind } from './devices';
import { mqueueKind } from './mqueue';
import { inotifyKind } from './inotify';
import { pidfdKind } from './pidfd';
import { symlinkKind } from './symlink';
import { ttyKind } from './tty';
import { inetKind } from './inet';
import { ghostKind } from './ghost';
import { REFUSED_FD_KINDS } from './refused';

export const FD_KINDS: ReadonlyArray<FdKind<any>> = [ // eslint-disable-line @typescript-eslint/no-explicit-any
  memfdKind, eventfdKind, signalfdKind, timerfdKind, epollKind, unixKind, inetKind, pipeKind, mqueueKind, ghostKind, fileKind, dirKind, ttyKind, chrKind,
  inotifyKind, pidfdKind, symlinkKind,
  ...REFUSED_FD_KINDS, // last: named refusals of what no kind above restores (src/kinds/refused.ts)
];

const byTag = new Map<string, FdKind<KindRecord>>(FD_KINDS.flatMap((k) => k.kinds.map((t: string) => [t, k] as const)));

/** The kind module that restores records tagged `tag`. */
export function kindOf(tag: string): FdKind<KindRecord> {
  const k = byTag.get(tag);
  if (!k) throw new Error(`no fd kind registered for "${tag}"`); // the schema admits only registered tags
  return k;
}

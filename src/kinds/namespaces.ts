// Namespaces. A restored tree lives in the restarter's namespaces (or, with
// --pid-ns, a new pid namespace made for it); namespaces themselves are not
// saved. A process that is in any namespace other than the checkpointer's
// would come back somewhere else (other mounts, hostname, network, clocks,
// pids), so it is refused by name.
import fs from 'node:fs';
import { UnsupportedError } from '../sys/errno';

const KINDS = ['mnt', 'net', 'uts', 'ipc', 'pid', 'pid_for_children', 'user', 'cgroup', 'time', 'time_for_children'];

function nsLink(pid: number | 'self', kind: string): string | null {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/${kind}`);
  } catch {
    return null; // a kernel without that namespace kind
  }
}

export function refuseForeignNamespaces(pid: number): void {
  for (const kind of KINDS) {
    const mine = nsLink('self', kind);
    const theirs = nsLink(pid, kind);
    if (mine === null || theirs === null || mine === theirs) continue;
    const what = kind.replace(/_for_children$/, '');
    const how = kind.endsWith('_for_children') ? `its children would be created in another ${what} namespace` : `it is in another ${what} namespace`;
    throw new UnsupportedError(`pid ${pid}: ${how} (${theirs}; stasis runs in ${mine}); namespaces are not saved yet: run stasis inside the same namespaces (nsenter -t ${pid} -a)`);
  }
}

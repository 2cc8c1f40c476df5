// Control group membership: one path per hierarchy (v1 controllers and the
// v2 unified tree), as /proc/PID/cgroup shows it. A restored process starts
// in the restarter's cgroups and is moved to the saved ones where they
// differ; a saved cgroup that does not exist here is refused before any
// process is created. Hierarchies are named by their controllers, not by
// their ids, which differ between machines.
import fs from 'node:fs';
import path from 'node:path';
import { z, lazySchema } from '../image/zod';
import { StasisError, UnsupportedError } from '../sys/errno';

export const CgroupMembership = lazySchema(() => z.object({
  /** "memory", "cpu,cpuacct", "name=systemd"; "" for the v2 unified hierarchy */
  controllers: z.string().max(256).regex(/^[\w=,.-]*$/),
  /** path inside that hierarchy, as /proc/PID/cgroup shows it */
  path: z.string().min(1).max(4096).regex(/^\/[^\0]*$/),
}));
export type CgroupMembership = z.infer<typeof CgroupMembership>;

function parseCgroups(text: string): CgroupMembership[] {
  return text.split('\n').filter(Boolean).map((line) => {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!m) throw new StasisError(`unexpected /proc cgroup line ${JSON.stringify(line)}`);
    return { controllers: m[1], path: m[2] };
  });
}

function readCgroups(where: string): CgroupMembership[] {
  return parseCgroups(fs.readFileSync(`/proc/${where}/cgroup`, 'utf8'));
}

export function dumpCgroups(pid: number): CgroupMembership[] {
  const mine = readCgroups(String(pid));
  const key = JSON.stringify(mine);
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    let theirs: string;
    try {
      theirs = JSON.stringify(readCgroups(`${pid}/task/${tid}`));
    } catch {
      continue; // the thread ended meanwhile (it cannot: it is seized), or /proc raced
    }
    if (theirs !== key) throw new UnsupportedError(`pid ${pid}: thread ${tid} is in other cgroups than its process (threaded cgroups); not supported yet`);
  }
  return mine;
}

/** Where each hierarchy is mounted here, by its controllers. */
function mountPoints(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right) continue;
    const [fstype, , superOpts] = right.split(' ');
    const mountPoint = left.split(' ')[4];
    if (fstype === 'cgroup2') out.set('', mountPoint);
    else if (fstype === 'cgroup') {
      const known = ['cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'net_cls', 'net_prio', 'blkio', 'perf_event', 'hugetlb', 'pids', 'rdma', 'misc'];
      const ctl = superOpts.split(',').filter((o) => known.includes(o) || o.startsWith('name='));
      out.set(ctl.join(','), mountPoint);
    }
  }
  return out;
}

/**
 * The restarter's own cgroups and where each hierarchy is mounted, read
 * once a restart (neither changes during one; read per process, a tree of
 * 100 parsed mountinfo 200 times).
 */
export class CgroupsHere {
  private mine?: Map<string, string>;
  private mounts?: Map<string, string>;

  /** Hierarchies where the saved path differs from the restarter's: where to write the pid. */
  moves(saved: CgroupMembership[]): Array<{ file: string; c: CgroupMembership }> {
    const mine = this.mine ??= new Map(readCgroups('self').map((c) => [c.controllers, c.path]));
    const out: Array<{ file: string; c: CgroupMembership }> = [];
    for (const c of saved) {
      if (mine.get(c.controllers) === c.path) continue;
      const mount = (this.mounts ??= mountPoints()).get(c.controllers);
      const label = c.controllers || 'unified (v2)';
      if (mount === undefined) throw new StasisError(`the ${label} cgroup hierarchy is not mounted here; restart where it is`);
      const dir = path.join(mount, path.normalize('/' + c.path));
      if (!fs.existsSync(path.join(dir, 'cgroup.procs'))) throw new StasisError(`${label} cgroup ${c.path} does not exist here; create it (mkdir ${dir}) and retry`);
      out.push({ file: path.join(dir, 'cgroup.procs'), c });
    }
    return out;
  }
}

/** Before any process exists: every saved cgroup must be there. */
export function checkCgroups(pid: number, saved: CgroupMembership[], here: CgroupsHere): void {
  try {
    here.moves(saved);
  } catch (e) {
    throw new StasisError(`pid ${pid}: ${(e as Error).message}`);
  }
}

/**
 * Move a restored process (all its threads) into its saved cgroups; in
 * the v2 hierarchy only when the restart does not hold the tree there
 * (see ptrace/hold.ts: then `unifiedHome` says where it goes at the end).
 */
export function restoreCgroups(hostPid: number, imagePid: number, saved: CgroupMembership[], here: CgroupsHere, held = false): void {
  for (const { file, c } of here.moves(saved)) {
    if (held && c.controllers === '') continue;
    try {
      fs.writeFileSync(file, String(hostPid));
    } catch (e) {
      throw new StasisError(`pid ${imagePid}: cannot join ${c.controllers || 'unified'} cgroup ${c.path} (${(e as NodeJS.ErrnoException).code}); restart as a user allowed to`);
    }
  }
}

/** The v2 cgroup a held process goes to once the restart is complete: its saved one, or the restarter's. */
export function unifiedHome(saved: CgroupMembership[]): string {
  return saved.find((c) => c.controllers === '')?.path ?? readCgroups('self').find((c) => c.controllers === '')?.path ?? '/';
}

// A restart that is safe to abandon. Every task of a restart is traced by
// stasis with PTRACE_O_EXITKILL from the moment it exists (the blank dies
// with its parent before that), so stasis's death kills them all: except
// once they are let go, one ptrace detach at a time. To make letting go
// one step, the tree is built inside a cgroup v2 of its own, the hold:
// frozen before the first task is detached, so detached tasks stay
// frozen, and committed by one write to a watchdog's pipe. A tiny shell
// outlives stasis and reads that pipe: if it ends before "commit" (stasis
// was killed, OOM, crashed), the watchdog kills everything in the hold
// (cgroup.kill) and removes it: nothing of the image is left. After
// "commit" the restart is complete whatever happens to stasis: each
// process goes to its saved cgroup (which thaws it), by stasis or, if it
// died meanwhile, by the watchdog, and the hold is removed.
//
// A restart in a new pid namespace needs no hold: its init is traced until
// the very end, and the kernel kills a namespace whose init dies.
import fs from 'node:fs';
import path from 'node:path';
import { waitpidSync, sleepSync } from '../sys/libc';
import { spawnWatchdog } from './watchdog';


// $0: the hold; $1: where the v2 hierarchy is mounted. Lines: "home
// ENCODED-PATH PID...", "commit", "done". Paths are octal-escaped (printf %b).
const SCRIPT = `
committed=
homes=
while IFS= read -r line; do
  case "$line" in
    "home "*) homes="$homes
\${line#home }" ;;
    commit) committed=1 ;;
    done) exit 0 ;;
  esac
done
if [ -z "$committed" ]; then
  echo 1 > "$0/cgroup.kill"
else
  for p in $(cat "$0/cgroup.procs"); do
    dest=\${0%/*}
    while read -r enc pids; do
      case " $pids " in *" $p "*) dest="$1$(printf '%b' "$enc")"; break ;; esac
    done <<EOF
$homes
EOF
    echo "$p" > "$dest/cgroup.procs"
  done
fi
n=0
until rmdir "$0" 2>/dev/null; do
  n=$((n + 1))
  [ $n -gt 500 ] && exit 1
  sleep 0.01
done
`;

let serial = 0;

/** Where the cgroup v2 hierarchy is mounted, and our own cgroup in it. */
function unified(): { mount: string; mine: string } | null {
  let mount: string | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (right?.startsWith('cgroup2 ')) {
      mount = left.split(' ')[4];
      break;
    }
  }
  const mine = /^0::(.*)$/m.exec(fs.readFileSync('/proc/self/cgroup', 'utf8'))?.[1];
  return mount && mine ? { mount, mine } : null;
}

/** A cgroup path as printf %b reads it back: octal escapes for all but the plainest characters. */
function encode(p: string): string {
  return [...Buffer.from(p)].map((b) => (/[A-Za-z0-9/._-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `\\0${b.toString(8).padStart(3, '0')}`)).join('');
}

export class RestartHold {
  readonly dir: string;
  private readonly mount: string;
  private fd: number;
  private readonly watchdog: number;

  private constructor(dir: string, mount: string, fd: number, watchdog: number) {
    this.dir = dir;
    this.mount = mount;
    this.fd = fd;
    this.watchdog = watchdog;
  }

  /**
   * A hold under our own cgroup, watched from the start; null where no
   * cgroup v2 hierarchy is ours to write (then, the caller says so).
   */
  static create(): RestartHold | null {
    const u = unified();
    if (!u) return null;
    const dir = path.join(u.mount, u.mine, `stasis-restart-${process.pid}-${++serial}`);
    const { pid, fd: w } = spawnWatchdog(SCRIPT, [dir, u.mount]);
    const hold = new RestartHold(dir, u.mount, w, pid);
    try {
      fs.mkdirSync(dir);
    } catch {
      hold.finish(); // read-only, or not ours: no hold
      return null;
    }
    return hold;
  }

  /** Move a task in (the blank, before anything is cloned from it); false if the kernel will not. */
  enter(pid: number): boolean {
    try {
      fs.writeFileSync(path.join(this.dir, 'cgroup.procs'), String(pid));
      return true;
    } catch {
      return false;
    }
  }

  /** Every task detached from now on stays frozen until commit. */
  freeze(): void {
    fs.writeFileSync(path.join(this.dir, 'cgroup.freeze'), '1');
  }

  /**
   * The restart is complete from the moment the watchdog reads "commit".
   * Then each process goes to its v2 cgroup (`homes`: host pid -> path in
   * the hierarchy), which thaws it, and the hold is removed.
   */
  commit(homes: Map<number, string>): void {
    const byPath = new Map<string, number[]>();
    for (const [pid, p] of homes) byPath.set(p, [...(byPath.get(p) ?? []), pid]);
    const lines = [...byPath].map(([p, pids]) => `home ${encode(p)} ${pids.join(' ')}\n`).join('');
    // One write of everything: if we die within it, the watchdog has no "commit".
    fs.writeSync(this.fd, lines + 'commit\n');
    for (const [p, pids] of byPath) {
      const procs = path.join(this.mount, p, 'cgroup.procs');
      for (const pid of pids) {
        try { fs.writeFileSync(procs, String(pid)); } catch { /* it ended already */ }
      }
    }
    this.finish();
  }

  /** Nothing was committed: whatever is still in the hold is killed, the hold removed. */
  abandon(): void {
    try { fs.writeFileSync(path.join(this.dir, 'cgroup.kill'), '1'); } catch { /* gone */ }
    this.finish();
  }

  /** Remove the hold (once empty) and let the watchdog end. */
  private finish(): void {
    if (this.fd < 0) return;
    const until = Date.now() + 5000;
    let removed = false;
    while (!removed) {
      try {
        fs.rmdirSync(this.dir);
        removed = true;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        removed = code === 'ENOENT';
        if (!removed && (code !== 'EBUSY' || Date.now() > until)) break;
        if (!removed) sleepSync(1); // killed tasks take a moment to leave
      }
    }
    // Not removed: the watchdog, seeing no "done", finishes the job as if we had died.
    if (removed) {
      try { fs.writeSync(this.fd, 'done\n'); } catch { /* it ended */ }
    }
    fs.closeSync(this.fd);
    this.fd = -1;
    try { waitpidSync(this.watchdog, 0); } catch { /* reaped */ }
  }
}

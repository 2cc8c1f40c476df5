// Benchmark of stasis against limits measured in the same run, in two tables.
//
// The first, the one the README quotes, times WHOLE COMMANDS as a user runs
// them: `bin/stasis ...` spawned fresh for every figure (no warm-up of
// stasis itself; its V8 code cache is the one `npm run build` made), each
// beside a limit timed the same way in the same run, interleaved:
//   - checkpoint --kill of a 1 GiB memhog to /dev/shm and to the root disk
//     beside `dd` of as many bytes to the same directory (with fsync, as
//     the checkpoint);
//   - restart -d of those 1 GiB images (GiB/s of memory restored; the image
//     in the page cache); the last restored memhog checks all its memory;
//   - checkpoint and restart -d of a tiny process (`sleep`) beside
//     `node -e 0`;
//   - checkpoint --kill and restart -d of a tree of 100 processes and of one
//     process with 100 threads (test/programs/many.c), per process/thread,
//     the restored tree checked (same pids/tids, every task back in pause());
//   and for every command the time its target was frozen (stasis -v says
//   it) and stasis's peak RSS (STASIS_REPORT_RSS=1 makes it say that).
//
// The second keeps the library-mode figures (checkpoint() and restartSync()
// called in this warm Node process):
//   1. checkpoint of a 1 GiB memhog to /dev/shm and to the root disk, beside
//      a plain write (+fsync) of as many bytes to the same directory;
//   2. restart of that 1 GiB image (loadImage and restartSync timed apart),
//      beside a plain read of the file and a copy into fresh memory;
//   3. checkpoint and restart of a tiny process (`sleep 1000`): in-process
//      restartSync beside posix_spawn of /bin/true, also with verify;
//   4. checkpoint (--kill) and restart of a tree of 100 idle processes and of
//      one process with 100 idle threads: per-task cost, freeze time, image
//      size; the tree's restart also with verify, rounds interleaved.
//
// Prints both tables in Markdown and writes them to bench/results.md.
// Options: `--cli` the command-line table only, `--lib` the library table
// only, `--small` without the 1 GiB figures; with any of them results.md is
// left alone.
//
// Every process started here is tracked by pid and killed/reaped by pid; the
// image files live in temporary directories removed at the end.
import { redisPause } from './redis-pause';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { spawnSync } from 'node:child_process';
import { build, Procs, waitFor, ROOT, CLI } from '../test/harness';
import { checkpoint, checkpointSync, restartSync, loadImage } from '../src/index';
import type { LoadedImage, Restarted } from '../src/index';
import { posixSpawn, waitpidSync, syscall, processVmWritev, addressOf, WNOHANG, __WALL } from '../src/sys/libc';
import { SYS } from '../src/sys/x86';
import { scanTree } from '../src/ptrace/freeze';
import { listThreads } from '../src/proc';

// ---- settings ---------------------------------------------------------------

const MIB = 1 << 20;
const GIB = 1 << 30;
const BIG_MIB = 1024;
const CHUNK = 8 * MIB;
/** Wall-clock budget for the measured rounds of each 1 GiB section (s). */
const BIG_BUDGET_S = { checkpoint: 90, restart: 60 };
const BIG_MIN_RUNS = 3;
const BIG_MAX_RUNS = 5;
const TINY_LIB_RUNS = 15;
const TINY_CLI_RUNS = 10;
const TINY_CKPT_RUNS = 7;
/** Tasks in the tree / threads in the process of section 4, and its measured rounds (after one warm-up). */
const MANY_N = 100;
const MANY_RUNS = 3;
/** How long a killed tree may take to disappear (orphans may be reaped by init only about once a second). */
const GONE_TIMEOUT_MS = 15000;

/** Without the 1 GiB figures (`npm run bench -- --small`). */
const SMALL = process.argv.includes('--small');
/** One table only. */
const CLI_ONLY = process.argv.includes('--cli');
const LIB_ONLY = process.argv.includes('--lib');
/** Measured rounds of each command-line figure (no warm-up of stasis). */
const CLI_BIG_RUNS = 5;
const CLI_TINY_RUNS = 10;
const CLI_MANY_RUNS = 3;

/** Where results.md's hand-written part begins; the bench rewrites only what comes before it. */
const PROFILE_HEADING = '## Where the time goes';

const TARGET = { ckptRatio: 0.85, restoreGiBs: 3, tinyLibMs: 15, tinyCliExtraMs: 25 };

// ---- small helpers ------------------------------------------------------------

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const now = (): bigint => process.hrtime.bigint();
const msSince = (t0: bigint): number => Number(now() - t0) / 1e6;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);
const ms = (x: number) => `${x < 100 ? f1(x) : x.toFixed(0)} ms`;
const gbs = (bytes: number, msec: number) => bytes / 1e9 / (msec / 1000);
const gibs = (bytes: number, msec: number) => bytes / GIB / (msec / 1000);
const size = (b: number) => (b >= GIB ? `${(b / GIB).toFixed(3)} GiB` : b >= MIB ? `${(b / MIB).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
const samples = (xs: number[]) => xs.map((x) => x.toFixed(x < 100 ? 1 : 0)).join(', ');
const yes = (ok: boolean) => (ok ? 'yes' : '**no**');

function log(msg: string): void {
  process.stderr.write(`[bench ${(process.uptime()).toFixed(1)} s] ${msg}\n`);
}

/** How many measured rounds fit in the budget, given one (warm-up) round's time. */
function roundsFor(oneRoundMs: number, budgetS: number): number {
  const n = Math.floor((budgetS * 1000) / Math.max(oneRoundMs, 1));
  return Math.max(BIG_MIN_RUNS, Math.min(BIG_MAX_RUNS, n));
}

// ---- process bookkeeping: exactly the pids started here -------------------------

const procs = new Procs(); // used to start targets (posix_spawn, new session)
/** Our own children still to be reaped. */
const children = new Set<number>();
/** Processes that are not our children (restored by the CLI, then orphaned). */
const strangers = new Set<number>();
let subreaper = false;

function startTarget(file: string, args: string[], out: string): number {
  const pid = procs.start(file, args, out);
  children.add(pid);
  return pid;
}

/** Kill one of our children and reap it (blocking). */
function killChild(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { /* already ended */ }
  try { waitpidSync(pid, __WALL); } catch { /* reaped elsewhere */ }
  children.delete(pid);
}

/** Reap a child that is about to exit by itself (blocking). */
function reapChild(pid: number): number {
  const st = waitpidSync(pid, __WALL);
  children.delete(pid);
  return st.status;
}

function procState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined; // gone
  }
}

/**
 * End a process restored by the CLI: it was the CLI's child and is now
 * orphaned. Kill it by pid, then wait until it is gone or a zombie; when this
 * process is a child subreaper the zombie is ours, so reap it too.
 */
async function killStranger(pid: number): Promise<void> {
  try { process.kill(pid, 'SIGKILL'); } catch { /* ended */ }
  const until = Date.now() + 10000;
  for (;;) {
    const s = procState(pid);
    if (s === undefined) break;
    if (s === 'Z') {
      if (subreaper) {
        try { waitpidSync(pid, __WALL | WNOHANG); } catch { /* not ours after all */ }
        if (procState(pid) === 'Z') { await sleep(1); continue; }
      }
      break;
    }
    if (Date.now() > until) throw new Error(`restored pid ${pid} did not end`);
    await sleep(1);
  }
  strangers.delete(pid);
}

async function cleanupAll(): Promise<void> {
  for (const pid of [...children]) killChild(pid);
  for (const pid of [...strangers]) {
    try { await killStranger(pid); } catch (e) { log(String(e)); }
  }
}

/** Wait until `file` holds `count` lines equal to `line` (or fail). */
async function waitLines(file: string, line: string, count: number, msec = 60000): Promise<void> {
  const until = Date.now() + msec;
  for (;;) {
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    if (/^FAIL/m.test(text)) throw new Error(`target failed: ${text.slice(-500)}`);
    if (text.split('\n').filter((l) => l === line).length >= count) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${count}x "${line}" in ${file}:\n${text.slice(-500)}`);
    await sleep(5);
  }
}

// ---- section 4 helpers: whole trees, by pid ------------------------------------------

/** pause() on x86-64, as the first field of /proc/PID/syscall. */
const NR_PAUSE = 34;

/**
 * Wait until none of `pids` exists any more (checked with /proc/PID, which a
 * zombie still has). Our own children are reaped here by pid; orphans are
 * ours to reap when this process is a child subreaper, else init's.
 */
async function waitAllGone(pids: number[], msec = GONE_TIMEOUT_MS): Promise<void> {
  const until = Date.now() + msec;
  const left = new Set(pids);
  for (;;) {
    for (const p of [...left]) {
      if (children.has(p) || (subreaper && procState(p) === 'Z')) {
        try { waitpidSync(p, __WALL | WNOHANG); } catch { /* not ours (any more) */ }
      }
      if (!fs.existsSync(`/proc/${p}`)) {
        left.delete(p);
        children.delete(p);
        strangers.delete(p);
      }
    }
    if (!left.size) return;
    if (Date.now() > until) throw new Error(`${left.size} of ${pids.length} pids still exist ${msec} ms after the kill: ${[...left].slice(0, 10).join(' ')}`);
    await sleep(2);
  }
}

/** Wait (bounded) until every task in `tasks` ("pid" or "pid/task/tid") sits in pause(). */
async function allInPause(tasks: string[], msec = 5000): Promise<boolean> {
  const until = Date.now() + msec;
  let left = tasks;
  for (;;) {
    left = left.filter((t) => {
      try { return Number(fs.readFileSync(`/proc/${t}/syscall`, 'utf8').split(' ')[0]) !== NR_PAUSE; } catch { return true; }
    });
    if (!left.length) return true;
    if (Date.now() > until) return false;
    await sleep(2);
  }
}

function sameSet(a: number[], b: number[]): boolean {
  const sb = new Set(b);
  return a.length === b.length && sb.size === b.length && a.every((x) => sb.has(x));
}

// ---- environment -----------------------------------------------------------------

function fsTypeOf(dir: string): string {
  const real = fs.realpathSync(dir);
  let best = { mnt: '', type: '?' };
  for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, mnt, type] = line.split(' ');
    if (!mnt) continue;
    if ((real === mnt || real.startsWith(mnt.endsWith('/') ? mnt : mnt + '/')) && mnt.length >= best.mnt.length) best = { mnt, type };
  }
  return best.type;
}

function environment(): string {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1].trim() ?? 'unknown CPU';
  const thp = (() => {
    try { return /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? '?'; } catch { return '?'; }
  })();
  return `Linux ${os.release()} · ${model} (${os.cpus().length} CPUs) · ${(os.totalmem() / GIB).toFixed(1)} GiB RAM · THP ${thp} · node ${process.version}`;
}

/** A directory on the root disk (not tmpfs) for the on-disk image. */
function diskDir(): string {
  for (const base of [os.tmpdir(), '/var/tmp']) {
    try {
      const t = fsTypeOf(base);
      if (t === 'tmpfs' || t === 'ramfs') continue;
      return fs.mkdtempSync(path.join(base, 'stasis-bench-'));
    } catch { /* next */ }
  }
  throw new Error('found no disk-backed temporary directory (os.tmpdir() and /var/tmp are tmpfs)');
}

// ---- the plain-I/O limits -----------------------------------------------------------

let warmBuf: Buffer | undefined;

/** Write `bytes` with fs.writeSync in 8 MiB chunks from a warm buffer to a new file, fsync, close. */
function plainWrite(file: string, bytes: number): number {
  if (!warmBuf) {
    warmBuf = Buffer.allocUnsafeSlow(CHUNK);
    for (let i = 0; i < CHUNK; i += 8) warmBuf.writeBigUInt64LE(0xc0ffee0000000000n | BigInt(i), i);
  }
  const t0 = now();
  const fd = fs.openSync(file, 'w', 0o600);
  let left = bytes;
  while (left > 0) {
    const n = Math.min(left, CHUNK);
    let off = 0;
    while (off < n) off += fs.writeSync(fd, warmBuf, off, n - off);
    left -= n;
  }
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  return msSince(t0);
}

/** Copy the loaded page data into freshly allocated memory (page faults + memcpy). */
function freshCopy(img: LoadedImage): number {
  const total = img.pages.reduce((s, p) => s + p.data.length, 0);
  const t0 = now();
  const dst = Buffer.allocUnsafeSlow(total);
  let off = 0;
  for (const p of img.pages) off += p.data.copy(dst, off);
  const t = msSince(t0);
  checkCopy(img, dst);
  return t;
}

/**
 * The same data moved with process_vm_writev (what a restart uses) into
 * fresh memory of this process: the kernel faults the pages in itself.
 */
function freshVmWritev(img: LoadedImage): number {
  const total = img.pages.reduce((s, p) => s + p.data.length, 0);
  const t0 = now();
  const dst = Buffer.allocUnsafeSlow(total);
  const base = addressOf(dst);
  let off = 0;
  for (const p of img.pages) {
    processVmWritev(process.pid, p.data, 0, [{ addr: base + off, len: p.data.length }]);
    off += p.data.length;
  }
  const t = msSince(t0);
  checkCopy(img, dst);
  return t;
}

function checkCopy(img: LoadedImage, dst: Buffer): void {
  const last = img.pages[img.pages.length - 1].data;
  if (dst.length === 0 || dst[dst.length - 1] !== last[last.length - 1] || dst[0] !== img.pages[0].data[0]) throw new Error('copy check failed');
}

// ---- section 1: checkpoint of 1 GiB ------------------------------------------------------

interface CkptStats {
  where: string;
  dir: string;
  fsType: string;
  ckptMs: number[];
  frozenMs: number[];
  plainMs: number[];
  imageBytes: number;
  pageBytes: number;
}

async function oneCheckpointRound(pid: number, s: CkptStats, round: number, keep: string | undefined): Promise<{ ckpt: number; plain: number; frozen: number }> {
  const img = path.join(s.dir, `memhog-${round}.img`);
  const plain = path.join(s.dir, `plain-${round}.bin`);
  let ckpt = 0, frozen = 0, plainT = 0;
  const doCkpt = async () => {
    const t0 = now();
    const r = await checkpoint(pid, img);
    ckpt = msSince(t0);
    frozen = r.frozenMs;
    s.imageBytes = r.imageBytes;
    s.pageBytes = r.pageBytes;
  };
  const doPlain = () => { plainT = plainWrite(plain, s.imageBytes || BIG_MIB * MIB); };
  // Interleave, alternating which goes first.
  if (round % 2 === 0) { await doCkpt(); doPlain(); } else { doPlain(); await doCkpt(); }
  fs.rmSync(plain, { force: true });
  if (keep) fs.renameSync(img, keep);
  else fs.rmSync(img, { force: true });
  return { ckpt, plain: plainT, frozen };
}

// ---- the command-line table: whole commands in fresh processes ----------------------

/** What one spawned command said about itself. */
interface CliRun { ms: number; stdout: string; stderr: string; rssKiB?: number; frozenMs?: number; pageBytes?: number; imageBytes?: number }

/** Run `bin/stasis ARGS` as a user runs it (the script itself, through its #! line); it must succeed. */
function stasisCmd(args: string[]): CliRun {
  const t0 = now();
  const r = spawnSync(CLI, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', env: { ...process.env, STASIS_REPORT_RSS: '1' } });
  const t = msSince(t0);
  if (r.status !== 0) throw new Error(`stasis ${args.join(' ')} failed (status ${r.status}, signal ${r.signal}): ${r.stdout}${r.stderr}`);
  const num = (re: RegExp) => { const m = re.exec(r.stderr); return m ? Number(m[1]) : undefined; };
  return {
    ms: t, stdout: r.stdout, stderr: r.stderr,
    rssKiB: num(/^stasis: peak RSS (\d+) KiB$/m),
    frozenMs: num(/, frozen ([\d.]+) ms$/m),
    imageBytes: num(/ (\d+) bytes \(\d+ of pages\)/m),
    pageBytes: num(/ bytes \((\d+) of pages\)/m),
  };
}

/** A plain command (the limits), timed the same way. */
function plainCmd(file: string, args: string[], env = process.env): number {
  const t0 = now();
  const r = spawnSync(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  const t = msSince(t0);
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')} failed: ${r.stderr}`);
  return t;
}

/** dd of `bytes` zeros to a new file, 8 MiB a write, fsync'ed like an image. */
function ddWrite(file: string, bytes: number): number {
  const t = plainCmd('dd', ['if=/dev/zero', `of=${file}`, 'bs=8M', `count=${bytes}`, 'iflag=count_bytes', 'conv=fsync', 'status=none']);
  fs.rmSync(file, { force: true });
  return t;
}

const nodeE0 = (): number => plainCmd(process.execPath, ['-e', '0']);
/**
 * bin/stasis starts node without NODE_EXTRA_CA_CERTS (reading those
 * certificates is most of `node -e 0` where it is set): a node started
 * the same way is the fair floor for a small command.
 */
const CA_SET = process.env.NODE_EXTRA_CA_CERTS !== undefined;
const nodeE0AsStasis = (): number => {
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  return plainCmd(process.execPath, ['-e', '0'], env);
};

/** The pid `stasis restart -d` printed; a stranger (orphaned to us) until killed. */
function restoredPid(r: CliRun): number {
  const pid = Number(/^(\d+)\n$/.exec(r.stdout)?.[1]);
  if (!(pid > 0)) throw new Error(`restart -d printed no pid: ${r.stdout}${r.stderr}`);
  strangers.add(pid);
  return pid;
}

const kib = (k: number | undefined) => (k === undefined ? '?' : k >= 1024 ? `${(k / 1024).toFixed(0)} MiB` : `${k} KiB`);
const medianOf = (xs: Array<number | undefined>) => median(xs.filter((x): x is number => x !== undefined));

interface CliRow { work: string; stasis: string; limit: string; target: string; frozen: string; rss: string }

async function cliSection(dirs: { shm: string; disk: string; out: string }, rows: CliRow[], details: string[]): Promise<void> {
  const memhog = build('memhog');
  const many = build('many');
  nodeE0(); // warm up the machine (not stasis)

  // ---- a tiny process: `sleep`, checkpointed while it runs, restored beside it (a new pid).
  // First, before any large write: after the 1 GiB rounds (and even after
  // the 256 MiB warm-up writes) the VM spends a while giving that memory
  // back, and every start-up measured then (`node -e 0` too) came out
  // 70-115 ms instead of ~71.
  const tinyRows: CliRow[] = [], tinyDetails: string[] = [];
  {
    const out = path.join(dirs.out, 'cli-sleep.out');
    const sl = startTarget('/bin/sleep', ['100000'], out);
    const until = Date.now() + 5000;
    while (!/^(230|35) /.test((() => { try { return fs.readFileSync(`/proc/${sl}/syscall`, 'utf8'); } catch { return ''; } })())) {
      if (Date.now() > until) throw new Error(`sleep (pid ${sl}) did not reach its nanosleep`);
      await sleep(2);
    }
    const img = path.join(dirs.shm, 'cli-sleep.img');
    const node: number[] = [], bare: number[] = [], ckpt: CliRun[] = [], rst: CliRun[] = [];
    for (let i = 0; i < CLI_TINY_RUNS; i++) {
      const steps = [
        () => { node.push(nodeE0()); },
        () => { if (CA_SET) bare.push(nodeE0AsStasis()); },
        () => { ckpt.push(stasisCmd(['checkpoint', String(sl), '-o', img, '-v'])); },
      ];
      for (const step of i % 2 ? steps.reverse() : steps) step();
      const r = stasisCmd(['restart', '-d', img]);
      rst.push(r);
      const pid = restoredPid(r);
      const st = procState(pid);
      if (st === undefined || st === 'Z') throw new Error(`restored sleep ${pid} is not running`);
      await killStranger(pid);
    }
    killChild(sl);
    fs.rmSync(img, { force: true });
    const n = median(node);
    // The target is judged against node started as stasis starts it.
    const floor = CA_SET ? median(bare) : n;
    const signed = (x: number) => `${x < 0 ? '−' : '+'}${f1(Math.abs(x))} ms`;
    for (const [what, runs] of [['checkpoint of `sleep` (it keeps running)', ckpt], ['restart -d of `sleep`', rst]] as const) {
      const m = medianOf(runs.map((x) => x.ms));
      tinyRows.push({
        work: what,
        stasis: ms(m),
        limit: CA_SET ? `\`node -e 0\` started as stasis starts (no NODE_EXTRA_CA_CERTS): ${ms(floor)}; as set here: ${ms(n)}` : `\`node -e 0\`: ${ms(n)}`,
        target: `${signed(m - floor)} (≤ +${TARGET.tinyCliExtraMs} ms: ${m - floor <= TARGET.tinyCliExtraMs ? 'met' : 'not yet'})${CA_SET ? `; ${signed(m - n)} against \`node -e 0\` as set here` : ''}`,
        frozen: runs === ckpt ? ms(medianOf(ckpt.map((x) => x.frozenMs))) : '',
        rss: kib(medianOf(runs.map((x) => x.rssKiB))),
      });
    }
    tinyDetails.push(`- CLI sleep: checkpoint ms [${samples(ckpt.map((x) => x.ms))}], frozen ms [${samples(ckpt.map((x) => x.frozenMs ?? NaN))}]; restart -d ms [${samples(rst.map((x) => x.ms))}]; node -e 0 ms [${samples(node)}]${CA_SET ? `; node -e 0 without NODE_EXTRA_CA_CERTS ms [${samples(bare)}]` : ''}`);
  }

  // Warm up dd and the page cache of both places.
  ddWrite(path.join(dirs.shm, 'warm.bin'), 256 * MIB);
  ddWrite(path.join(dirs.disk, 'warm.bin'), 256 * MIB);

  if (!SMALL) {
    // ---- 1 GiB: checkpoint --kill to /dev/shm, restart -d, checkpoint --kill
    // of the restored one to disk, restart -d from there; the last restored
    // memhog checks all its memory, which proves both images.
    const places = [{ where: '/dev/shm', dir: dirs.shm }, { where: `disk (${fsTypeOf(dirs.disk)})`, dir: dirs.disk }];
    const ck = places.map(() => ({ runs: [] as CliRun[], dd: [] as number[] }));
    const rs = places.map(() => [] as CliRun[]);
    let verified = 0;
    for (let round = 0; round < CLI_BIG_RUNS; round++) {
      const hogOut = path.join(dirs.out, `cli-memhog-${round}.out`);
      let pid = startTarget(memhog, [String(BIG_MIB)], hogOut);
      await waitFor(hogOut, /^ready$/m, 60000);
      for (const [i, place] of places.entries()) {
        const img = path.join(place.dir, 'cli-memhog.img');
        const ddFirst = (round + i) % 2 === 0;
        // Each timed step starts from the same memory state: in this VM the
        // first GiB written after the host took memory back runs at half
        // speed or less, and that fell on whichever of dd or stasis came
        // first. An untimed GiB written and freed just before puts both on
        // memory the guest has just had (a pause instead made it worse: the
        // host takes memory back meanwhile).
        const settle = () => ddWrite(path.join(dirs.shm, 'settle.bin'), BIG_MIB * MIB);
        if (ddFirst) settle();
        let dd = ddFirst ? ddWrite(path.join(place.dir, 'plain.bin'), BIG_MIB * MIB) : 0;
        settle();
        const c = stasisCmd(['checkpoint', String(pid), '-o', img, '--kill', '-v']);
        if (!ddFirst) {
          settle();
          dd = ddWrite(path.join(place.dir, 'plain.bin'), c.imageBytes ?? BIG_MIB * MIB);
        }
        ck[i].runs.push(c); ck[i].dd.push(dd);
        // The killed target must be gone (reaped: ours, or ours as subreaper) before its pid is restored.
        await waitAllGone([pid]);
        settle();
        const r = stasisCmd(['restart', '-d', img, '-v']);
        const back = restoredPid(r);
        if (back !== pid) throw new Error(`restart -d restored pid ${back}, not ${pid}`);
        rs[i].push(r);
        fs.rmSync(img, { force: true });
        pid = back;
        log(`  cli 1 GiB → ${place.where}: checkpoint ${ms(c.ms)} (frozen ${ms(c.frozenMs ?? NaN)}, dd ${ms(dd)}), restart -d ${ms(r.ms)}`);
      }
      process.kill(pid, 'SIGUSR1');
      await waitLines(hogOut, 'verified', 1);
      await waitAllGone([pid]);
      verified++;
    }
    const pageBytes = ck[0].runs[0].pageBytes ?? BIG_MIB * MIB;
    for (const [i, place] of places.entries()) {
      const c = medianOf(ck[i].runs.map((x) => x.ms)), d = median(ck[i].dd);
      // Against dd's fastest round: this VM slows dd up to 3x in some
      // rounds while stasis's own times hardly move (0.53-0.59 s through
      // rounds where dd took 0.50-1.54 s), so a ratio taken round by round
      // read as met by luck. The limit is what a plain write did at best.
      const ddBest = Math.min(...ck[i].dd);
      const ratio = ddBest / c;
      rows.push({
        work: `checkpoint 1 GiB, \`--kill\`, image on ${place.where}`,
        stasis: `${f2(c / 1000)} s (${f2(gbs(pageBytes, c))} GB/s)`,
        limit: `\`dd\` of as many bytes + fsync: ${f2(d / 1000)} s (${f2(Math.min(...ck[i].dd) / 1000)}-${f2(Math.max(...ck[i].dd) / 1000)})`,
        target: `${f2(ratio)} of the fastest dd's speed (≥ ${TARGET.ckptRatio}: ${ratio >= TARGET.ckptRatio ? 'met' : 'not yet'})`,
        frozen: `${f2(medianOf(ck[i].runs.map((x) => x.frozenMs)) / 1000)} s`,
        rss: kib(medianOf(ck[i].runs.map((x) => x.rssKiB))),
      });
      details.push(`- CLI checkpoint 1 GiB → ${place.where} ms [${samples(ck[i].runs.map((x) => x.ms))}]; frozen ms [${samples(ck[i].runs.map((x) => x.frozenMs ?? NaN))}]; dd ms [${samples(ck[i].dd)}]; peak RSS KiB [${ck[i].runs.map((x) => x.rssKiB).join(', ')}]`);
    }
    for (const [i, place] of places.entries()) {
      const r = medianOf(rs[i].map((x) => x.ms));
      rows.push({
        work: `restart -d of the 1 GiB image on ${place.where} (in the page cache)`,
        stasis: `${f2(r / 1000)} s (${f2(gibs(pageBytes, r))} GiB/s restored)`,
        limit: '',
        target: `≥ ${TARGET.restoreGiBs} GiB/s: ${gibs(pageBytes, r) >= TARGET.restoreGiBs ? 'met' : 'not yet'}`,
        frozen: '',
        rss: kib(medianOf(rs[i].map((x) => x.rssKiB))),
      });
      details.push(`- CLI restart -d 1 GiB from ${place.where} ms [${samples(rs[i].map((x) => x.ms))}]; peak RSS KiB [${rs[i].map((x) => x.rssKiB).join(', ')}]`);
    }
    details.push(`- the restored 1 GiB memhog verified all its memory in ${verified}/${CLI_BIG_RUNS} rounds (after two checkpoints and two restarts each)`);
  }

  // The tiny process's rows, measured first, follow the 1 GiB ones.
  rows.push(...tinyRows);
  details.push(...tinyDetails);

  // ---- 100 processes, 100 threads: checkpoint --kill, restart -d with the same pids.
  for (const kind of ['procs', 'threads'] as const) {
    const unit = kind === 'procs' ? 'process' : 'thread';
    const ckpt: CliRun[] = [], rst: CliRun[] = [];
    let ok = 0;
    for (let round = 0; round < CLI_MANY_RUNS; round++) {
      const out = path.join(dirs.out, `cli-many-${kind}-${round}.out`);
      const pid = startTarget(many, [kind, String(MANY_N)], out);
      await waitFor(out, (t) => /^ready$/m.test(t) || /^FAIL/m.test(t), 60000);
      const tasksOf = (root: number) => (kind === 'procs' ? scanTree(root).map((p) => p.pid) : listThreads(root));
      const before = tasksOf(pid);
      if (before.length !== MANY_N) throw new Error(`many ${kind} ${MANY_N}: found ${before.length} tasks`);
      if (kind === 'procs') for (const p of before) if (p !== pid) strangers.add(p);
      const img = path.join(dirs.shm, 'cli-many.img');
      ckpt.push(stasisCmd(['checkpoint', String(pid), '-o', img, '--kill', '-v']));
      await waitAllGone(before);
      const r = stasisCmd(['restart', '-d', img]);
      rst.push(r);
      const root = restoredPid(r);
      const after = tasksOf(root);
      if (kind === 'procs') for (const p of after) strangers.add(p);
      const tasks = kind === 'procs' ? after.map(String) : after.map((t) => `${root}/task/${t}`);
      if (root === pid && sameSet(after, before) && (await allInPause(tasks))) ok++;
      for (const p of kind === 'procs' ? after : [root]) {
        try { process.kill(p, 'SIGKILL'); } catch { /* ended */ }
      }
      await waitAllGone(kind === 'procs' ? after : [root]);
      fs.rmSync(img, { force: true });
      log(`  cli many ${kind} ${MANY_N}: checkpoint ${ms(ckpt[round].ms)} (frozen ${ms(ckpt[round].frozenMs ?? NaN)}), restart -d ${ms(r.ms)}`);
    }
    const what = kind === 'procs' ? `tree of ${MANY_N} processes` : `one process with ${MANY_N} threads`;
    for (const [verb, runs] of [['checkpoint `--kill` of a', ckpt], ['restart -d of a', rst]] as const) {
      const m = medianOf(runs.map((x) => x.ms));
      rows.push({
        work: `${verb} ${what}`.replace(" a one ", " one "),
        stasis: `${ms(m)} (${f2(m / MANY_N)} ms per ${unit})`,
        limit: '',
        target: runs === rst ? `same ${MANY_N} ${kind === 'procs' ? 'pids' : 'tids'}, all back in pause(): ${ok}/${CLI_MANY_RUNS}` : '',
        frozen: runs === ckpt ? ms(medianOf(ckpt.map((x) => x.frozenMs))) : '',
        rss: kib(medianOf(runs.map((x) => x.rssKiB))),
      });
    }
    details.push(`- CLI many ${kind} ${MANY_N}: checkpoint --kill ms [${samples(ckpt.map((x) => x.ms))}], frozen ms [${samples(ckpt.map((x) => x.frozenMs ?? NaN))}]; restart -d ms [${samples(rst.map((x) => x.ms))}]`);
  }
}

function cliTable(rows: CliRow[]): string[] {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    '| work (whole `stasis` command, fresh process, median) | stasis | limit measured in the same run | ratio / target | target frozen | stasis peak RSS |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${esc(r.work)} | ${esc(r.stasis)} | ${esc(r.limit)} | ${esc(r.target)} | ${esc(r.frozen)} | ${esc(r.rss)} |`),
  ];
}

// ---- main -------------------------------------------------------------------------------

interface Row { figure: string; measured: string; limit: string; target: string; met: string }

async function main(): Promise<void> {
  const env = environment();
  log(env);
  try {
    // PR_SET_CHILD_SUBREAPER (36): processes the CLI restores become ours when it exits.
    syscall(SYS.prctl, 'prctl(PR_SET_CHILD_SUBREAPER)', 36, 1);
    subreaper = true;
  } catch { /* poll for their end only */ }

  const memhog = build('memhog');
  const shmDir = fs.mkdtempSync('/dev/shm/stasis-bench-');
  const dskDir = diskDir();
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stasis-bench-out-'));
  const rows: Row[] = [];
  const details: string[] = [];
  const t0Total = now();

  try {
    const cliRows: CliRow[] = [];
    if (!LIB_ONLY) {
      log('command-line table: whole commands, fresh processes');
      await cliSection({ shm: shmDir, disk: dskDir, out: outDir }, cliRows, details);
      if (!SMALL) {
        // Issue #9: the pause a client of a server sees, whole commands again.
        log('redis-server with 100k keys: the pause its connected client sees');
        const rp = await redisPause({ keys: 100_000, rounds: 3 });
        cliRows.push({
          work: 'pause a connected redis client sees (100k keys): `checkpoint --kill --tcp-established`, then at once `restart -d`',
          stasis: ms(rp.killRestartMedianMs), limit: `${ms(rp.baselineMs)} (a PING before)`, target: '', frozen: '', rss: '',
        }, {
          work: 'pause a connected redis client sees (100k keys): snapshot left running (`--tcp-established`)',
          stasis: ms(rp.snapshotMedianMs), limit: `${ms(rp.baselineMs)} (a PING before)`, target: '', frozen: '', rss: '',
        });
        details.push(`- redis pause: kill+restart ms [${samples(rp.killRestartMs)}], snapshot ms [${samples(rp.snapshotMs)}], baseline PING ${ms(rp.baselineMs)}`);
      }
    }
    let ckptRounds = 0, restartRounds = 0;
    if (!CLI_ONLY) {
      log('library table');
      // --small (npm run bench -- --small) leaves out the 1 GiB sections;
      // its table goes to stdout only, never over bench/results.md.
      if (!SMALL) {
        // ---------------- 1. checkpoint of 1 GiB ----------------
        const hogOut = path.join(outDir, 'memhog.out');
        const hog = startTarget(memhog, [String(BIG_MIB)], hogOut);
        await waitFor(hogOut, /^ready$/m, 60000);
        log(`memhog ${BIG_MIB} MiB ready (pid ${hog})`);

        const stats: CkptStats[] = [
          { where: '/dev/shm', dir: shmDir, fsType: fsTypeOf(shmDir), ckptMs: [], frozenMs: [], plainMs: [], imageBytes: 0, pageBytes: 0 },
          { where: 'disk', dir: dskDir, fsType: fsTypeOf(dskDir), ckptMs: [], frozenMs: [], plainMs: [], imageBytes: 0, pageBytes: 0 },
        ];
        const bigImage = path.join(shmDir, 'memhog.img');
        // Warm-up round (untimed), which also sizes the number of measured rounds.
        const tw = now();
        for (const s of stats) await oneCheckpointRound(hog, s, 0, undefined);
        ckptRounds = roundsFor(msSince(tw), BIG_BUDGET_S.checkpoint);
        log(`checkpoint warm-up done in ${f1(msSince(tw) / 1000)} s; ${ckptRounds} measured rounds`);
        for (let round = 1; round <= ckptRounds; round++) {
          for (const s of round % 2 ? stats : [...stats].reverse()) {
            const keep = s.dir === shmDir && round === ckptRounds ? bigImage : undefined;
            const r = await oneCheckpointRound(hog, s, round, keep);
            s.ckptMs.push(r.ckpt);
            s.plainMs.push(r.plain);
            s.frozenMs.push(r.frozen);
            log(`  ${s.where}: checkpoint ${ms(r.ckpt)} (frozen ${ms(r.frozen)}), plain write+fsync ${ms(r.plain)}`);
          }
        }
        // The checkpointed process must still be intact: let it verify itself.
        process.kill(hog, 'SIGUSR1');
        await waitLines(hogOut, 'verified', 1);
        const hogStatus = reapChild(hog);
        if (hogStatus !== 0) throw new Error(`memhog exited with status 0x${hogStatus.toString(16)} after the checkpoints`);
        log('original memhog verified its memory after the checkpoints and exited');

        for (const s of stats) {
          const c = median(s.ckptMs), p = median(s.plainMs), fr = median(s.frozenMs);
          const ratio = p / c;
          const label = `${s.where} (${s.fsType}, ${s.dir})`;
          rows.push({
            figure: `1. Checkpoint 1 GiB memhog → ${label}: wall time of checkpoint() (pipelined)`,
            measured: ms(c),
            limit: `${ms(p)} (plain writeSync 8 MiB chunks + fsync, ${size(s.imageBytes)})`,
            target: `plain/ckpt = ${f2(ratio)} (≥ ${TARGET.ckptRatio})`,
            met: yes(ratio >= TARGET.ckptRatio),
          });
          rows.push({
            figure: `1. … throughput (pageBytes / wall time)`,
            measured: `${f2(gbs(s.pageBytes, c))} GB/s`,
            limit: `${f2(gbs(s.imageBytes, p))} GB/s (plain write)`,
            target: '', met: '',
          });
          rows.push({
            figure: `1. … frozenMs (target stopped)`,
            measured: ms(fr),
            limit: `${ms(c)} (its checkpoint wall time, for reference)`,
            target: '', met: '',
          });
          rows.push({
            figure: `1. … image size`,
            measured: `${size(s.imageBytes)} (${s.imageBytes} B)`,
            limit: `${size(s.pageBytes)} of pages (${BIG_MIB} MiB written by memhog)`,
            target: '', met: '',
          });
          details.push(`- checkpoint → ${s.where}: checkpoint() ms [${samples(s.ckptMs)}]; frozen ms [${samples(s.frozenMs)}]; plain write+fsync ms [${samples(s.plainMs)}]`);
        }
        const bigPageBytes = stats[0].pageBytes;

        // ---------------- 2. restart of the 1 GiB image ----------------
        const loadMs: number[] = [], restartMs: number[] = [], totalMs: number[] = [], readMs: number[] = [], copyMs: number[] = [], pvwMs: number[] = [];
        let verifiedRuns = 0;
        let verifiedSeen = 1; // the original's "verified" line
        const restartRound = async (measure: boolean, round: number): Promise<number> => {
          const tr = now();
          // Limit 1: plain read of the image file into memory.
          const plainRead = (): number => {
            gc();
            const t0 = now();
            let raw: Buffer | undefined = fs.readFileSync(bigImage);
            const t = msSince(t0);
            if (raw.length !== stats[0].imageBytes) throw new Error('short read');
            raw = undefined;
            gc();
            return t;
          };
          // Limit 2: the loaded page data put into fresh memory of this process,
          // with process_vm_writev (as the restart does) and with memcpy.
          const limits = (img: LoadedImage): { pvw: number; copy: number } => {
            gc();
            const pvw = freshVmWritev(img);
            gc();
            const copy = freshCopy(img);
            gc();
            return { pvw, copy };
          };
          // Interleaved: even rounds measure the limits around stasis, odd
          // rounds the other way round.
          let read = 0, load = 0, rst = 0, lim = { pvw: 0, copy: 0 };
          let r: Restarted;
          let img: LoadedImage | undefined;
          if (round % 2 === 0) read = plainRead();
          let t0 = now();
          img = loadImage(bigImage);
          load = msSince(t0);
          if (round % 2 === 1) lim = limits(img);
          t0 = now();
          r = restartSync(img);
          rst = msSince(t0);
          children.add(r.pid);
          if (round % 2 === 0) lim = limits(img);
          img = undefined;
          gc();
          if (round % 2 === 1) read = plainRead();
          const { pvw, copy } = lim;
          // Correctness: the restored process verifies its 1 GiB and exits 0.
          process.kill(r.pid, 'SIGUSR1');
          await waitLines(hogOut, 'verified', ++verifiedSeen);
          const end = await r.wait();
          children.delete(r.pid);
          if (end.code !== 0) throw new Error(`restored memhog ended with ${JSON.stringify(end)}`);
          if (measure) {
            verifiedRuns++;
            loadMs.push(load); restartMs.push(rst); totalMs.push(load + rst); readMs.push(read); copyMs.push(copy); pvwMs.push(pvw);
            log(`  restart: loadImage ${ms(load)} (plain read ${ms(read)}), restartSync ${ms(rst)} (process_vm_writev ${ms(pvw)}, memcpy ${ms(copy)} into fresh memory), verified`);
          }
          return msSince(tr);
        };
        const oneRestart = await restartRound(false, 0);
        restartRounds = roundsFor(oneRestart, BIG_BUDGET_S.restart);
        log(`restart warm-up done in ${f1(oneRestart / 1000)} s; ${restartRounds} measured rounds`);
        for (let i = 0; i < restartRounds; i++) await restartRound(true, i);
        fs.rmSync(bigImage, { force: true });
        {
          const l = median(loadMs), r = median(restartMs), t = median(totalMs), rd = median(readMs), cp = median(copyMs), pv = median(pvwMs);
          rows.push({
            figure: '2. Restart 1 GiB: loadImage (read + verify, from /dev/shm)',
            measured: `${ms(l)} (${f2(gibs(bigPageBytes, l))} GiB/s)`,
            limit: `${ms(rd)} (fs.readFileSync of the image, ${f2(gibs(stats[0].imageBytes, rd))} GiB/s)`,
            target: `read/load = ${f2(rd / l)}`, met: '',
          });
          rows.push({
            figure: '2. … restartSync(loaded image)',
            measured: `${ms(r)} (${f2(gibs(bigPageBytes, r))} GiB/s)`,
            limit: `${ms(pv)} (process_vm_writev of the pages into fresh memory here, ${f2(gibs(bigPageBytes, pv))} GiB/s; memcpy: ${ms(cp)}, ${f2(gibs(bigPageBytes, cp))} GiB/s)`,
            target: `≥ ${TARGET.restoreGiBs} GiB/s`, met: yes(gibs(bigPageBytes, r) >= TARGET.restoreGiBs),
          });
          rows.push({
            figure: '2. … total (loadImage + restartSync), memory restored',
            measured: `${ms(t)} (${f2(gibs(bigPageBytes, t))} GiB/s)`,
            limit: `${ms(rd + pv)} (plain read + process_vm_writev, ${f2(gibs(bigPageBytes, rd + pv))} GiB/s)`,
            target: `≥ ${TARGET.restoreGiBs} GiB/s`, met: yes(gibs(bigPageBytes, t) >= TARGET.restoreGiBs),
          });
          rows.push({
            figure: '2. … restored process correct (SIGUSR1 → "verified", exit 0)',
            measured: `${verifiedRuns}/${restartRounds} runs (+ warm-up)`,
            limit: '', target: 'all', met: yes(verifiedRuns === restartRounds),
          });
          details.push(`- restart 1 GiB: loadImage ms [${samples(loadMs)}]; restartSync ms [${samples(restartMs)}]; plain read ms [${samples(readMs)}]; process_vm_writev into fresh memory ms [${samples(pvwMs)}]; memcpy into fresh memory ms [${samples(copyMs)}]`);
        }
      }

      // ---------------- 3. tiny process: sleep 1000 ----------------
      const sleepOut = path.join(outDir, 'sleep.out');
      const sl = startTarget('/bin/sleep', ['1000'], sleepOut);
      // /bin/sleep prints nothing: wait until it is in clock_nanosleep (230) / nanosleep (35).
      {
        const until = Date.now() + 5000;
        const inSleep = () => { try { return /^(230|35) /.test(fs.readFileSync(`/proc/${sl}/syscall`, 'utf8')); } catch { return false; } };
        while (!inSleep()) {
          if (Date.now() > until) throw new Error(`sleep (pid ${sl}) did not reach its nanosleep`);
          await sleep(2);
        }
      }
      const tinyImage = path.join(shmDir, 'sleep.img');
      const tinyCkpt: number[] = [], tinyFrozen: number[] = [];
      let tinyBytes = 0, tinyPages = 0;
      for (let i = 0; i <= TINY_CKPT_RUNS; i++) {
        const t0 = now();
        const r = checkpointSync(sl, tinyImage);
        const t = msSince(t0);
        tinyBytes = r.imageBytes; tinyPages = r.pageBytes;
        if (i > 0) { tinyCkpt.push(t); tinyFrozen.push(r.frozenMs); }
      }
      rows.push({
        figure: '3. Tiny process (`/bin/sleep 1000`, glibc dynamic) → /dev/shm: checkpointSync wall time',
        measured: ms(median(tinyCkpt)), limit: '', target: '', met: '',
      });
      rows.push({ figure: '3. … frozenMs', measured: ms(median(tinyFrozen)), limit: '', target: '', met: '' });
      rows.push({ figure: '3. … image size', measured: `${size(tinyBytes)} (${tinyBytes} B, ${size(tinyPages)} of pages)`, limit: '', target: '', met: '' });
      details.push(`- sleep checkpoint (median of ${TINY_CKPT_RUNS} after 1 warm-up): ms [${samples(tinyCkpt)}]; frozen ms [${samples(tinyFrozen)}]`);

      // (a) library mode, beside posix_spawn + exec + exit + reap of /bin/true.
      const tinyImg = loadImage(tinyImage);
      const libMs: number[] = [], libVerifyMs: number[] = [], spawnMs: number[] = [];
      const libRestart = async (verify: boolean): Promise<number> => {
        const t0 = now();
        const r = restartSync(tinyImg, { verify });
        const t = msSince(t0);
        children.add(r.pid);
        if (procState(r.pid) === undefined) throw new Error('restored sleep is gone');
        try { process.kill(r.pid, 'SIGKILL'); } catch { /* ended */ }
        const end = await r.wait();
        children.delete(r.pid);
        if (end.signal !== 9) throw new Error(`restored sleep ended with ${JSON.stringify(end)} instead of SIGKILL (it did not keep sleeping)`);
        return t;
      };
      let libTurn = 0;
      const libRound = async (measure: boolean) => {
        // Interleaved, alternating which goes first.
        const first = libTurn++ % 2 === 0;
        const a = await libRestart(!first);
        const b = await libRestart(first);
        const [t, tv] = first ? [a, b] : [b, a];
        const t0 = now();
        const p = posixSpawn('/bin/true', ['true'], { env: [], closeFrom: 3 });
        children.add(p);
        const st = reapChild(p);
        const ts = msSince(t0);
        if (st !== 0) throw new Error('/bin/true failed');
        if (measure) { libMs.push(t); libVerifyMs.push(tv); spawnMs.push(ts); }
      };
      await libRound(false);
      for (let i = 0; i < TINY_LIB_RUNS; i++) await libRound(true);
      {
        const m = median(libMs);
        rows.push({
          figure: `3a. Restart tiny, library: restartSync(loaded image), median of ${TINY_LIB_RUNS}`,
          measured: ms(m),
          limit: `${ms(median(spawnMs))} (posix_spawn + exec + exit + waitpid of /bin/true)`,
          target: `< ${TARGET.tinyLibMs} ms`, met: yes(m < TARGET.tinyLibMs),
        });
        const v = median(libVerifyMs);
        rows.push({
          figure: `3a. … restartSync(loaded image, { verify: true }), median of ${TINY_LIB_RUNS}`,
          measured: ms(v),
          limit: `${ms(m)} (the same restart without verify, interleaved)`,
          target: `+${f1(v - m)} ms (×${f2(v / m)})`, met: '',
        });
        details.push(`- restartSync of sleep ms [${samples(libMs)}]; with verify ms [${samples(libVerifyMs)}]; posix_spawn /bin/true ms [${samples(spawnMs)}]`);
      }

      killChild(sl);
      fs.rmSync(tinyImage, { force: true });

      // ---------------- 4. a tree of 100 processes, a process of 100 threads ----------------
      const many = build('many');
      const manyImage = path.join(shmDir, 'many.img');
      interface ManyStats {
        ckptMs: number[]; freezeMs: number[]; frozenMs: number[]; goneMs: number[]; loadMs: number[]; restartMs: number[];
        imageBytes: number; pageBytes: number; verified: number;
      }
      /**
       * One round: start `many KIND N`, checkpoint it with kill into /dev/shm,
       * wait until every pid (tid) of it is gone, loadImage, restartSync with
       * the original pids, check the restored tree, kill it by pid and reap.
       */
      const manyRound = async (kind: 'procs' | 'threads', s: ManyStats, round: number, measure: boolean, verify = false): Promise<void> => {
        const out = path.join(outDir, `many-${kind}-${round}${verify ? '-verify' : ''}.out`);
        const pid = startTarget(many, [kind, String(MANY_N)], out);
        await waitFor(out, (t) => /^ready$/m.test(t) || /^FAIL/m.test(t), 60000);
        if (/^FAIL/m.test(fs.readFileSync(out, 'utf8'))) throw new Error(`many ${kind}: ${fs.readFileSync(out, 'utf8')}`);
        // The tasks as they were: pids of the tree, or tids of the process.
        const tasksOf = (root: number) => (kind === 'procs' ? scanTree(root).map((p) => p.pid) : listThreads(root));
        const before = tasksOf(pid);
        if (before.length !== MANY_N) throw new Error(`many ${kind} ${MANY_N}: found ${before.length} tasks`);
        if (kind === 'procs') for (const p of before) if (p !== pid) strangers.add(p);

        let t0 = now();
        const c = checkpointSync(pid, manyImage, { kill: true });
        const ckpt = msSince(t0);
        const wantProcs = kind === 'procs' ? MANY_N : 1;
        if (c.processes !== wantProcs || c.threads !== MANY_N) throw new Error(`checkpoint of many ${kind}: ${c.processes} processes, ${c.threads} threads in the image`);
        // Restoring reuses the original pids (and tids): all must be gone first.
        t0 = now();
        await waitAllGone(before);
        const gone = msSince(t0);

        t0 = now();
        const img = loadImage(manyImage);
        const load = msSince(t0);
        t0 = now();
        const r = restartSync(img, { verify });
        const rst = msSince(t0);
        children.add(r.pid);
        const after = tasksOf(r.pid);
        if (kind === 'procs') for (const p of after) if (p !== r.pid) strangers.add(p);
        const tasks = kind === 'procs' ? after.map(String) : after.map((t) => `${r.pid}/task/${t}`);
        const ok = r.pid === pid && sameSet(after, before) && (kind === 'threads' || scanTree(r.pid).every((p) => !p.zombie)) && (await allInPause(tasks));

        // End the restored tree: every pid, by pid; the root is ours (r.wait()), the rest ours as subreaper or init's.
        for (const p of kind === 'procs' ? after : [r.pid]) {
          try { process.kill(p, 'SIGKILL'); } catch { /* ended */ }
        }
        const end = await r.wait();
        children.delete(r.pid);
        await waitAllGone(kind === 'procs' ? after : [r.pid, ...after]);
        fs.rmSync(manyImage, { force: true });
        if (end.signal !== 9) throw new Error(`restored many ${kind} ended with ${JSON.stringify(end)} instead of SIGKILL`);
        if (!ok) log(`  many ${kind}: restored tree differs: ${after.length} tasks (${MANY_N} before), root ${r.pid} (was ${pid}), or not all back in pause()`);
        log(`  many ${kind} ${MANY_N}${verify ? ' --verify' : ''}${measure ? '' : ' (warm-up)'}: checkpoint ${ms(ckpt)} (freeze ${ms(c.freezeMs)}, frozen ${ms(c.frozenMs)}), gone after ${ms(gone)}, loadImage ${ms(load)}, restartSync ${ms(rst)}${ok ? ', verified' : ''}`);
        s.imageBytes = c.imageBytes;
        s.pageBytes = c.pageBytes;
        if (!measure) return;
        s.ckptMs.push(ckpt); s.freezeMs.push(c.freezeMs); s.frozenMs.push(c.frozenMs); s.goneMs.push(gone); s.loadMs.push(load); s.restartMs.push(rst);
        if (ok) s.verified++;
      };
      const manyStats: Record<'procs' | 'threads' | 'procsVerify', ManyStats> = {
        procs: { ckptMs: [], freezeMs: [], frozenMs: [], goneMs: [], loadMs: [], restartMs: [], imageBytes: 0, pageBytes: 0, verified: 0 },
        threads: { ckptMs: [], freezeMs: [], frozenMs: [], goneMs: [], loadMs: [], restartMs: [], imageBytes: 0, pageBytes: 0, verified: 0 },
        procsVerify: { ckptMs: [], freezeMs: [], frozenMs: [], goneMs: [], loadMs: [], restartMs: [], imageBytes: 0, pageBytes: 0, verified: 0 },
      };
      for (const kind of ['procs', 'threads'] as const) {
        await manyRound(kind, manyStats[kind], 0, false);
        if (kind === 'procs') await manyRound(kind, manyStats.procsVerify, 0, false, true);
        for (let i = 1; i <= MANY_RUNS; i++) {
          // The tree's restart with and without --verify, alternating which goes first.
          const order = kind === 'threads' ? [false] : i % 2 ? [false, true] : [true, false];
          for (const verify of order) await manyRound(kind, verify ? manyStats.procsVerify : manyStats[kind], i, true, verify);
        }
      }
      {
        const tinyC = median(tinyCkpt), tinyR = median(libMs);
        const perProcCkpt = median(manyStats.procs.ckptMs) / MANY_N, perProcRst = median(manyStats.procs.restartMs) / MANY_N;
        const sections = [
          { kind: 'procs' as const, tag: '4a', what: `Tree of ${MANY_N} processes (\`many procs ${MANY_N}\`: root + ${MANY_N - 1} forked children, all in pause())`, unit: 'process' },
          { kind: 'threads' as const, tag: '4b', what: `One process with ${MANY_N} threads (\`many threads ${MANY_N}\`: main + ${MANY_N - 1} pthreads, all in pause())`, unit: 'thread' },
        ];
        for (const { kind, tag, what, unit } of sections) {
          const st = manyStats[kind];
          const c = median(st.ckptMs), fz = median(st.freezeMs), fr = median(st.frozenMs), l = median(st.loadMs), r = median(st.restartMs), g = median(st.goneMs);
          const refC = kind === 'procs' ? `${ms(tinyC)} per process (3. tiny \`sleep\` checkpoint)` : `${f2(perProcCkpt)} ms per process (4a)`;
          const refR = kind === 'procs' ? `${ms(tinyR)} per process (3a. tiny \`sleep\` restartSync)` : `${f2(perProcRst)} ms per process (4a)`;
          const ratioC = kind === 'procs' ? `per process / tiny = ${f2(c / MANY_N / tinyC)}` : `per thread / per process = ${f2(c / MANY_N / perProcCkpt)}`;
          const ratioR = kind === 'procs' ? `per process / tiny = ${f2(r / MANY_N / tinyR)}` : `per thread / per process = ${f2(r / MANY_N / perProcRst)}`;
          rows.push({
            figure: `${tag}. ${what} → /dev/shm: checkpointSync({kill: true}) wall time, median of ${MANY_RUNS}`,
            measured: `${ms(c)} (${f2(c / MANY_N)} ms per ${unit})`, limit: refC, target: ratioC, met: '',
          });
          rows.push({
            figure: `${tag}. … freezeMs (first task stopped → last task stopped)`,
            measured: `${ms(fz)} (${f2(fz / MANY_N)} ms per ${unit})`,
            limit: `frozenMs ${ms(fr)} (whole time stopped)`, target: '', met: '',
          });
          rows.push({
            figure: `${tag}. … image size`,
            measured: `${size(st.imageBytes)} (${st.imageBytes} B, ${size(st.pageBytes)} of pages; ${size(st.imageBytes / MANY_N)} per ${unit})`,
            limit: '', target: '', met: '',
          });
          rows.push({
            figure: `${tag}. … restart: loadImage (from /dev/shm)`,
            measured: `${ms(l)} (${f2(l / MANY_N)} ms per ${unit})`, limit: '', target: '', met: '',
          });
          rows.push({
            figure: `${tag}. … restartSync(loaded image), original pids`,
            measured: `${ms(r)} (${f2(r / MANY_N)} ms per ${unit})`, limit: refR, target: ratioR, met: '',
          });
          rows.push({
            figure: `${tag}. … restored ${kind === 'procs' ? 'tree' : 'process'} correct (same ${MANY_N} ${kind === 'procs' ? 'pids' : 'tids'}, every ${unit} back in pause())`,
            measured: `${st.verified}/${MANY_RUNS} runs (+ warm-up)`, limit: '', target: 'all', met: yes(st.verified === MANY_RUNS),
          });
          if (kind === 'procs') {
            const sv = manyStats.procsVerify, v = median(sv.restartMs);
            rows.push({
              figure: `${tag}. … restartSync(loaded image, { verify: true }), median of ${MANY_RUNS}`,
              measured: `${ms(v)} (${f2(v / MANY_N)} ms per ${unit})`,
              limit: `${ms(r)} (the same restart without verify, interleaved)`,
              target: `+${ms(v - r)} (×${f2(v / r)}; ${f2((v - r) / MANY_N)} ms per ${unit})`, met: '',
            });
            rows.push({
              figure: `${tag}. … restored tree correct after a verified restart`,
              measured: `${sv.verified}/${MANY_RUNS} runs (+ warm-up)`, limit: '', target: 'all', met: yes(sv.verified === MANY_RUNS),
            });
            details.push(`- many procs ${MANY_N} with verify: restartSync ms [${samples(sv.restartMs)}]`);
          }
          details.push(`- many ${kind} ${MANY_N} (median of ${MANY_RUNS} after 1 warm-up): checkpointSync ms [${samples(st.ckptMs)}]; freezeMs [${samples(st.freezeMs)}]; frozenMs [${samples(st.frozenMs)}]; killed tree gone after ms [${samples(st.goneMs)}] (median ${ms(g)}); loadImage ms [${samples(st.loadMs)}]; restartSync ms [${samples(st.restartMs)}]`);
        }
      }

    }

    // ---------------- report ----------------
    const esc = (s: string) => s.replace(/\|/g, '\\|');
    const lines = [
      '# stasis benchmark',
      '',
      `Environment: ${env}`,
      '',
      `Run on ${new Date().toISOString()}. GB = 10^9 B, GiB = 2^30 B.`,
      '',
    ];
    if (!LIB_ONLY) {
      lines.push(
        '## Whole commands',
        '',
        `Every figure is a whole \`bin/stasis\` command spawned fresh, as a user runs it (medians: 1 GiB ${CLI_BIG_RUNS} rounds, \`sleep\` ${CLI_TINY_RUNS}, 100 tasks ${CLI_MANY_RUNS}; no warm-up of stasis; each limit measured in the same run, interleaved; each timed 1 GiB step, stasis's or dd's, right after an untimed 1 GiB write to /dev/shm, so that all start with the VM's memory in the same state; the range of dd's times is shown, as this VM's memory speed varies up to 3x, and a checkpoint is compared with the fastest dd of the run). The code cache is the one \`npm run bench\` builds; the first run of each command completes it, as it does for a user (README). "target frozen": how long the target was stopped (\`stasis -v\`); peak RSS: stasis's own (\`STASIS_REPORT_RSS=1\`; a restart maps its image file, whose pages count in it).`,
        '',
        ...cliTable(cliRows),
        '',
      );
    }
    if (!CLI_ONLY) {
      lines.push(
        '## Library',
        '',
        `checkpoint()/restartSync() called in this warm Node process; medians (1 GiB: ${ckptRounds} checkpoint rounds, ${restartRounds} restart rounds, after one untimed warm-up round each; 4a/4b: ${MANY_RUNS} rounds after one warm-up; compared things interleaved).`,
        '',
        '| Figure | Measured | Limit / reference measured in the same run | Ratio / target | Target met |',
        '|---|---|---|---|---|',
        ...rows.map((r) => `| ${esc(r.figure)} | ${esc(r.measured)} | ${esc(r.limit)} | ${esc(r.target)} | ${r.met} |`),
        '',
        'Notes: checkpoint() and checkpointSync fsync the image file they create, so the plain-write limit fsyncs too; both write the image size in bytes.',
        'The restart limits are a plain read of the image file, and its page data put into freshly allocated memory of the bench process with process_vm_writev (the call restartSync uses; the kernel faults the pages) and, for comparison, with memcpy (user-space page faults). First-touch page faults are slow and noisy in this VM, so these fresh-memory references can come out slower than restartSync itself; the absolute 3 GiB/s target is what decides.',
        'The restored 1 GiB memhog is checked every run (SIGUSR1 → it compares all its pages → "verified", exit 0).',
        `Section 4: every round starts a fresh \`many\`, checkpoints it with kill:true, waits until all its pids (tids) are gone (the orphaned children are reaped by this process as child subreaper, or by init), then times loadImage and restartSync apart; the restored tree must have the same ${MANY_N} pids (tids), every task back in pause(); it is then killed by pid and reaped. Per-task cost = wall time / ${MANY_N}.`,
        '',
      );
    }
    lines.push(
      'Samples (ms):',
      '',
      ...details,
      '',
      `Total bench time: ${f1(msSince(t0Total) / 1000)} s.`,
      '',
    );
    const report = lines.join('\n');
    process.stdout.write(report);
    if (!SMALL && !CLI_ONLY && !LIB_ONLY) {
      // The hand-written profile findings at the end of results.md stay.
      const file = path.join(ROOT, 'bench', 'results.md');
      const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
      const kept = old.indexOf(PROFILE_HEADING);
      fs.writeFileSync(file, report + (kept >= 0 ? '\n' + old.slice(kept) : ''));
      log(`wrote ${path.join(ROOT, 'bench', 'results.md')}`);
    }
  } finally {
    await cleanupAll();
    for (const d of [shmDir, dskDir, outDir]) fs.rmSync(d, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`bench failed: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
  },
);

// Seeded fuzzing of untrusted images: real images of three programs are
// mutated (JSON fields dropped, retyped, out of range, huge, deeply nested;
// records duplicated, reordered, inserted, dropped; binary headers edited),
// every checksum recomputed, and then loaded in this process and given to
// whole `stasis show --json` and `stasis restart -d` commands. Each case
// must end in a one-line refusal or a restart; nothing may crash, hang,
// stay behind, or touch a decoy file or a decoy process.
// STASIS_FUZZ_SEED picks another seed; STASIS_FUZZ_CASES sets the number of
// command-line cases (300), STASIS_FUZZ_INPROC the in-process ones (5000).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, CLI, alive, seededRandom } from './harness';
import { checkpointSync, restartSync, StasisError } from '../src';
import { readImageBuffer, RecordType, HEADER_SIZE, MAGIC, FORMAT_VERSION, ImageRecord } from '../src/image/stream';
import { crc32c } from '../src/image/crc32c';
import { parseRecords, LoadedImage } from '../src/image/load';
import { showImage } from '../src/cli/show';
import { fileIdentity, mapVmas, writePages } from '../src/kinds/memory';
import { ImageVma } from '../src/image/schema';
import { Remote } from '../src/ptrace/remote';
import { readStatus, readStat } from '../src/proc';
import { syscall, waitpidSync, WNOHANG, __WALL } from '../src/sys/libc';
import { SYS } from '../src/sys/x86';

const SEED = Number(process.env.STASIS_FUZZ_SEED ?? 12);
const CLI_CASES = Number(process.env.STASIS_FUZZ_CASES ?? 300);
const INPROC_CASES = Number(process.env.STASIS_FUZZ_INPROC ?? 5000);
const CLI_PARALLEL = 2;
const CLI_TIMEOUT_MS = 60_000;

const procs = new Procs();
after(() => procs.cleanup());

const rng = seededRandom;

/** A record as the fuzzer holds it: JSON records as values, binary ones as bytes. */
interface Rec { type: number; json?: unknown; bin?: Buffer; /** the seed's own encoding, while unmutated */ text?: Buffer }
interface Seed { name: string; recs: Rec[] }
/** Raw JSON text spliced in where a string holds this marker (numbers JSON cannot express, deep nesting). */
const RAW = '\u0001raw:';

function toRecs(image: Buffer): Rec[] {
  return readImageBuffer(image, 'seed').map((r) => (r.type === RecordType.Pages ? { type: r.type, bin: r.payload } : { type: r.type, json: JSON.parse(r.payload.toString('utf8')), text: r.payload }));
}

function payloadOf(r: Rec): Buffer {
  if (r.bin) return r.bin;
  if (r.text) return r.text;
  let text = JSON.stringify(r.json);
  if (text.includes('\\u0001raw:')) text = text.replace(/"\\u0001raw:((?:[^"\\]|\\.)*)"/g, (_, raw: string) => JSON.parse(`"${raw}"`));
  return Buffer.from(text, 'utf8');
}

/** How the stream around the records is damaged (checksums always recomputed). */
interface StreamEdit { version?: number; magic?: Buffer; endCount?: number; endJson?: string; noEnd?: boolean; typeOf?: Map<number, number> }

function encode(recs: Rec[], edit: StreamEdit = {}): Buffer {
  const parts: Buffer[] = [];
  const h = Buffer.alloc(HEADER_SIZE);
  (edit.magic ?? MAGIC).copy(h, 0);
  h.writeUInt32LE(edit.version ?? FORMAT_VERSION, 8);
  h.writeUInt32LE(crc32c(h.subarray(0, 12)), 12);
  parts.push(h);
  const put = (type: number, payload: Buffer) => {
    const rh = Buffer.alloc(24);
    rh.writeUInt32LE(type, 0);
    rh.writeBigUInt64LE(BigInt(payload.length), 8);
    rh.writeUInt32LE(crc32c(payload), 16);
    rh.writeUInt32LE(crc32c(rh.subarray(0, 20)), 20);
    parts.push(rh, payload);
  };
  recs.forEach((r, i) => put(edit.typeOf?.get(i) ?? r.type, payloadOf(r)));
  if (!edit.noEnd) put(RecordType.End, Buffer.from(edit.endJson ?? JSON.stringify({ records: edit.endCount ?? recs.length }), 'utf8'));
  return Buffer.concat(parts);
}

/** The records as loadImage would see them after the stream checks (no copy of page data). */
function asRecords(recs: Rec[]): ImageRecord[] {
  return recs.map((r) => ({ type: r.type, offset: 0, payload: payloadOf(r) }));
}

type Path = Array<string | number>;

function getAt(v: unknown, p: Path): unknown {
  for (const k of p) v = (v as Record<string | number, unknown>)[k];
  return v;
}

/** Values of any type for any field: wrong types, numbers JSON cannot hold, deep nesting, huge strings. */
const GENERIC: unknown[] = [null, true, 'x', 0, -1, 1.5, [], {}, '0xZZ', `${RAW}1e999`, `${RAW}-0`,
  `${RAW}${'['.repeat(5000)}${']'.repeat(5000)}`, `${RAW}${'{"a":'.repeat(3000)}1${'}'.repeat(3000)}`,
  'A'.repeat(5000), 'A'.repeat(1 << 20), 2 ** 53, 2 ** 64, -(2 ** 63)];

class Mutator {
  constructor(readonly rand: () => number, readonly decoyPath: string, readonly decoyPid: number, readonly pids: number[]) {}
  int(n: number): number { return Math.floor(this.rand() * n); }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]; }

  /** A replacement value for `old`: retyped, out of range, huge or nested. */
  value(old: unknown, key: string | number): unknown {
    const generic = GENERIC;
    if (this.int(3) === 0) return this.pick(generic);
    if (typeof old === 'number') {
      return this.pick([old + 1, old - 1, old * 2, -old, old + 4096, old - 4096, old + 1 / 2, 0x7ffffffff000, 0x800000000000,
        4194305, 1 << 20, 2 ** 31, 2 ** 32, this.decoyPid, this.pick(this.pids), 0]);
    }
    if (typeof old === 'string') {
      if (/^0x/.test(old)) return this.pick(['0x', `0x${'f'.repeat(17)}`, '0xZZ', '-0x1', '0x7fffffffffffffff', '0xffffffffffffffff', `0x${this.int(1 << 30).toString(16)}`]);
      if (old.startsWith('/')) return this.pick([this.decoyPath, '/etc/shadow', 'relative/path', '/tmp/../etc/passwd', 'a\nb', '/dev/sda', '/proc/self/mem', `/proc/${this.decoyPid}/mem`]);
      if (key === 'kind') return this.pick(['anon', 'file', 'shmem', 'vdso', 'pipe', 'fifo', 'memfd', 'eventfd', 'epoll', 'chr', 'dir', 'bogus']);
      if (key === 'prot') return this.pick(['r--', 'rw-', 'rwx', '---', 'rwxp', 'q']);
      if (/^\d+$/.test(old)) return this.pick(['-1', '18446744073709551616', '1e3', '99999999999999999999999']);
      return this.pick([old.slice(0, old.length >> 1), `${old}!!`, old + old, '', '====', `${old.slice(0, -4)}AAAA`]);
    }
    if (typeof old === 'boolean') return this.pick([!old, 1, 'true']);
    if (Array.isArray(old)) return this.pick([[], old.concat(old), Array.from({ length: 3000 }, () => old[0]), {}, old.slice(1)]);
    return this.pick(generic);
  }

  /** A random node by a random walk from the root: O(depth), no list of every node. */
  walk(v: unknown): Path {
    const p: Path = [];
    for (let cur = v; cur && typeof cur === 'object' && (p.length === 0 || this.int(4) !== 0);) {
      const keys: Array<string | number> = Array.isArray(cur) ? cur.map((_, i) => i) : Object.keys(cur);
      if (!keys.length) break;
      const k = this.pick(keys);
      p.push(k);
      cur = (cur as Record<string | number, unknown>)[k];
    }
    return p;
  }

  json(v: unknown): unknown {
    const p = this.walk(v);
    if (!p.length) return this.pick([null, [], {}, 'x']);
    const parent = getAt(v, p.slice(0, -1)) as Record<string | number, unknown>;
    const key = p[p.length - 1];
    switch (this.int(4)) {
      case 0: // dropped
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else delete parent[key];
        break;
      case 1: { // the value of the same key elsewhere: plausible but inconsistent
        for (let tries = 0; tries < 8; tries++) {
          const q = this.walk(v);
          if (q[q.length - 1] === key) { parent[key] = structuredClone(getAt(v, q)); return v; }
        }
        parent[key] = this.value(parent[key], key);
        break;
      }
      default:
        parent[key] = this.value(parent[key], key);
    }
    return v;
  }

  pages(b: Buffer): Buffer {
    // The header is copied; the page bytes are left as they come (any bytes are fair game).
    const runs = b.length >= 8 ? b.readUInt32LE(0) : 0;
    const out = Buffer.allocUnsafe(b.length);
    b.copy(out, 0, 0, Math.min(b.length, 8 + 16 * runs));
    const run = 8 + 16 * this.int(Math.max(runs, 1));
    if (out.length < 8) return Buffer.concat([out, Buffer.alloc(this.int(9))]);
    switch (this.int(6)) {
      case 0: out.writeUInt32LE(this.pick([this.decoyPid, ...this.pids, 0, 0xffffffff]), 4); break;
      case 1: out.writeUInt32LE(this.pick([runs + 1, runs - 1, 0, 0xffffffff, 0x10000000]) >>> 0, 0); break;
      case 2: if (run + 8 <= out.length) out.writeBigUInt64LE(BigInt.asUintN(64, out.readBigUInt64LE(run) + this.pick([4096n, -4096n, 1n, 1n << 47n, 1n << 63n])), run); break;
      case 3: if (run + 16 <= out.length) out.writeBigUInt64LE(BigInt.asUintN(64, out.readBigUInt64LE(run + 8) + this.pick([4096n, -4096n, 1n, 1n << 40n])), run + 8); break;
      case 4: return out.subarray(0, Math.max(0, out.length - this.pick([1, 4096, 16])));
      default: return out.subarray(0, this.int(Math.min(out.length, 64)));
    }
    return out;
  }

  /** One to three mutations of a copy of the seed; returns records and stream damage. */
  mutate(seed: Seed): { recs: Rec[]; edit: StreamEdit; what: string[] } {
    // Records are copied when they are mutated, not before.
    const recs: Rec[] = [...seed.recs];
    const edit: StreamEdit = {};
    const what: string[] = [];
    for (let n = 1 + this.int(3); n > 0; n--) {
      const i = this.int(recs.length);
      const op = this.int(20);
      if (op < 11) {
        if (recs[i].bin) { recs[i] = { type: recs[i].type, bin: this.pages(recs[i].bin!) }; what.push(`pages header of record ${i + 1}`); }
        else { recs[i] = { type: recs[i].type, json: this.json(structuredClone(recs[i].json)) }; what.push(`field of record ${i + 1}`); }
      } else if (op === 11) { recs.splice(i + 1, 0, { ...recs[i] }); what.push(`record ${i + 1} duplicated`); }
      else if (op === 12) { const j = this.int(recs.length); [recs[i], recs[j]] = [recs[j], recs[i]]; what.push(`records ${i + 1} and ${j + 1} swapped`); }
      else if (op === 13) { recs.splice(i, 0, { type: this.pick([RecordType.Process, RecordType.Zombie, RecordType.Pipes, RecordType.Memfds]), json: this.value(null, 'x') }); what.push(`record inserted at ${i + 1}`); }
      else if (op === 14 && recs.length > 1) { recs.splice(i, 1); what.push(`record ${i + 1} dropped`); }
      else if (op === 15) { (edit.typeOf ??= new Map()).set(i, this.pick([RecordType.Process, RecordType.Pages, RecordType.Zombie, RecordType.Pipes, RecordType.Memfds, 99, RecordType.End])); what.push(`type of record ${i + 1}`); }
      else if (op === 16) { edit.version = this.pick([0, 2, 0xffffffff]); what.push('header version'); }
      else if (op === 17) { edit.endJson = this.pick(['', '{', 'null', '{"records":"1"}', `${'['.repeat(5000)}`, '{"records":1e999}', '{"records":-1}']); what.push('End record'); }
      else if (op === 18) { edit.endCount = recs.length + this.pick([1, -1, 1000]); what.push('End count'); }
      else { edit.noEnd = true; what.push('End dropped'); }
    }
    return { recs, edit, what };
  }
}

function checkpointSeed(dir: string, name: string, file: string, args: string[]): Promise<Seed> {
  const out = path.join(dir, `${name}.out`);
  const pid = procs.start(file, args, out, { cwd: dir });
  return (async () => {
    await waitFor(out, /^ready$/m);
    const img = path.join(dir, `${name}.img`);
    checkpointSync(pid, img, { kill: true });
    await waitGone(pid, procs);
    return { name, recs: toRecs(fs.readFileSync(img)) };
  })();
}

const seeds: Seed[] = [];
let dir = '';
let decoyPath = '';
let decoyPid = 0;
let decoyBefore: { text: string; mtimeNs: bigint } | undefined;

before(async () => {
  dir = tmpdir('fuzz');
  decoyPath = path.join(dir, 'decoy');
  fs.writeFileSync(decoyPath, 'decoy contents, never to change\n'.repeat(256));
  const st = fs.statSync(decoyPath, { bigint: true });
  decoyBefore = { text: fs.readFileSync(decoyPath, 'utf8'), mtimeNs: st.mtimeNs };
  const blockers = build('blockers');
  decoyPid = procs.start(blockers, ['pause'], path.join(dir, 'decoy.out'));
  await waitFor(path.join(dir, 'decoy.out'), /^ready$/m);
  seeds.push(await checkpointSeed(dir, 'sleep', blockers, ['pause']));
  seeds.push(await checkpointSeed(dir, 'tree', build('fuzzseed'), []));
  seeds.push(await checkpointSeed(dir, 'memory', build('memhog'), ['4']));
});

function checkDecoys(): void {
  assert.equal(fs.readFileSync(decoyPath, 'utf8'), decoyBefore!.text, 'the decoy file is unchanged');
  assert.equal(fs.statSync(decoyPath, { bigint: true }).mtimeNs, decoyBefore!.mtimeNs, 'the decoy file was not written');
  assert.ok(alive(decoyPid), 'the decoy process is alive');
  assert.equal(readStatus(decoyPid).tracerPid, 0, 'the decoy process is not traced');
  assert.equal(readStat(decoyPid).state, 'S', 'the decoy process is asleep in pause(), not stopped');
}

test('the three seed images load and show', () => {
  assert.equal(seeds.length, 3);
  for (const s of seeds) {
    const img = parseRecords(asRecords(s.recs), s.name);
    assert.ok(showImage(img).includes('process'));
  }
  const tree = parseRecords(asRecords(seeds[1].recs), 'tree');
  assert.equal(tree.processes.length, 2);
  assert.equal(tree.zombies.length, 1);
  assert.ok(tree.pipes.some((p) => p.data.length > 0), 'a pipe holds data');
  assert.equal(tree.memfds.length, 1);
  assert.equal(tree.objects.ghosts?.length, 1, 'a deleted /dev/shm file');
  assert.ok(tree.process.vmas.some((v) => v.kind === 'shmem' && v.shmem), 'shared memory');
  assert.ok(tree.process.fds.some((f) => f.kind === 'eventfd') && tree.process.fds.some((f) => f.kind === 'epoll'));
});

test(`${INPROC_CASES} mutated images loaded in-process: each refused as an ImageError/StasisError or loaded and shown`, (t) => {
  const m = new Mutator(rng(SEED), decoyPath, decoyPid, seeds.flatMap((s) => s.recs.flatMap((r) => (r.type === RecordType.Process || r.type === RecordType.Zombie ? [(r.json as { pid: number }).pid] : []))));
  let refused = 0, loaded = 0;
  for (let i = 0; i < INPROC_CASES; i++) {
    const seed = seeds[i % seeds.length];
    const { recs, edit, what } = m.mutate(seed);
    const damaged = Object.keys(edit).length > 0;
    let img: LoadedImage;
    try {
      // Stream damage goes through the whole reader (small seeds are
      // re-encoded; the records of the big one are handed over as views).
      img = damaged && seed.name !== 'memory'
        ? parseRecords(readImageBuffer(encode(recs, edit), 'fuzz'), 'fuzz')
        : parseRecords(asRecords(recs), 'fuzz');
      showImage(img);
      JSON.stringify(img.process);
      loaded++;
    } catch (e) {
      if (!(e instanceof StasisError)) assert.fail(`case ${i} (seed ${SEED}, ${seed.name}: ${what.join(', ')}): ${(e as Error).stack}`);
      refused++;
    }
  }
  t.diagnostic(`${loaded} loaded, ${refused} refused`);
  assert.equal(refused + loaded, INPROC_CASES);
  assert.ok(refused > INPROC_CASES / 2, `most mutations are refused (${refused} of ${INPROC_CASES})`);
});

interface Run { code: number | null; signal: string | null; stdout: string; stderr: string }

/** `stasis ARGS`, as root or (asUser) as the unprivileged user nobody. */
function run(args: string[], asUser = false): Promise<Run> {
  return new Promise((resolve, reject) => {
    const argv = [CLI, ...args];
    const child = asUser
      ? spawn('/usr/bin/setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--', process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS); // the child we spawned, by its pid
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Let the user nobody read an image of the test's directory. */
function shareWithNobody(img: string): void {
  fs.chmodSync(path.dirname(img), 0o755);
  fs.chmodSync(img, 0o644);
}

/** Our children (we are their subreaper): whatever a restart left behind ends up here. */
function ourChildren(): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readStat(Number(d)).ppid === process.pid) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function isOurs(pid: number): boolean {
  try { return readStat(pid).ppid === process.pid; } catch { return false; }
}

/** End what one `restart -d` started: its root, the root's tree, and its pid namespace's init. */
async function endRestored(root: number, init: number): Promise<void> {
  try { procs.addTree(root); } catch { /* ended */ }
  for (const pid of [root, ...(isOurs(init) && init !== root ? [init] : [])]) {
    procs.add(pid);
    try { process.kill(pid, 'SIGKILL'); } catch { /* ended */ }
  }
  await waitGone(root, procs);
  if (isOurs(init)) await waitGone(init, procs);
}

/** What each seed program prints on SIGUSR1 once it has checked its state. */
const SEED_CHECK: Record<string, RegExp> = { sleep: /^woke$/, tree: /^ok$/, memory: /^verified$/ };

function oneLineRefusal(r: Run, what: string): void {
  assert.ok(!/internal error|\n\s+at /.test(r.stderr), `${what}: no internal error or stack:\n${r.stderr}`);
  assert.equal(r.signal, null, `${what}: not killed (a hang or a crash): ${r.stderr}`);
  assert.match(r.stderr, /^stasis: [^\n]*\n$/, `${what}: one line`);
  assert.equal(r.code, 1, what);
}

test(`${CLI_CASES} mutated images through stasis show --json and restart -d: one-line refusals or restarts, no process or file touched`, async (t) => {
  const PR_SET_CHILD_SUBREAPER = 36;
  syscall(SYS.prctl, 'prctl(PR_SET_CHILD_SUBREAPER)', PR_SET_CHILD_SUBREAPER, 1);
  const before = new Set(ourChildren());
  const m = new Mutator(rng(SEED + 1), decoyPath, decoyPid, []);
  let restarted = 0, refusedCases = 0;
  const cases = Array.from({ length: CLI_CASES }, (_, i) => {
    const seed = seeds[i % seeds.length];
    // The first case of each seed is unmutated: a restart that must work.
    return i < seeds.length ? { seed, recs: seed.recs, edit: {}, what: ['unmutated'] } : { seed, ...m.mutate(seed) };
  });
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < cases.length; i = next++) {
      const c = cases[i];
      const label = `case ${i} (seed ${SEED}, ${c.seed.name}: ${c.what.join(', ')})`;
      const img = path.join(dir, `case-${i}.img`), pidfile = path.join(dir, `case-${i}.pid`);
      fs.writeFileSync(img, encode(c.recs, c.edit));
      const shown = await run(['show', '--json', img]);
      if (shown.code === 0) {
        assert.equal(shown.stderr, '', label);
        JSON.parse(shown.stdout);
      } else oneLineRefusal(shown, `${label}: show`);
      const r = await run(['restart', '-d', '--pid-ns', '--pidfile', pidfile, img]);
      if (r.code === 0) {
        const root = Number(fs.readFileSync(pidfile, 'utf8'));
        assert.equal(r.stdout.trim(), String(root), label);
        assert.equal(shown.code, 0, `${label}: show refused what restart took: ${shown.stderr}`);
        restarted++;
        const init = readStat(root).ppid;
        if (c.what[0] === 'unmutated') {
          // A restart of a real image must be right: the program checks its own state.
          const out = path.join(dir, `${c.seed.name}.out`);
          const want = SEED_CHECK[c.seed.name];
          process.kill(root, 'SIGUSR1');
          await waitFor(out, (text) => text.split('\n').filter((l) => want.test(l)).length === 1);
          assert.doesNotMatch(fs.readFileSync(out, 'utf8'), /FAIL/, label);
        }
        await endRestored(root, init);
      } else {
        oneLineRefusal(r, `${label}: restart`);
        assert.ok(!fs.existsSync(pidfile), `${label}: no pidfile for a refused restart`);
        refusedCases++;
      }
      fs.rmSync(img);
      fs.rmSync(pidfile, { force: true });
    }
  };
  // Every worker runs to its end (a failing one stops taking cases) before
  // the check for leftovers, which must not see a command still running.
  let failed: unknown;
  const stopOnFail = async () => {
    try { await worker(); } catch (e) { failed ??= e; next = cases.length; }
  };
  try {
    await Promise.all(Array.from({ length: CLI_PARALLEL }, stopOnFail));
    if (failed) throw failed;
  } finally {
    // Anything a restart left behind was reparented to us: end it, then fail.
    const left = ourChildren().filter((p) => !before.has(p));
    const running = left.filter((p) => { try { return readStat(p).state !== 'Z'; } catch { return false; } });
    const leftDescribed = running.map((p) => { try { return `${p}: ${fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ')} (NSpid ${readStatus(p).nsPid.join(' ')})`; } catch { return `${p}: gone`; } }).join('; ');
    for (const p of left) {
      procs.add(p);
      try { process.kill(p, 'SIGKILL'); } catch { /* ended */ }
      try { waitpidSync(p, WNOHANG | __WALL); } catch { /* not ours */ }
    }
    syscall(SYS.prctl, 'prctl(PR_SET_CHILD_SUBREAPER)', PR_SET_CHILD_SUBREAPER, 0);
    if (!failed) assert.deepEqual(running, [], `no process left behind by a restart: ${leftDescribed}`);
  }
  t.diagnostic(`${restarted} restarted, ${refusedCases} refused`);
  assert.ok(restarted >= seeds.length, `the unmutated seeds restart (${restarted} restarts, ${refusedCases} refusals)`);
  checkDecoys();
});

/** An anonymous mapping with saved pages, relabelled as a shared writable mapping of `file`. */
function sharedFileMappingImage(seed: Seed, file: string): Rec[] {
  const recs = seed.recs.map((r) => (r.bin ? { ...r } : { type: r.type, json: structuredClone(r.json) }));
  const p = recs[0].json as { vmas: ImageVma[] };
  const v = p.vmas.find((x) => x.kind === 'anon' && x.savedPages > 0 && x.name === '')!;
  Object.assign(v, { kind: 'file', shared: true, prot: 'rw-', name: '', offset: 0, file: fileIdentity(file), vmFlags: [...v.vmFlags, 'sh', 'ms', 'mw'] });
  return recs;
}

test('a shared file mapping given saved pages is refused at load and at restore; the file is untouched', async () => {
  const recs = sharedFileMappingImage(seeds[0], decoyPath);
  const img = path.join(dir, 'shared-file.img');
  fs.writeFileSync(img, encode(recs));
  for (const args of [['restart', '-d', img], ['restart', '-d', '--pid-ns', img], ['show', img]]) {
    const r = await run(args);
    oneLineRefusal(r, args.join(' '));
    assert.match(r.stderr, /shared file mapping|never has saved pages/);
  }
  // And restarted by an ordinary user.
  shareWithNobody(img);
  const u = await run(['restart', '-d', img], true);
  oneLineRefusal(u, 'restart -d as nobody');
  assert.match(u.stderr, /shared file mapping|never has saved pages/);
  // Defence in depth: the restore code refuses it too, before any system call.
  const v = (recs[0].json as { vmas: ImageVma[] }).vmas.find((x) => x.kind === 'file' && x.shared && x.savedPages > 0)!;
  const noRemote = {} as Remote;
  assert.throws(() => mapVmas(noRemote, [v]), /never receives saved pages/);
  assert.throws(() => writePages(noRemote, [v], [{ addr: v.start, len: 4096 }], Buffer.alloc(4096)), /never has saved pages/);
  checkDecoys();
});

test('an fd opening a root-only file for writing, in an image of an ordinary user, is refused as root; the file is untouched', async () => {
  const secret = path.join(dir, 'root-only');
  fs.writeFileSync(secret, 'root only\n', { mode: 0o600 });
  const before = fs.statSync(secret, { bigint: true });
  const recs = seeds[0].recs.map((r) => (r.bin ? { ...r } : { type: r.type, json: structuredClone(r.json) }));
  const p = recs[0].json as { creds: Record<string, unknown>; fds: unknown[]; threads: Array<{ caps: Record<string, unknown> }> };
  Object.assign(p.creds, { uid: [65534, 65534, 65534, 65534], gid: [65534, 65534, 65534, 65534], groups: [], capEff: '0x0', capPrm: '0x0', capInh: '0x0', capAmb: '0x0' });
  // Each thread's own sets too: an ordinary user's process holds no capabilities.
  for (const t of p.threads) Object.assign(t.caps, { eff: '0x0', prm: '0x0', inh: '0x0', amb: '0x0' });
  // Its only other fd is /dev/null: the output files of the seed are root's too.
  p.fds = [p.fds[0]];
  p.fds.push({ fd: 9, kind: 'file', path: secret, flags: 2 /* O_RDWR */, pos: 0, cloexec: false, file: fileIdentity(secret) });
  const img = path.join(dir, 'root-only.img');
  fs.writeFileSync(img, encode(recs));
  for (const args of [['restart', '-d', img], ['restart', '-d', '--pid-ns', img]]) {
    const r = await run(args);
    oneLineRefusal(r, args.join(' '));
    assert.match(r.stderr, /fd 9: the saved process \(uid 65534\) could not open .*root-only for writing/);
  }
  // The user the image claims to be gets the same answer.
  shareWithNobody(img);
  const u = await run(['restart', '-d', img], true);
  oneLineRefusal(u, 'restart -d as nobody');
  assert.match(u.stderr, /fd 9: .*root-only/);
  const now = fs.statSync(secret, { bigint: true });
  assert.equal(fs.readFileSync(secret, 'utf8'), 'root only\n');
  assert.equal(now.mtimeNs, before.mtimeNs);
  checkDecoys();
});

/** A copy of the tree seed's records, JSON cloned so it can be edited. */
function treeCopy(): Rec[] {
  return seeds[1].recs.map((r) => (r.bin ? { ...r } : { type: r.type, json: structuredClone(r.json) }));
}

test("a child's process record given twice is refused at once (it used to hang the restart)", async () => {
  const recs = treeCopy();
  const child = recs.findIndex((r, i) => i > 0 && r.type === RecordType.Process);
  recs.splice(child + 1, 0, recs[child]);
  const img = path.join(dir, 'child-twice.img');
  fs.writeFileSync(img, encode(recs));
  const r = await run(['restart', '-d', '--pid-ns', img]);
  oneLineRefusal(r, 'restart');
  assert.match(r.stderr, /record \d+ \(process \d+\): field pid: a second record for pid \d+/);
});

test("a child's writable mapping given protection r is refused, and the restore itself stops on the fault (it used to hang)", async () => {
  const recs = treeCopy();
  const child = recs.find((r, i) => i > 0 && r.type === RecordType.Process)!.json as { pid: number; vmas: ImageVma[]; threads: Array<{ rseq: { addr: string } | null }> };
  const rseq = Number(BigInt(child.threads[0].rseq!.addr));
  const v = child.vmas.find((x) => x.start <= rseq && rseq < x.end)!;
  assert.equal(v.prot[1], 'w');
  v.prot = 'r' + v.prot.slice(1).replace('w', '-');
  const img = path.join(dir, 'child-read-only.img');
  fs.writeFileSync(img, encode(recs));
  const r = await run(['restart', '-d', '--pid-ns', img]);
  oneLineRefusal(r, 'restart');
  assert.match(r.stderr, /field threads\[0\]\.rseq\.addr: .* is not in a writable mapping/);
  // Past the image checks (edited after loading), the restore refuses the
  // fault of the injected call instead of resuming it forever.
  const loaded = parseRecords(asRecords(seeds[1].recs), 'tree');
  const c = loaded.processes[1];
  const lv = c.vmas.find((x) => x.start <= rseq && rseq < x.end)!;
  lv.prot = 'r' + lv.prot.slice(1).replace('w', '-');
  assert.throws(() => restartSync(loaded, { pidNs: true }), (e: Error) => e instanceof StasisError && /faulted with signal 11/.test(e.message));
  checkDecoys();
});

test('hostile fields named in the issue are refused with the record and field named', () => {
  const refuse = (edit: (recs: Rec[]) => void, want: RegExp) => {
    const recs = treeCopy();
    edit(recs);
    assert.throws(() => parseRecords(readImageBuffer(encode(recs), 'img'), 'img'), (e: Error) => e instanceof StasisError && want.test(e.message) && !e.message.includes('\n'), String(want));
  };
  const proc = (recs: Rec[]) => recs[0].json as Record<string, any>;
  const rec = (recs: Rec[], type: RecordType) => recs.find((r) => r.type === type)!;
  refuse((r) => { delete proc(r).mm; }, /^img: record 1 \(process \d+\): field mm: /);
  refuse((r) => { delete proc(r).fds; }, /field fds: /);
  refuse((r) => { delete proc(r).threads; }, /field threads: /);
  refuse((r) => { delete proc(r).rlimits; }, /field rlimits: /);
  refuse((r) => { proc(r).sigactions[0].handler = '0xZZ'; }, /field sigactions\[0\]\.handler: /);
  refuse((r) => { proc(r).vmas[0].start = `${RAW}1e999`; }, /field vmas\[0\]\.start: /);
  refuse((r) => { proc(r).creds.uid[0] = 2 ** 32; }, /field creds\.uid\[0\]: /);
  refuse((r) => { proc(r).threads[0].regs = proc(r).threads[0].regs.slice(0, -4); }, /field threads\[0\]\.regs: /);
  refuse((r) => { proc(r).threads[0].signals.pending = [Buffer.alloc(127).toString('base64')]; }, /field threads\[0\]\.signals\.pending\[0\]: /);
  refuse((r) => { proc(r).vmas[2] = `${RAW}${'['.repeat(5000)}${']'.repeat(5000)}`; }, /field vmas\[2\]: /);
  refuse((r) => { (rec(r, RecordType.Pipes).json as Array<{ data: unknown }>)[0].data = 12345; }, /record \d+ \(Pipes\): field \[0\]\.data: /);
  refuse((r) => { (rec(r, RecordType.Zombie).json as { exitStatus: unknown }).exitStatus = '0'; }, /record \d+ \(process \d+\): field exitStatus: /);
  refuse((r) => { proc(r).fds.push({ ...proc(r).fds[0] }); }, /field fds\[\d+\]\.fd: fd \d+ is listed twice/);
  refuse((r) => { proc(r).vmas[1].start = proc(r).vmas[0].start; }, /field vmas\[1\]\.start: .* overlaps/);
  assert.throws(() => parseRecords(readImageBuffer(encode(treeCopy(), { endJson: '['.repeat(5000) }), 'img'), 'img'), /record \d+ \(End\): (not valid JSON|\d+ bytes is more than)/);
});

test('20,000 fds at or above RLIMIT_NOFILE are refused before any process or file is opened', async () => {
  const recs = seeds[0].recs.map((r) => (r.bin ? { ...r } : { type: r.type, json: structuredClone(r.json) }));
  const p = recs[0].json as { fds: unknown[] };
  for (let fd = 3; fd < 20003; fd++) p.fds.push({ fd, kind: 'chr', path: '/dev/null', flags: 0, pos: 0, cloexec: false });
  const img = path.join(dir, 'many-fds.img');
  fs.writeFileSync(img, encode(recs));
  const r = await new Promise<Run>((resolve) => {
    const child = spawn('sh', ['-c', 'ulimit -n 1024 && exec "$0" "$@"', process.execPath, CLI, 'restart', '-d', '--pid-ns', img], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  oneLineRefusal(r, 'restart');
  assert.match(r.stderr, /fd 1024 is at or above this restarter's RLIMIT_NOFILE \(1024\)/);
});

// Unit tests of restart --verify's comparison rules (in addition to the
// end-to-end tests in verify.test.ts): what the normalisation table allows
// and what it still catches, on hand-made records.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareRecords, NORMALISATIONS } from '../src/verify';

const ms = 1_000_000n;
const proc = (over: Record<string, unknown>) => ({ pid: 100, ppid: 1, pgid: 100, sid: 100, threads: [{ tid: 100 }], fds: [], vmas: [], ...over });
const diff = (image: object, restored: object, opts: { host?: Map<number, number>; elapsed?: bigint } = {}) =>
  compareRecords([{ where: 'pid 100', prefix: '', image, restored }], opts.host ?? new Map([[100, 100]]), new Set([100]), opts.elapsed ?? 10n * ms)
    .map((d) => `${d.path}: ${d.message}`);

test('every normalisation is one line with a reason, and no path is listed twice', () => {
  const paths = NORMALISATIONS.map(([p]) => p);
  assert.equal(new Set(paths).size, paths.length);
  for (const [p, rule, why] of NORMALISATIONS) {
    assert.equal(typeof rule, 'function', p);
    assert.ok(why.length > 10, `${p}: says why`);
  }
});

test('pipes are compared as structure: new inodes pass, two pipes restored as one do not', () => {
  const fd = (n: number, ino: number) => ({ fd: n, kind: 'pipe', path: `pipe:[${ino}]`, flags: 0, pipe: ino });
  const image = proc({ fds: [fd(3, 11), fd(4, 11), fd(5, 22)] });
  assert.deepEqual(diff(image, proc({ fds: [fd(3, 901), fd(4, 901), fd(5, 902)] })), []);
  const merged = diff(image, proc({ fds: [fd(3, 901), fd(4, 901), fd(5, 901)] }));
  assert.ok(merged.some((d) => d.startsWith('fds[2].pipe: image 22, restored 901')), merged.join('\n'));
  const split = diff(image, proc({ fds: [fd(3, 901), fd(4, 902), fd(5, 903)] }));
  assert.ok(split.some((d) => d.startsWith('fds[1].pipe: image 11, restored 902')), split.join('\n'));
});

test('a timer may run down by the time the restart took, not more, and never up', () => {
  const timer = (value: [number, number], ticks = '0') => proc({ fds: [{ fd: 3, kind: 'timerfd', timerfd: { clock: 1, value, interval: [0, 0], ticks } }] });
  assert.deepEqual(diff(timer([1, 0]), timer([0, 995_000_000]), { elapsed: 10n * ms }), []);
  assert.match(diff(timer([1, 0]), timer([0, 900_000_000]), { elapsed: 10n * ms }).join(), /fds\[0\]\.timerfd\.value: image \[1,0\], restored \[0,900000000\]/);
  assert.match(diff(timer([1, 0]), timer([1, 1])).join(), /timerfd\.value/);
  assert.match(diff(timer([1, 0], '2'), timer([1, 0], '1')).join(), /timerfd\.ticks: image 2, restored 1/);
});

test('pids: the tree is translated, the outside is compared by sharing only', () => {
  // Restored under a new pid (4242 here for image 100); the root's parent and
  // session are the restarter's.
  const host = new Map([[4242, 100]]);
  const image = proc({ ppid: 7, sid: 7, pgid: 100 });
  assert.deepEqual(diff(image, proc({ pid: 4242, ppid: 555, sid: 556, pgid: 4242, threads: [{ tid: 4242 }] }), { host }), []);
  assert.match(diff(image, proc({ pid: 4242, ppid: 555, sid: 556, pgid: 556, threads: [{ tid: 4242 }] }), { host }).join(), /pgid: image 100, restored 556 \(not a task of the tree\)/);
});

test('registers are named, as the thread resumes: a restart_block call comes back with EINTR', () => {
  const regs = (rax: bigint, orig: bigint) => {
    const b = Buffer.alloc(27 * 8);
    b.writeBigInt64LE(rax, 10 * 8);
    b.writeBigInt64LE(orig, 15 * 8);
    return b.toString('base64');
  };
  const th = (rax: bigint, orig: bigint, inSyscall: number | null) => proc({ threads: [{ tid: 100, regs: regs(rax, orig), inSyscall }] });
  assert.deepEqual(diff(th(-516n, 35n, 35), th(-4n, -1n, null)), []);
  assert.deepEqual(diff(th(-512n, 7n, 7), th(-4n, -1n, null)), ['threads[0].regs.rax: image 0xfffffffffffffe00, restored 0xfffffffffffffffc', 'threads[0].regs.orig_rax: image 0x7, restored 0xffffffffffffffff', 'threads[0].inSyscall: image 7, restored null']);
});

test('anonymous neighbours split only by mremap compare merged; any other split is a difference', () => {
  const vma = (start: number, end: number, prot = 'rw-') => ({ start, end, prot, shared: false, kind: 'anon', name: '', offset: start, vmFlags: ['rd', 'wr'], savedPages: 1 });
  const image = proc({ vmas: [vma(0x1000, 0x3000), vma(0x3000, 0x5000)] });
  assert.deepEqual(diff(image, proc({ vmas: [vma(0x1000, 0x5000)] })), []);
  const other = diff(proc({ vmas: [vma(0x1000, 0x3000, 'r--'), vma(0x3000, 0x5000)] }), proc({ vmas: [vma(0x1000, 0x5000)] }));
  assert.ok(other.includes('vmas[0].end: image 0x3000, restored 0x5000 (image vma 1000-3000)'), other.join('\n'));
});

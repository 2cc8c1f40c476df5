// The command line end to end: pipes, show, refusals, broken images.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, cli, CLI, alive, restartVerified } from './harness';
import { loadImage } from '../src';
import { readStatus, listChildren } from '../src/proc';
import { FD_KINDS } from '../src/kinds/fdkinds';
import { REFUSED_FDS, REFUSED_MAPPINGS } from '../src/kinds/refused';
import { VmaKind } from '../src/image/schema';

const procs = new Procs();
after(() => procs.cleanup());

test('stasis checkpoint PID | stasis restart -d - carries the process over a pipe', async () => {
  const prog = build('counter');
  const dir = tmpdir('pipe');
  const out = path.join(dir, 'out'), pidfile = path.join(dir, 'pid');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 2$/m);
  const pipeline = spawn('sh', ['-c', `"${process.execPath}" "${CLI}" checkpoint ${pid} --kill | "${process.execPath}" "${CLI}" restart -d --verify --pidfile "${pidfile}" -`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  pipeline.stdout.on('data', (d) => (stdout += d));
  pipeline.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise((res) => pipeline.on('close', res));
  assert.equal(code, 0, stderr);
  await waitGone(pid, procs);
  const restored = procs.add(Number(fs.readFileSync(pidfile, 'utf8')));
  assert.equal(stdout.trim(), String(restored));
  const seen = fs.readFileSync(out, 'utf8').trim().split('\n').length;
  await waitFor(out, new RegExp(`^counter: ${seen + 2}$`, 'm'));
  assert.equal(readStatus(restored).name, 'counter');
});

test('an image round-trips through stasis show --json', async () => {
  const prog = build('counter');
  const dir = tmpdir('show');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 1$/m);
  const ck = await cli(['checkpoint', String(pid), '-o', img]);
  assert.equal(ck.code, 0, ck.stderr);
  const shown = await cli(['show', '--json', img]);
  assert.equal(shown.code, 0, shown.stderr);
  const meta = JSON.parse(shown.stdout);
  assert.deepEqual(meta, loadImage(img).process);
  assert.equal(meta.pid, pid);
  assert.equal(meta.comm, 'counter');
  assert.ok(meta.vmas.some((v: { name: string }) => v.name === '[stack]'));
  const human = await cli(['show', img]);
  assert.match(human.stdout, new RegExp(`^process ${pid} \\(counter\\)`));
  assert.match(human.stdout, /fd +1 file/);
});

test('an unsupported fd is refused by name and the target keeps running untraced', async () => {
  const prog = build('unsupported');
  const dir = tmpdir('refuse');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^ready$/m);
  const r = await cli(['checkpoint', String(pid), '-o', img]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^stasis: fd \d+ of pid \d+: netlink socket, route \(NETLINK_ROUTE\), is not supported yet; [^\n]+\n$/);
  assert.equal(fs.existsSync(img), false, 'no partial image is left');
  const st = readStatus(pid);
  assert.equal(st.tracerPid, 0);
  assert.notEqual(st.state, 't');
  assert.notEqual(st.state, 'T');
  const before = fs.readFileSync(out, 'utf8').trim().split('\n').length;
  await waitFor(out, new RegExp(`(^alive \\d+\\n){${before}}`, 'm'));
});

test('a truncated or corrupted image is refused before any process exists', async () => {
  const prog = build('counter');
  const dir = tmpdir('broken');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 1$/m);
  assert.equal((await cli(['checkpoint', String(pid), '-o', img])).code, 0);
  const good = fs.readFileSync(img);
  const cases: Array<[string, Buffer, RegExp]> = [
    ['truncated', good.subarray(0, Math.floor(good.length / 2)), /truncated/],
    ['one flipped byte', Buffer.from(good), /corrupted|checksum/],
    ['not an image', Buffer.from('hello world, this is not an image at all'), /not a stasis image/],
    ['empty', Buffer.alloc(0), /empty/],
  ];
  cases[1][1][Math.floor(good.length * 0.6)] ^= 0x10;
  for (const [what, bytes, re] of cases) {
    const bad = path.join(dir, 'bad');
    fs.writeFileSync(bad, bytes);
    const r = await cli(['restart', '--verify', bad]);
    assert.equal(r.code, 1, what);
    assert.match(r.stderr, re, what);
    assert.equal(r.stderr.split('\n').length, 2, `${what}: one line`);
    // Library mode: same refusal, and no child of ours was created.
    const children = listChildren(process.pid);
    assert.throws(() => restartVerified(bad), re);
    assert.deepEqual(listChildren(process.pid), children, what);
  }
});

test('restart refuses an image whose mapped file changed, leaving nothing behind', async () => {
  const dir = tmpdir('changed');
  const prog = path.join(dir, 'counter');
  fs.copyFileSync(build('counter'), prog);
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 1$/m);
  assert.equal((await cli(['checkpoint', String(pid), '-o', img, '--kill'])).code, 0);
  await waitGone(pid, procs);
  fs.appendFileSync(prog, 'x');
  const children = listChildren(process.pid);
  assert.throws(() => restartVerified(img), new RegExp(`${prog} changed since the checkpoint`));
  assert.deepEqual(listChildren(process.pid), children);
});

test('restart in the foreground returns the exit status of the restored process', async () => {
  const prog = build('counter');
  const dir = tmpdir('fg');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  // Room for a slow CLI start (loading zod alone takes 0.1-0.2 s under load) before the counter ends.
  const pid = procs.start(prog, ['10'], out);
  await waitFor(out, /^counter: 1$/m);
  const c = await cli(['checkpoint', String(pid), '-o', img, '--kill']);
  assert.equal(c.code, 0, c.stderr);
  await waitGone(pid, procs);
  const r = await cli(['restart', '--verify', img]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(fs.readFileSync(out, 'utf8'), /counter: 10\n$/);
});

test('stasis check finds every feature it needs on this machine', async () => {
  const r = await cli(['check']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^ok +syscall injection/m);
  assert.match(r.stdout, /^ok +PR_SET_MM_MAP/m);
});

test('stasis check --kinds lists every registered fd kind as supported and every named refusal as refused, each once', async () => {
  const r = await cli(['check', '--kinds']);
  assert.equal(r.code, 0, r.stderr);
  const rows = r.stdout.trim().split('\n').map((l) => /^(fd|mapping) +(supported|refused) +(.+)$/.exec(l)!.slice(1));
  const names = (of: string, status: string) => rows.filter((x) => x[0] === of && x[1] === status).map((x) => x[2]);
  assert.deepEqual(names('fd', 'supported').sort(), [...new Set(FD_KINDS.flatMap((k) => [...k.kinds]))].sort());
  assert.deepEqual(names('fd', 'refused'), [...REFUSED_FDS.map((k) => k.name), 'any other fd']);
  assert.deepEqual(names('mapping', 'supported'), VmaKind.options);
  assert.deepEqual(names('mapping', 'refused'), [...REFUSED_MAPPINGS.map((k) => k.name), 'any other mapping']);
  for (const k of ['inotify', 'pidfd', 'symlink', 'file', 'pipe', 'epoll']) assert.ok(names('fd', 'supported').includes(k), k);
  for (const k of ['fanotify', 'io_uring', 'netlink socket', 'packet socket', 'raw inet socket']) assert.ok(names('fd', 'refused').includes(k), k);
  assert.ok(names('mapping', 'refused').includes('[aio] ring (io_setup)'));
  const all = rows.map((x) => `${x[0]} ${x[2]}`);
  assert.equal(new Set(all).size, all.length, 'no kind is listed twice (supported and refused)');
});

test('checkpoint refuses to write an image to a terminal and bad arguments', async () => {
  const r = await cli(['checkpoint', 'abc']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /not a pid: abc/);
  const gone = await cli(['checkpoint', '999999999', '-o', '/dev/null']);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /pid 999999999: no such process/);
  assert.equal(alive(999999999), false);
});

test('restart in the foreground ends with the fatal signal of the restored process', async () => {
  const prog = build('counter');
  const dir = tmpdir('fgsig');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image'), pidfile = path.join(dir, 'pid');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 1$/m);
  assert.equal((await cli(['checkpoint', String(pid), '-o', img, '--kill'])).code, 0);
  await waitGone(pid, procs);
  const running = cli(['restart', '--verify', img, '--pidfile', pidfile]);
  await waitFor(pidfile, /^\d+\n$/);
  const restored = procs.add(Number(fs.readFileSync(pidfile, 'utf8')));
  await waitFor(out, /^counter: 3$/m);
  process.kill(restored, 'SIGTERM');
  const r = await running;
  assert.equal(r.signal, 'SIGTERM', r.stderr);
  assert.match(r.stderr, /killed by SIGTERM/);
});

test('a checkpoint of many records through a pipe keeps every page', async () => {
  const prog = build('memhog');
  const dir = tmpdir('bigpipe');
  const out = path.join(dir, 'out'), pidfile = path.join(dir, 'pid');
  const pid = procs.start(prog, ['80'], out);
  await waitFor(out, /^ready$/m);
  // 80 MiB: several Pages records, written by the pipelined writer into a pipe.
  const pipeline = spawn('sh', ['-c', `"${process.execPath}" "${CLI}" checkpoint ${pid} --kill | "${process.execPath}" "${CLI}" restart -d --verify --pidfile "${pidfile}" -`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  pipeline.stderr.on('data', (d) => (stderr += d));
  assert.equal(await new Promise((res) => pipeline.on('close', res)), 0, stderr);
  await waitGone(pid, procs);
  const restored = procs.add(Number(fs.readFileSync(pidfile, 'utf8')));
  process.kill(restored, 'SIGUSR1');
  await waitFor(out, /^verified$/m);
});

test('the demo of the README runs: the restored counter carries on from 6', async () => {
  const demo = path.join(__dirname, '..', 'demo', 'demo.js');
  const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(process.execPath, [demo], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code, out }));
  });
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /\[original\] counter: 5\n[^]*\[restored\] counter: 6\n/);
});

// The command line end to end: pipes, show, refusals, broken images.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, cli, CLI, ROOT, alive, restartVerified } from './harness';
import { loadImage } from '../src';
import { readStatus, listChildren } from '../src/proc';
import { FD_KINDS } from '../src/kinds/fdkinds';
import { REFUSED_FDS, REFUSED_MAPPINGS } from '../src/kinds/refused';
import { VmaKind } from '../src/image/schema';

const procs = new Procs();
after(() => procs.cleanup());

/** test/programs/NAME started in a fresh directory, once its output says `ready`: its pid, and paths for its output and an image. */
async function startProgram(name: string, tag: string, args: string[], ready: RegExp): Promise<{ dir: string; out: string; img: string; pid: number }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(build(name), args, out);
  await waitFor(out, ready);
  return { dir, out, img, pid };
}

/** `stasis checkpoint PID -o IMG --kill`, which must succeed, and PID gone. */
async function checkpointKilled(pid: number, img: string): Promise<void> {
  assert.equal((await cli(['checkpoint', String(pid), '-o', img, '--kill'])).code, 0);
  await waitGone(pid, procs);
}

/** A `counter`, once it has counted to `upTo`. */
const startCounter = (tag: string, args: string[] = [], upTo = 1) => startProgram('counter', tag, args, new RegExp(`^counter: ${upTo}$`, 'm'));

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
  const { img, pid } = await startCounter('show');
  const ck = await cli(['checkpoint', String(pid), '-o', img]);
  assert.equal(ck.code, 0, ck.stderr);
  const shown = await cli(['show', '--json', img]);
  assert.equal(shown.code, 0, shown.stderr);
  const meta = JSON.parse(shown.stdout);
  const loaded = loadImage(img);
  assert.deepEqual(meta.processes, loaded.processes);
  assert.equal(meta.root, pid);
  assert.equal(meta.processes[0].pid, pid);
  assert.equal(meta.processes[0].comm, 'counter');
  assert.ok(meta.processes[0].vmas.some((v: { name: string }) => v.name === '[stack]'));
  // Page records as their runs only: no contents.
  assert.deepEqual(meta.pages, loaded.pages.map((p) => ({ pid: p.pid, bytes: p.data.length, runs: p.runs })));
  assert.ok(meta.pages.length > 0);
  const human = await cli(['show', img]);
  assert.match(human.stdout, new RegExp(`^process ${pid} \\(counter\\)`));
  assert.match(human.stdout, /fd +1 file/);
});

test('stasis show --json covers the whole tree, not only its root', async () => {
  const prog = build('many');
  const dir = tmpdir('showtree');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(prog, ['procs', '4'], out);
  await waitFor(out, /^ready$/m);
  const ck = await cli(['checkpoint', String(pid), '--output=' + img]);
  assert.equal(ck.code, 0, ck.stderr);
  procs.addTree(pid);
  const meta = JSON.parse((await cli(['show', img, '--json'])).stdout);
  assert.equal(meta.processes.length, 4);
  assert.equal(meta.processes[0].pid, pid);
  const pids = meta.processes.map((p: { pid: number }) => p.pid);
  for (const p of meta.processes.slice(1)) assert.equal(p.ppid, pid);
  assert.deepEqual(meta.processes, loadImage(img).processes);
  // Every process's page records are listed under its own pid.
  assert.deepEqual(new Set(meta.pages.map((p: { pid: number }) => p.pid)), new Set(pids));
  assert.ok(Array.isArray(meta.zombies) && Array.isArray(meta.pipes) && Array.isArray(meta.memfds));
  const human = await cli(['show', img]);
  assert.match(human.stdout, /^tree of 4 process\(es\)/);
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
  const { dir, img, pid } = await startCounter('broken');
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
  await checkpointKilled(pid, img);
  fs.appendFileSync(prog, 'x');
  const children = listChildren(process.pid);
  assert.throws(() => restartVerified(img), new RegExp(`${prog} changed since the checkpoint`));
  assert.deepEqual(listChildren(process.pid), children);
});

test('restart in the foreground returns the exit status of the restored process', async () => {
  // Room for a slow CLI start (loading zod alone takes 0.1-0.2 s under load) before the counter ends.
  const { out, img, pid } = await startCounter('fg', ['10']);
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
  const { dir, out, img, pid } = await startCounter('fgsig');
  const pidfile = path.join(dir, 'pid');
  await checkpointKilled(pid, img);
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
  const { dir, out, pid } = await startProgram('memhog', 'bigpipe', ['80'], /^ready$/m);
  const pidfile = path.join(dir, 'pid');
  // 80 MiB: several Pages records, written by the pipelined writer into a pipe.
  const pipeline = spawn('sh', ['-c', `"${process.execPath}" "${CLI}" checkpoint ${pid} --kill | "${process.execPath}" "${CLI}" restart -d -v --verify --pidfile "${pidfile}" -`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  pipeline.stderr.on('data', (d) => (stderr += d));
  assert.equal(await new Promise((res) => pipeline.on('close', res)), 0, stderr);
  // The 80 MiB went in by UFFDIO_COPY (the rest of its few pages too, or by process_vm_writev).
  const m = /(\d+) bytes of pages written \((\d+) by UFFDIO_COPY\)/.exec(stderr);
  assert.ok(m && Number(m[2]) >= 80 << 20 && Number(m[2]) <= Number(m[1]), stderr);
  await waitGone(pid, procs);
  const restored = procs.add(Number(fs.readFileSync(pidfile, 'utf8')));
  process.kill(restored, 'SIGUSR1');
  await waitFor(out, /^verified$/m);
});

test('without userfaultfd a restart writes large memory the ordinary way, every page intact', async () => {
  const { out, img, pid } = await startProgram('memhog', 'no-uffd', ['48'], /^ready$/m);
  // Killed, a process of 8 MiB or more has its memory freed by stasis too (process_mrelease), as it dies.
  const c = await cli(['checkpoint', String(pid), '-o', img, '--kill', '-v']);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stderr, new RegExp(`tree killed \\(the memory of pid ${pid} released from here: process_mrelease\\)\n`));
  await waitGone(pid, procs);
  // As where a seccomp filter or the kernel refuses userfaultfd: populated ahead, then process_vm_writev.
  const r = await cli(['restart', '-d', '-v', '--verify', img], { env: { STASIS_TEST_NO_UFFD: '1' } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /\d+ bytes of pages written\n/, 'no page went in by UFFDIO_COPY');
  const restored = procs.add(Number(r.stdout.trim()));
  process.kill(restored, 'SIGUSR1');
  await waitFor(out, /^verified$/m);
});

// A restart from an image file drops each copied page from its mapping of
// the file (page-copy.ts): read again, a page comes back from the file.
test('a restart from an image file leaves the file intact: restarted twice, every page of both is right', async () => {
  const { out, img, pid } = await startProgram('memhog', 'dropped', ['48'], /^ready$/m);
  await checkpointKilled(pid, img);
  for (const round of [1, 2]) {
    const r = await cli(['restart', '-d', '-v', '--verify', img]);
    assert.equal(r.code, 0, r.stderr);
    const m = /(\d+) bytes of pages written \((\d+) by UFFDIO_COPY\)/.exec(r.stderr);
    assert.ok(m && Number(m[2]) >= 48 << 20, r.stderr);
    const restored = procs.add(Number(r.stdout.trim()));
    process.kill(restored, 'SIGUSR1');
    await waitFor(out, (text) => text.split('\n').filter((l) => l === 'verified').length === round);
    await waitGone(restored, procs);
  }
});

test('a lone process whose pid is in use is restored under another, and restart -d says so on stderr', async () => {
  const { img, pid } = await startProgram('memhog', 'moved', ['1'], /^ready$/m);
  assert.equal((await cli(['checkpoint', String(pid), '-o', img])).code, 0);
  const r = await cli(['restart', '-d', img]);
  assert.equal(r.code, 0, r.stderr);
  const moved = procs.add(Number(r.stdout.trim()));
  assert.notEqual(moved, pid);
  assert.equal(r.stderr, `stasis: pid ${pid} is in use: restored as pid ${moved}\n`);
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

/** The exit status lines of `stasis --help` ("  N   meaning"). */
function exitLines(help: string): string[] {
  return help.slice(help.indexOf('exit status:')).split('\n').filter((l) => /^  (\d+|128\+N) /.test(l)).map((l) => l.trim());
}

// bin/stasis run as users run it, through its #! line (cli() runs it with
// node): it starts node without NODE_EXTRA_CA_CERTS, whose certificates
// node would otherwise read at start-up. A file that is not there makes
// node warn on stderr, so the warning shows whether it was read.
test('bin/stasis, run through its #! line, starts node without NODE_EXTRA_CA_CERTS and passes every argument', async () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  const run = (args: string[]) => new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(CLI, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_EXTRA_CA_CERTS: '/nonexistent/ca.pem' } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  assert.deepEqual(await run(['--version']), { code: 0, stdout: `stasis ${pkg.version}\n`, stderr: '' });
  // An argument with a space and one that looks like an option of sh's stay as given.
  const r = await run(['show', '/nonexistent/an image', '-c']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /^stasis show: unknown option -c\n/);
  const node = await new Promise<string>((resolve) => {
    const child = spawn(process.execPath, ['-e', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NODE_EXTRA_CA_CERTS: '/nonexistent/ca.pem' } });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', () => resolve(stderr));
  });
  assert.match(node, /extra certs/, 'node itself reads NODE_EXTRA_CA_CERTS (else this test shows nothing)');
});

test('stasis --version and --help; COMMAND --help for every command and alias', async () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  for (const v of ['--version', '-V']) {
    const r = await cli([v]);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `stasis ${pkg.version}\n`);
  }
  const help = await cli(['--help']);
  assert.equal(help.code, 0);
  assert.equal(help.stderr, '');
  for (const c of ['checkpoint', 'restart', 'show', 'check']) assert.match(help.stdout, new RegExp(`^  stasis ${c}\\b`, 'm'));
  const options: Record<string, string[]> = {
    checkpoint: ['-o, --output', '--kill', '--external', '--freeze-timeout', '-v, --verbose', '-h, --help'],
    restart: ['-d, --detach', '--pidfile', '--pid-ns', '--verify', '--inherit-fd', '-v, --verbose', '-h, --help'],
    show: ['--json', '-h, --help'],
    check: ['-h, --help'],
  };
  for (const [args, name] of [[['checkpoint', '--help'], 'checkpoint'], [['restart', '-h'], 'restart'], [['show', '--help'], 'show'], [['check', '--help'], 'check'],
    [['dump', '--help'], 'checkpoint'], [['restore', '--help'], 'restart'], [['help', 'restart'], 'restart'], [['restart', '/nonexistent', '--help'], 'restart']] as Array<[string[], string]>) {
    const r = await cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr, '', args.join(' '));
    assert.match(r.stdout, new RegExp(`^usage: stasis ${name}\\b`), args.join(' '));
    for (const o of options[name]) assert.ok(r.stdout.includes(`  ${o.startsWith('-') && !o.includes(',') ? '    ' : ''}${o}`), `${args.join(' ')} lists ${o}`);
    // Every page states the exit statuses.
    assert.deepEqual(exitLines(r.stdout), exitLines(help.stdout), args.join(' '));
  }
});

test('the exit statuses of --help are the ones the README documents', () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', '..', 'README.md'), 'utf8');
  const help = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' }).stdout;
  const lines = exitLines(help);
  assert.ok(lines.length >= 5);
  for (const l of lines) {
    const [code] = l.split(/\s+/);
    assert.match(readme, new RegExp(`^\\| \`${code.replace('+', '\\+')}\` \\|`, 'm'), `README documents exit status ${code}`);
  }
});

test('usage errors name the command and exit 2; nothing is started', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['checkpoint'], /^stasis checkpoint: takes one PID\n/],
    [['checkpoint', 'abc'], /^stasis checkpoint: not a pid: abc\n/],
    [['checkpoint', '12abc'], /^stasis checkpoint: not a pid: 12abc\n/],
    [['checkpoint', '1', '2'], /^stasis checkpoint: takes one PID; extra: 2\n/],
    [['checkpoint', '1', '--bogus'], /^stasis checkpoint: unknown option --bogus\n/],
    [['checkpoint', '1', '-o'], /^stasis checkpoint: -o needs a value\n/],
    [['checkpoint', '1', '-o', '--kill'], /^stasis checkpoint: -o needs a value\n/],
    [['checkpoint', '1', '--kill=yes'], /^stasis checkpoint: --kill takes no value\n/],
    [['checkpoint', '1', '--freeze-timeout', 'soon'], /^stasis checkpoint: --freeze-timeout takes seconds, not soon\n/],
    [['dump', 'x'], /^stasis checkpoint: not a pid: x\n/],
    [['restart', '--kill'], /^stasis restart: unknown option --kill\n/],
    [['restart', 'a', 'b'], /^stasis restart: takes at most one image; extra: b\n/],
    [['restart', '--inherit-fd', '3:x', 'img'], /^stasis restart: --inherit-fd takes FD:pipe:\[INODE\] or FD:unix:\[INODE\], not 3:x\n/],
    [['restart', '--pidfile'], /^stasis restart: --pidfile needs a value\n/],
    [['show'], /^stasis show: takes one image file/],
    [['show', 'img', '--verify'], /^stasis show: unknown option --verify\n/],
    [['check', 'now'], /^stasis check: takes no arguments; extra: now\n/],
    [['frobnicate'], /^stasis: unknown command frobnicate\n/],
    [['--kill'], /^stasis: unknown option --kill \(options follow the command\)\n/],
    [['help', 'frobnicate'], /^stasis: unknown command frobnicate\n/],
    [[], /^stasis: no command given\n/],
  ];
  const children = listChildren(process.pid);
  for (const [args, re] of cases) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
    assert.match(r.stderr, /^usage: stasis /m, args.join(' '));
    assert.equal(r.stdout, '', args.join(' '));
  }
  assert.deepEqual(listChildren(process.pid), children);
});

test('a missing, unreadable or non-image file is refused in one line, exit 1', async () => {
  const dir = tmpdir('noimage');
  const secret = path.join(dir, 'secret.img');
  fs.writeFileSync(secret, 'STASIS', { mode: 0o600 });
  fs.chmodSync(dir, 0o755);
  const tiny = path.join(dir, 'tiny.img');
  fs.writeFileSync(tiny, 'STA');
  const cases: Array<[string[], RegExp, { uid?: number }?]> = [
    [['restart', '/nonexistent'], /^stasis: \/nonexistent: cannot open \(ENOENT\)\n$/],
    [['restart', '-d', '--verify', '/nonexistent'], /^stasis: \/nonexistent: cannot open \(ENOENT\)\n$/],
    [['show', '/nonexistent'], /^stasis: \/nonexistent: cannot open \(ENOENT\)\n$/],
    [['show', '--json', dir], new RegExp(`^stasis: ${dir}: is a directory, not an image\n$`)],
    [['restart', dir], new RegExp(`^stasis: ${dir}: is a directory, not an image\n$`)],
    [['show', '/etc/passwd'], /^stasis: \/etc\/passwd is not a stasis image \(bad magic\)\n$/],
    [['restart', tiny], new RegExp(`^stasis: ${tiny} is truncated: needed 16 bytes at byte 0, the stream ended after 3\n$`)],
    [['restart', secret], new RegExp(`^stasis: ${secret}: cannot open \\(EACCES\\)\n$`), { uid: 65534 }],
  ];
  for (const [args, re, as] of cases) {
    const r = as?.uid !== undefined
      ? spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', uid: as.uid, gid: as.uid })
      : await cli(args);
    const code = 'status' in r ? r.status : r.code;
    assert.equal(code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
});

test('the long forms of every flag work: --output=, --verbose, --detach, --pidfile', async () => {
  const { dir, out, img, pid } = await startCounter('longflags');
  const pidfile = path.join(dir, 'pid');
  const c = await cli(['checkpoint', `--output=${img}`, '--kill', '--freeze-timeout=30', '--verbose', String(pid)]);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stderr, /^\[[\d.]+ ms\] freezing$/m);
  assert.match(c.stderr, new RegExp(`^checkpointed pid ${pid}: 1 process\\(es\\), 1 thread\\(s\\), \\d+ bytes \\(\\d+ of pages\\), frozen [\\d.]+ ms$`, 'm'));
  await waitGone(pid, procs);
  const r = await cli(['restore', '--detach', '--verify', '--verbose', `--pidfile=${pidfile}`, img]);
  assert.equal(r.code, 0, r.stderr);
  const restored = procs.add(Number(fs.readFileSync(pidfile, 'utf8')));
  assert.equal(r.stdout, `${restored}\n`);
  assert.match(r.stderr, /^\[[\d.]+ ms\] restored as pid \d+/m);
  const seen = fs.readFileSync(out, 'utf8').trim().split('\n').length;
  await waitFor(out, new RegExp(`^counter: ${seen + 1}$`, 'm'));
});

test('STASIS_REPORT_RSS=1 reports the peak resident memory of the command at exit', async () => {
  const dir = tmpdir('rss');
  const prog = build('counter');
  const out = path.join(dir, 'out'), img = path.join(dir, 'image');
  const pid = procs.start(prog, [], out);
  await waitFor(out, /^counter: 1$/m);
  const run = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, STASIS_REPORT_RSS: '1' } });
  const c = run(['checkpoint', String(pid), '-o', img]);
  assert.equal(c.status, 0, c.stderr);
  const kib = Number(/^stasis: peak RSS (\d+) KiB$/m.exec(c.stderr)?.[1]);
  assert.ok(kib > 1024 && kib < 16 << 20, c.stderr);
  assert.match(run(['show', img]).stderr, /^stasis: peak RSS \d+ KiB\n$/);
  // Without the variable, nothing extra.
  assert.equal((await cli(['show', img])).stderr, '');
});

// The code cache is code: each command keeps its own file (compile-cache.ts),
// used only while no one else may write it.
test('a command\'s code cache is used while only its owner may write it; one others may write is replaced, not run', async () => {
  const file = path.join(ROOT, 'dist', '.compile-cache', `v8-${process.versions.v8}-${process.arch}-check.bin`);
  assert.equal((await cli(['check'])).code, 0); // learns, if it had not yet
  const before = fs.statSync(file);
  assert.equal((await cli(['check'])).code, 0);
  assert.equal(fs.statSync(file).ino, before.ino, 'a trusted cache that holds everything is read, not rewritten');
  fs.chmodSync(file, 0o666);
  assert.equal((await cli(['check'])).code, 0);
  const after = fs.statSync(file);
  assert.notEqual(after.ino, before.ino, 'compiled afresh and written anew');
  assert.equal(after.mode & 0o777, 0o644);
});

// A restart with --verify also runs the checkpoint's code: learned into the
// plain restart's cache it would make every later restart read more.
test('a restart with --verify learns into a code cache of its own, not the plain restart\'s', async () => {
  const { img, pid } = await startCounter('cache-verify', [], 2);
  const r = await cli(['checkpoint', String(pid), '-o', img]);
  assert.equal(r.code, 0, r.stderr);
  const cacheOf = (part: string) => path.join(ROOT, 'dist', '.compile-cache', `v8-${process.versions.v8}-${process.arch}-${part}.bin`);
  const restart = async (extra: string[]) => {
    const res = await cli(['restart', '-d', ...extra, img]);
    assert.equal(res.code, 0, res.stderr);
    procs.add(Number(res.stdout.trim()));
  };
  await restart([]); // learns, if it had not yet
  const plain = fs.statSync(cacheOf('restart'));
  await restart(['--verify']);
  await restart(['--verify']);
  assert.equal(fs.statSync(cacheOf('restart')).ino, plain.ino, 'the plain restart\'s cache is left as it was');
  assert.ok(fs.statSync(cacheOf('restart-verify')).size > plain.size, 'the verifying restart\'s cache holds more than the plain one');
});

// Terminals (issue #8): a pty pair inside the tree, a shell in a terminal,
// tmux, and --shell-job for a job of the user's terminal.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { build, Procs, waitFor, waitGone, tmpdir, checkpointKillRestart, assertLeftRunning, CLI } from './harness';
import { checkpointSync, StasisError } from '../src';
import { loadImage } from '../src/image/load';
import { validateImage } from '../src/image/validate';
import { ImageTty } from '../src/kinds/tty';
import { readStat } from '../src/proc';
import { syscall } from '../src/sys/libc';
import { SYS } from '../src/sys/x86';

const procs = new Procs();
after(() => procs.cleanup());

test('a pty pair inside the tree keeps termios, window size, packet mode, queued bytes both ways, its session and foreground group', async () => {
  const dir = tmpdir('pty');
  const out = path.join(dir, 'out');
  const pid = procs.start(build('fid_pty'), [], out);
  await waitFor(out, /^ready\n/);
  const child = readStat(pid) && fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).map(Number)[0];
  const fgBefore = readStat(child).tpgid;
  const r = await checkpointKillRestart(procs, pid, dir);
  // The session leader has its terminal back, with the grandchild's group in the foreground.
  assert.equal(readStat(child).session, child);
  assert.equal(readStat(child).tpgid, fgBefore);
  assert.notEqual(readStat(child).ttyNr, 0);
  process.kill(r.pid, 'SIGUSR1');
  assert.deepEqual(await r.wait(), { code: 0, signal: null });
  assert.equal(fs.readFileSync(out, 'utf8'), 'ready\nmaster ok\nslave ok\ndone\n');
});

/** Type into a FIFO the terminal program copies to its pty master. */
function type(keys: string, text: string): void {
  fs.appendFileSync(keys, text);
}

// ---- lines waiting in a canonical-mode terminal -------------------------------

/** canon_pty's child's five reads: the lines queued at checkpoint, then the unfinished one completed by "def\n". */
const CANON_READS = 'read 1: one\\n\nread 2: x\\x04y\\nz\\n\nread 3: eof\nread 4: \nread 5: abcdef\\n\n';

async function startCanon(tag: string): Promise<{ dir: string; out: string; keys: string; pid: number; child: number }> {
  const dir = tmpdir(tag);
  const out = path.join(dir, 'out');
  const keys = path.join(dir, 'keys');
  execFileSync('mkfifo', [keys]);
  const pid = procs.start(build('canon_pty'), [keys], out);
  await waitFor(out, /^ready\n/);
  const child = Number(fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  return { dir, out, keys, pid, child };
}

/** Let the child read: the queued lines come first, then "def\n" typed now completes "abc". */
async function readCanon(c: { out: string; keys: string; child: number }, wait: () => Promise<unknown>): Promise<string> {
  process.kill(c.child, 'SIGUSR1');
  await waitFor(c.out, /read 4: .*\n/);
  type(c.keys, 'def\n');
  await wait();
  return fs.readFileSync(c.out, 'utf8').replace(/^typed \d+\n/gm, '');
}

test('lines waiting in a canonical-mode pty (escaped ^D and newline, lines ended by ^D, an empty one) and an unfinished line come back whole after restart', async () => {
  const c = await startCanon('canon');
  const r = await checkpointKillRestart(procs, c.pid, c.dir);
  const out = await readCanon(c, async () => assert.deepEqual(await r.wait(), { code: 0, signal: null }));
  assert.equal(out, `ready\n${CANON_READS}master quiet\ndone\n`);
  // The image holds the lines as read() gives them, and the unfinished line.
  const img = loadImage(path.join(c.dir, 'image'));
  try {
    const t = img.objects.ttys!.find((x) => x.lines)!;
    assert.deepEqual(t.lines!.map((l) => Buffer.from(l, 'base64').toString('latin1')), ['one\n', 'x\x04y\nz\n', 'eof', '']);
    assert.equal(Buffer.from(t.partial!, 'base64').toString('latin1'), 'abc');
    // Crafted: lines for a non-canonical slave, with raw input too, more than n_tty holds.
    const crafted = (edit: (t: ImageTty) => void, want: RegExp) => {
      const saved = structuredClone(t);
      edit(t);
      try {
        assert.throws(() => validateImage(img, []), (e: Error) => e instanceof StasisError && want.test(e.message) && !e.message.includes('\n'));
      } finally {
        Object.assign(t, saved);
      }
    };
    crafted((x) => { x.termios!.lflag &= ~2; }, /tty \d+: lines queued for a slave that is not in canonical mode/);
    crafted((x) => { x.input = 'eA=='; }, /tty \d+: both raw input and canonical lines queued/);
    crafted((x) => { x.partial = Buffer.alloc(4090).toString('base64'); }, /tty \d+: 4105 bytes of queued lines: more than a terminal holds/);
    validateImage(img, []);
  } finally {
    img.release();
  }
});

test('after a snapshot of a canonical-mode pty the original reads the same lines and the same unfinished line', async () => {
  const c = await startCanon('canonsnap');
  checkpointSync(c.pid, path.join(c.dir, 'image'));
  assertLeftRunning([c.pid, c.child]);
  const out = await readCanon(c, () => waitFor(c.out, /done\n/));
  assert.equal(out, `ready\n${CANON_READS}master quiet\ndone\n`);
});

test('a canonical-mode pty whose output is stopped (^S) is refused by name; the target goes on and loses no key', async () => {
  const c = await startCanon('canonstop');
  type(c.keys, '\x13');
  await waitFor(c.out, /typed 1\n/);
  assert.throws(() => checkpointSync(c.pid, path.join(c.dir, 'image')), /pty \/dev\/pts\/\d+ \(master fd \d+ of pid \d+\): its output is stopped \(\^S with IXON\).*resume it \(\^Q\)/);
  assertLeftRunning([c.pid, c.child]);
  assert.equal(fs.existsSync(path.join(c.dir, 'image')), false);
  type(c.keys, '\x11');
  await waitFor(c.out, /typed 1\n.*typed 1\n/s);
  const out = await readCanon(c, () => waitFor(c.out, /done\n/));
  assert.equal(out, `ready\n${CANON_READS}master quiet\ndone\n`);
});

test('an interactive bash in a pty whose master is in the tree: keys reach the same shell after restart, stty -a is as before', async () => {
  const dir = tmpdir('ptyshell');
  const out = path.join(dir, 'out');
  const keys = path.join(dir, 'keys');
  execFileSync('mkfifo', [keys]);
  const pid = procs.start(build('ptyshell'), [keys], out);
  await waitFor(out, /\$ $/);
  // $((...)) makes the answer differ from the echo of what was typed.
  type(keys, 'stty -a; echo "shell $$ mark-$((40+2))"\n');
  const before = await waitFor(out, /shell \d+ mark-42\r?\n/);
  const shell = /shell (\d+) mark-42/.exec(before)![1];
  const sttyBefore = before.slice(before.lastIndexOf('speed '), before.indexOf(`shell ${shell} mark-42`));
  assert.match(sttyBefore, /rows 40; columns 120/);
  await waitFor(out, (t) => t.endsWith('$ '));
  await checkpointKillRestart(procs, pid, dir);
  type(keys, 'stty -a; echo "shell $$ mark-$((40+3))"\n');
  const after = await waitFor(out, /shell \d+ mark-43\r?\n/);
  assert.equal(/shell (\d+) mark-43/.exec(after)![1], shell, 'the same shell answers');
  const sttyAfter = after.slice(after.lastIndexOf('speed '), after.indexOf(`shell ${shell} mark-43`));
  assert.equal(sttyAfter, sttyBefore);
});

// ---- tmux -------------------------------------------------------------------

interface Tmux { sock: string; run(...args: string[]): string; server: number }

function startTmux(dir: string, cmd: string): Tmux {
  const sock = path.join(dir, 'tmux.sock');
  const run = (...args: string[]) => execFileSync('tmux', ['-S', sock, '-f', '/dev/null', ...args], { encoding: 'utf8', env: { ...process.env, PS1: '$ ', TERM: 'xterm' } });
  run('new-session', '-d', '-x', '100', '-y', '30', cmd);
  const server = procs.add(Number(run('display-message', '-p', '#{pid}').trim()));
  return { sock, run, server };
}

async function paneShows(t: Tmux, want: RegExp, ms = 20000): Promise<string> {
  const until = Date.now() + ms;
  for (;;) {
    const text = t.run('capture-pane', '-p', '-S', '-1000');
    if (want.test(text)) return text;
    if (Date.now() > until) throw new Error(`timed out waiting for ${want} in the pane; it shows:\n${text}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('a job started from an interactive shell in a terminal (tmux) restarts with --shell-job on that terminal and reads the keys typed there', async () => {
  const dir = tmpdir('shelljob');
  const out = path.join(dir, 'out');
  const img = path.join(dir, 'image');
  const pidfile = path.join(dir, 'pid');
  const t = startTmux(dir, "env PS1='$ ' bash --norc --noprofile -i");
  await paneShows(t, /^\$\s*$/m);
  t.run('send-keys', '-l', `${build('ttyjob')} ${out}`);
  t.run('send-keys', 'Enter');
  const job = Number(/ready (\d+)/.exec(await waitFor(out, /ready \d+\n/))![1]);
  assert.equal(readStat(job).tpgid, readStat(job).pgrp, 'the job is in the foreground');
  checkpointSync(job, img, { kill: true, shellJob: true });
  await waitGone(job, procs);
  t.run('send-keys', '-l', `node ${CLI} restart --shell-job --verify --pidfile ${pidfile} ${img}`);
  t.run('send-keys', 'Enter');
  await waitFor(pidfile, /^\d+\n$/);
  const restored = procs.add(Number(fs.readFileSync(pidfile, 'utf8')));
  assert.equal(readStat(restored).tpgid, readStat(restored).pgrp, 'the restored job is in the foreground of the terminal');
  t.run('send-keys', '-l', 'hello after restart');
  t.run('send-keys', 'Enter');
  await waitFor(out, /got: hello after restart\n/);
  t.run('send-keys', '-l', 'quit');
  t.run('send-keys', 'Enter');
  assert.equal(await waitFor(out, /got: quit\n/), `ready ${job}\ngot: hello after restart\ngot: quit\n`);
  // The restart returned the job's exit status to the shell.
  t.run('send-keys', '-l', 'echo "status $?"');
  t.run('send-keys', 'Enter');
  await paneShows(t, /^status 0$/m);
});

test('a terminal outside the tree without --shell-job is refused by name; the target goes on', async () => {
  const dir = tmpdir('ttyout');
  const master = fs.openSync('/dev/ptmx', fs.constants.O_RDWR | fs.constants.O_NOCTTY);
  try {
    const n = Buffer.alloc(4);
    syscall(SYS.ioctl, 'TIOCGPTN', master, 0x80045430, n);
    syscall(SYS.ioctl, 'TIOCSPTLCK', master, 0x40045431, Buffer.alloc(4));
    const slave = fs.openSync(`/dev/pts/${n.readUInt32LE(0)}`, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    let pid: number;
    try {
      pid = procs.start(build('counter'), [], '', { stdout: slave });
    } finally {
      fs.closeSync(slave);
    }
    // Its first line on the terminal: it runs.
    for (const until = Date.now() + 10000; ;) {
      const b = Buffer.alloc(64);
      if (fs.readSync(master, b, 0, 64, null) > 0) break;
      if (Date.now() > until) throw new Error('counter printed nothing');
    }
    assert.throws(() => checkpointSync(pid, path.join(dir, 'image')), /fd 1 of pid \d+: terminal \/dev\/pts\/\d+ belongs to a terminal outside the tree .*--shell-job/);
    assertLeftRunning(pid);
    assert.equal(fs.existsSync(path.join(dir, 'image')), false);
  } finally {
    fs.closeSync(master);
  }
});

test('tmux with a shell in a pane: after restart keys typed into the pane reach the same shell, scrollback and stty -a are as before, tmux ls answers',
  async () => {
    const dir = tmpdir('tmux');
    const t = startTmux(dir, "env PS1='$ ' bash --norc --noprofile -i");
    await paneShows(t, /^\$\s*$/m);
    t.run('send-keys', '-l', 'stty -a; echo "shell $$ mark-$((40+2))"');
    t.run('send-keys', 'Enter');
    // The shell's next prompt too: it is idle, and the scrollback will not grow meanwhile.
    const before = await paneShows(t, /^shell \d+ mark-42\n\$ ?$/m);
    const shell = /^shell (\d+) mark-42$/m.exec(before)![1];
    await checkpointKillRestart(procs, t.server, dir);
    assert.match(t.run('ls'), /^0: 1 windows/m);
    assert.equal(t.run('capture-pane', '-p', '-S', '-1000').trimEnd(), before.trimEnd(), 'the scrollback is as before');
    t.run('send-keys', '-l', 'stty -a; echo "shell $$ mark-$((40+3))"');
    t.run('send-keys', 'Enter');
    const after = await paneShows(t, /^shell \d+ mark-43$/m);
    assert.equal(/^shell (\d+) mark-43$/m.exec(after)![1], shell, 'the same shell answers');
    const stty = (text: string, mark: string) => text.slice(text.lastIndexOf('speed ', text.indexOf(mark)), text.indexOf(mark));
    assert.equal(stty(after, `shell ${shell} mark-43`), stty(before, `shell ${shell} mark-42`));
  });

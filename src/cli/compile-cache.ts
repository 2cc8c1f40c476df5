// V8's code cache for the command line. Compiling what a command loads
// (dist/stasis.js, the bundle of stasis and zod, and koffi) took 40-60 ms of
// every cold `stasis` run; with V8's serialized bytecode it is a lookup.
// Node 22 does this itself (module.enableCompileCache); Node 20 does not,
// so this hook does the same through vm.Script's cachedData, in one file
// per command.
//
// The cache is code: it is read only from a file that only its owner (us
// or root) can change, in a directory likewise, next to dist/ by default
// (made by `npm run build`, refreshed when V8 rejects it, e.g. after a Node
// upgrade, if that directory is ours). V8 itself checks each entry against
// the source it was made from, its own version and flags; anything it
// rejects is compiled as usual. STASIS_COMPILE_CACHE=0 turns it off,
// STASIS_COMPILE_CACHE=ro never writes it.
//
// What V8 serializes is the bytecode of the functions compiled so far. At
// build time that is the modules' top level only; a checkpoint then
// compiles its own functions on first call, while the tree is frozen. So
// the first command of each kind that succeeds writes the cache again at
// its exit, with everything it ran (as Node 22's compile cache learns from
// the runs it sees); later commands of that kind find their code compiled.
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import Module from 'node:module';

/** dist/.compile-cache, beside the code it caches */
export const CACHE_DIR = path.join(__dirname, '..', '..', '.compile-cache');

interface Internal {
  _compile(content: string, filename: string): unknown;
  require(id: string): unknown;
  exports: unknown;
  paths: string[];
}
const M = Module as unknown as {
  prototype: Internal;
  wrap(s: string): string;
  _resolveFilename(request: string, parent: unknown, isMain: boolean, options?: unknown): string;
  _resolveLookupPaths(request: string, parent: unknown): string[] | null;
  _extensions: unknown;
  _cache: unknown;
};

/**
 * One cache per command: V8 deserializes every function in an entry, and
 * one entry learned from all commands (1 MB) cost a checkpoint of `sleep`
 * ~5 ms more than its own (0.5 MB). A restart with --verify runs the
 * checkpoint's code as well: learned into the plain restart's cache, it
 * made that 0.69 MB -> 0.80 MB. Anything else shares a general one.
 */
const PARTS: Record<string, string> = {
  checkpoint: 'checkpoint', dump: 'checkpoint', restart: 'restart', restore: 'restart',
  'restart --verify': 'restart-verify', 'restore --verify': 'restart-verify', show: 'show', check: 'check',
};

/** The cache's name for a command line (its first word, and --verify for a restart). */
export function cacheCommand(argv: string[]): string | undefined {
  return argv[0] !== undefined && argv.includes('--verify') ? `${argv[0]} --verify` : argv[0];
}

/** The cache file of this Node and V8 (another version's entries would all be rejected), for `command`. */
function cacheFile(dir: string, command?: string): string {
  const part = (command !== undefined && Object.hasOwn(PARTS, command)) ? PARTS[command] : 'other';
  return path.join(dir, `v8-${process.versions.v8}-${process.arch}-${part}.bin`);
}

/** Ours (or root's) and writable by nobody else: then it may hold code we run. */
function trusted(st: fs.Stats): boolean {
  const uid = process.geteuid?.() ?? -1;
  return (st.uid === uid || st.uid === 0) && (st.mode & 0o022) === 0;
}

/** name -> cached data; layout: (u32 name length, u32 data length, name, data)* */
function readTable(file: string): Map<string, Buffer> {
  const table = new Map<string, Buffer>();
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return table;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || !trusted(st) || !trusted(fs.statSync(path.dirname(file)))) return table;
    const b = Buffer.allocUnsafe(st.size);
    let got = 0;
    while (got < b.length) {
      const n = fs.readSync(fd, b, got, b.length - got, got);
      if (n === 0) return table;
      got += n;
    }
    for (let off = 0; off + 8 <= b.length;) {
      const nl = b.readUInt32LE(off), dl = b.readUInt32LE(off + 4);
      if (off + 8 + nl + dl > b.length) break;
      table.set(b.toString('utf8', off + 8, off + 8 + nl), b.subarray(off + 8 + nl, off + 8 + nl + dl));
      off += 8 + nl + dl;
    }
  } catch {
    table.clear();
  } finally {
    fs.closeSync(fd);
  }
  return table;
}

function writeTable(file: string, table: Map<string, Buffer>): void {
  const dir = path.dirname(file);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    if (!trusted(fs.statSync(dir)) || fs.statSync(dir).uid !== (process.geteuid?.() ?? -1)) return;
    const parts: Buffer[] = [];
    for (const [name, data] of table) {
      const h = Buffer.allocUnsafe(8);
      const n = Buffer.from(name, 'utf8');
      h.writeUInt32LE(n.length, 0);
      h.writeUInt32LE(data.length, 4);
      parts.push(h, n, data);
    }
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, Buffer.concat(parts), { mode: 0o644, flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch {
    // A cache we cannot write is only slower.
  }
}

interface State {
  table: Map<string, Buffer>;
  /** compiled without accepted cache data */
  fresh: Map<string, vm.Script>;
  /** everything compiled through the hook in this process */
  all: Map<string, vm.Script>;
  file: string;
  /** the command to learn from at exit, if it succeeds */
  learning?: string;
  /** V8 turned down an entry (its source changed): what was learned is stale */
  rejected?: boolean;
}

/** The table entry naming the commands the cache has learned from. */
const LEARNED = '\0learned';

let installed: State | undefined;

/**
 * Compile every CommonJS module loaded from now on through the cache of
 * `command` (the command line's first word). With `save`, write it back at
 * exit when some module was compiled anew.
 */
export function install(dir = CACHE_DIR, save = true, command?: string): void {
  if (installed || process.env.STASIS_COMPILE_CACHE === '0') return;
  const file = cacheFile(dir, command);
  const state: State = installed = { table: readTable(file), fresh: new Map(), all: new Map(), file };
  M.prototype._compile = function (this: Internal, content: string, filename: string): unknown {
    // As Node does: a #! line is not JavaScript.
    const source = M.wrap(content.startsWith('#!') ? `//${content}` : content);
    const cachedData = state.table.get(filename);
    const script = new vm.Script(source, { filename, cachedData });
    if (!cachedData || script.cachedDataRejected) state.fresh.set(filename, script);
    if (cachedData && script.cachedDataRejected) state.rejected = true;
    state.all.set(filename, script);
    const fn = script.runInThisContext({ displayErrors: true }) as (...a: unknown[]) => unknown;
    // The `require` Node would hand the module.
    const mod = this;
    const req = ((id: string) => mod.require(id)) as NodeJS.Require;
    req.resolve = Object.assign((request: string, options?: { paths?: string[] }) => M._resolveFilename(request, mod, false, options), {
      paths: (request: string) => M._resolveLookupPaths(request, mod),
    });
    req.main = require.main;
    req.extensions = M._extensions as NodeJS.RequireExtensions;
    req.cache = M._cache as NodeJS.Dict<NodeModule>;
    return fn.call(mod.exports, mod.exports, req, mod, filename, path.dirname(filename));
  };
  if (save && process.env.STASIS_COMPILE_CACHE !== 'ro') {
    process.on('exit', (code) => {
      if (state.rejected) state.table.delete(LEARNED);
      const known = learned(state);
      if (code === 0 && state.learning && !known.includes(state.learning)) {
        for (const [name, script] of state.all) state.fresh.set(name, script);
        state.table.set(LEARNED, Buffer.from(JSON.stringify([...known, state.learning])));
      }
      saveNow();
    });
  }
}

function learned(state: State): string[] {
  try {
    const v = JSON.parse(state.table.get(LEARNED)?.toString() ?? '[]') as unknown;
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  } catch {
    return [];
  }
}

/** The running command, for the cache to learn from once, when it succeeds (see above). */
export function learnFrom(command: string): void {
  if (installed) installed.learning = command;
}

/** Write the cache now if modules were compiled anew (made after they ran: their used functions are in it). */
export function saveNow(): void {
  if (!installed?.fresh.size) return;
  for (const [name, script] of installed.fresh) installed.table.set(name, script.createCachedData());
  installed.fresh.clear();
  writeTable(installed.file, installed.table);
}

// `node dist/src/cli/compile-cache.js`: made by `npm run build`, so that the
// first command run is as quick as the next. Loads the bundle's top level;
// the modules inside it run on first use, and are learned from the first
// run of each command (above).
if (require.main === module) {
  for (const f of fs.existsSync(CACHE_DIR) ? fs.readdirSync(CACHE_DIR) : []) fs.rmSync(path.join(CACHE_DIR, f), { force: true });
  install(CACHE_DIR, false);
  require('../../stasis.js');
  require('../../zod.js');
  saveNow();
  // Every command's cache starts from the same top level as the general one.
  for (const file of new Set(Object.keys(PARTS).map((command) => cacheFile(CACHE_DIR, command)))) fs.copyFileSync(cacheFile(CACHE_DIR), file);
  process.stdout.write(`compile cache: ${installed!.table.size} modules in ${path.relative(process.cwd(), CACHE_DIR)}, one file per command\n`);
}

// One file for the command line: dist/stasis.js, made from dist/src by
// `npm run build`, and zod beside it. Loading ~60 stasis modules and ~100
// of zod's one by one (resolution, a read and a compile each) was a third
// of a small command's start-up; one script, compiled from the V8 code
// cache, is read once.
// koffi stays a module of its own (its native library is found beside it).
'use strict';
const path = require('node:path');
const esbuild = require('esbuild');

const root = path.join(__dirname, '..');

// zod's index of its 64 translations of error messages is only there for
// `z.locales`, which stasis never reads: left out, the bundle is a third
// the size. English, zod's default, is required by zod itself apart.
const noLocales = {
  name: 'no-zod-locales',
  setup(b) {
    b.onResolve({ filter: /locales[\\/]index\.c?js$/ }, (a) =>
      a.resolveDir.includes(`${path.sep}zod${path.sep}`) ? { path: a.path, namespace: 'no-zod-locales' } : undefined);
    b.onLoad({ filter: /.*/, namespace: 'no-zod-locales' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

// zod is a file of its own, dist/zod.js, required when the first schema is
// made: a checkpoint makes none, and reading and hashing zod's half of one
// bundle cost it ~3 ms.
const zodApart = {
  name: 'zod-apart',
  setup(b) {
    b.onResolve({ filter: /^zod$/ }, () => ({ path: './zod.js', external: true }));
  },
};

const common = { bundle: true, platform: 'node', target: 'node20', format: 'cjs', logLevel: 'warning' };

Promise.all([
  esbuild.build({
    ...common,
    entryPoints: [path.join(root, 'dist/src/cli/main.js')],
    outfile: path.join(root, 'dist/stasis.js'),
    external: ['koffi', '@koromix/*'],
    plugins: [zodApart],
  }),
  esbuild.build({
    ...common,
    entryPoints: [path.join(__dirname, 'zod-entry.mjs')],
    outfile: path.join(root, 'dist/zod.js'),
    plugins: [noLocales],
  }),
]).catch(() => process.exit(1));

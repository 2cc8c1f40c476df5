// The image schema compiled into plain validators: dist/src/image/validators.js,
// made by `npm run build` after tsc. Making the zod schemas an image uses,
// and zod itself, cost a restart ~20 ms before it could check a record;
// the generated functions cost nothing to make. They answer the same
// question as zod's parse (accept or not, and the same value: unknown keys
// left out, in the schema's order); a record they refuse is parsed again by
// zod, which words the refusal. Any part of zod this does not know stops
// the build, rather than being checked less.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const schema = require(path.join(root, 'dist/src/image/schema.js'));
/** The schemas a record is parsed with (load.ts, stream.ts). */
const ENTRIES = ['ImageProcess', 'ImageZombie', 'PipesRecord', 'MemfdsRecord', 'ObjectTables', 'EndRecord', 'PagesHeader'];

const LENGTH_CHECKS = new Set(['max_length', 'min_length', 'length_equals']);
const fns = new Map(); // def -> function name
const bodies = [];
const byBody = new Map(); // body -> function name
const consts = [];

function constant(code) {
  if (!consts.includes(code)) consts.push(code);
  return `K${consts.indexOf(code)}`;
}

function fail(where, what) {
  throw new Error(`gen-validators: ${where}: ${what} is not supported; add it to build/gen-validators.js`);
}

/** The function that validates `s`: its name. */
function fnFor(s, where) {
  const def = s._zod.def;
  if (fns.has(def)) return fns.get(def);
  const name = `v${fns.size}`;
  fns.set(def, name);
  const body = gen(def, where);
  // Schemas made alike (int(0, 9) twice) share one function.
  const same = byBody.get(body);
  if (same) {
    fns.set(def, same);
    return same;
  }
  byBody.set(body, name);
  bodies.push(`function ${name}(x) {\n${body}\n}`);
  return name;
}

/** Statements that `return F` unless `v` (the value so far) passes each check. */
function checks(def, v, where) {
  const out = [];
  // A format schema (z.int()) is a check itself, besides those added to it.
  const list = [...(def.check ? [def] : []), ...(def.checks ?? []).map((c) => c._zod.def)];
  const isInt = list.some((c) => c.check === 'number_format' && c.format === 'safeint');
  for (const c of list) {
    // zod gives length checks a condition (the value has a length), which
    // the type checked first always meets.
    if (c.when && !LENGTH_CHECKS.has(c.check)) fail(where, `a check with a condition (${c.check})`);
    switch (c.check) {
      case 'number_format':
        if (c.format !== 'safeint') fail(where, `number format ${c.format}`);
        out.push(`if (!Number.isSafeInteger(${v})) return F;`);
        break;
      case 'greater_than':
        if (typeof c.value !== 'number') fail(where, 'a bound that is not a number');
        out.push(`if (!(${v} ${c.inclusive ? '>=' : '>'} ${c.value})) return F;`);
        break;
      case 'less_than':
        if (typeof c.value !== 'number') fail(where, 'a bound that is not a number');
        out.push(`if (!(${v} ${c.inclusive ? '<=' : '<'} ${c.value})) return F;`);
        break;
      case 'multiple_of':
        // zod takes a remainder safe for decimals; of integers it is %.
        if (!isInt || !Number.isSafeInteger(c.value)) fail(where, 'multipleOf of a number that may not be an integer');
        out.push(`if (${v} % ${c.value} !== 0) return F;`);
        break;
      case 'max_length': out.push(`if (${v}.length > ${c.maximum}) return F;`); break;
      case 'min_length': out.push(`if (${v}.length < ${c.minimum}) return F;`); break;
      case 'length_equals': out.push(`if (${v}.length !== ${c.length}) return F;`); break;
      case 'string_format':
        if (c.format === 'regex') {
          if (/[gy]/.test(c.pattern.flags)) fail(where, 'a global or sticky pattern');
          out.push(`if (!${constant(String(c.pattern))}.test(${v})) return F;`);
        } else if (c.format === 'starts_with') out.push(`if (!${v}.startsWith(${JSON.stringify(c.prefix)})) return F;`);
        else if (c.format === 'ends_with') out.push(`if (!${v}.endsWith(${JSON.stringify(c.suffix)})) return F;`);
        else fail(where, `string format ${c.format}`);
        break;
      case 'custom': {
        const name = c.fn?.checkName;
        if (typeof name !== 'string') fail(where, 'a refinement not made with check() (src/image/checks.ts)');
        const args = c.fn.checkArgs.map((a) => JSON.stringify(a));
        out.push(`if (!C[${JSON.stringify(name)}](${[v, ...args].join(', ')})) return F;`);
        break;
      }
      default: fail(where, `check ${c.check}`);
    }
  }
  return out;
}

function gen(def, where) {
  const lines = [];
  switch (def.type) {
    case 'string':
      lines.push("if (typeof x !== 'string') return F;", ...checks(def, 'x', where), 'return x;');
      break;
    case 'number':
      lines.push("if (typeof x !== 'number' || !Number.isFinite(x)) return F;", ...checks(def, 'x', where), 'return x;');
      break;
    case 'boolean':
      lines.push("if (typeof x !== 'boolean') return F;", ...checks(def, 'x', where), 'return x;');
      break;
    case 'literal':
    case 'enum': {
      const values = def.type === 'literal' ? def.values : Object.values(def.entries);
      for (const v of values) if (!['string', 'number', 'boolean'].includes(typeof v) && v !== null) fail(where, `a ${def.type} of ${typeof v}`);
      lines.push(`if (!${constant(`new Set(${JSON.stringify(values)})`)}.has(x)) return F;`, ...checks(def, 'x', where), 'return x;');
      break;
    }
    case 'optional':
      lines.push(`if (x === undefined) return undefined;`, `return ${fnFor(def.innerType, where)}(x);`);
      break;
    case 'nullable':
      lines.push(`if (x === null) return null;`, `return ${fnFor(def.innerType, where)}(x);`);
      break;
    case 'array': {
      const el = fnFor(def.element, `${where}[]`);
      lines.push('if (!Array.isArray(x)) return F;', 'const o = new Array(x.length);',
        `for (let i = 0; i < x.length; i++) { const r = ${el}(x[i]); if (r === F) return F; o[i] = r; }`,
        ...checks(def, 'o', where), 'return o;');
      break;
    }
    case 'tuple': {
      if (def.rest) fail(where, 'a tuple with a rest');
      const items = def.items.map((it, i) => {
        if (it._zod.optin === 'optional' || it._zod.optout === 'optional') fail(where, 'a tuple with optional items');
        return fnFor(it, `${where}[${i}]`);
      });
      lines.push(`if (!Array.isArray(x) || x.length !== ${items.length}) return F;`, `const o = new Array(${items.length});`);
      items.forEach((f, i) => lines.push(`{ const r = ${f}(x[${i}]); if (r === F) return F; o[${i}] = r; }`));
      lines.push(...checks(def, 'o', where), 'return o;');
      break;
    }
    case 'object': {
      if (def.catchall !== undefined) fail(where, 'an object with a catchall (strict or passthrough)');
      lines.push("if (typeof x !== 'object' || x === null || Array.isArray(x)) return F;", 'const o = {};', 'let r;');
      for (const [k, s] of Object.entries(def.shape)) {
        const key = JSON.stringify(k);
        // As zod: a value read as x[key]; undefined kept only for a key the input has.
        lines.push(`r = ${fnFor(s, `${where}.${k}`)}(x[${key}]); if (r === F) return F; if (r !== undefined || ${key} in x) o[${key}] = r;`);
      }
      lines.push(...checks(def, 'o', where), 'return o;');
      break;
    }
    case 'union': {
      if (def.checks?.length) fail(where, 'checks on a union');
      if (def.discriminator === undefined) {
        for (const o of def.options) lines.push(`{ const r = ${fnFor(o, `${where}|`)}(x); if (r !== F) return r; }`);
        lines.push('return F;');
        break;
      }
      if (def.inclusive) fail(where, 'an inclusive discriminated union');
      const d = JSON.stringify(def.discriminator);
      lines.push("if (typeof x !== 'object' || x === null || Array.isArray(x)) return F;", `switch (x[${d}]) {`);
      const seen = new Set();
      for (const o of def.options) {
        const values = o._zod.propValues?.[def.discriminator];
        if (!values?.size) fail(where, 'an option without its discriminator values');
        const f = fnFor(o, `${where}(${[...values].join('|')})`);
        for (const v of values) {
          if (seen.has(v)) fail(where, `discriminator value ${v} twice`);
          seen.add(v);
          if (!['string', 'number', 'boolean'].includes(typeof v)) fail(where, `a discriminator value of ${typeof v}`);
          lines.push(`  case ${JSON.stringify(v)}: return ${f}(x);`);
        }
      }
      lines.push('}', 'return F;');
      break;
    }
    default: fail(where, `zod type ${def.type}`);
  }
  return lines.map((l) => `  ${l}`).join('\n');
}

const exported = ENTRIES.map((e) => `  ${e}: ${fnFor(schema[e], e)},`);
const text = `'use strict';
// Generated by build/gen-validators.js from the image schema: do not edit.
const { CHECKS: C } = require('./checks');
const F = Symbol('invalid');
${consts.map((c, i) => `const K${i} = ${c};`).join('\n')}
${bodies.join('\n')}
module.exports = {
  INVALID: F,
${exported.join('\n')}
};
`;
fs.writeFileSync(path.join(root, 'dist/src/image/validators.js'), text);
console.log(`validators: ${bodies.length} functions generated from the image schema`);

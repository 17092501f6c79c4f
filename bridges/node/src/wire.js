'use strict';
/**
 * JSON with binary values beside it: the value encoding of the Bridge protocol.
 *
 * The same rule as every other bridge (see protos/snakepit/bridge/v1/bridge.proto):
 * a Buffer / Uint8Array is lifted into Payload.blobs and replaced by
 * {"__snakepit_bytes__": index}; an object that really is {marker: value} travels
 * as {"__snakepit_escape__": [marker, value]}. An array of numbers (numpy's, on the
 * Python side) travels as its raw little-endian buffer in a blob, described by
 * {"__snakepit_array__": {"dtype": "<f4", "shape": [2, 3], "blob": index}}; it
 * decodes to an NDArray whose data is the matching TypedArray (Float32Array for
 * "<f4", BigInt64Array for "<i8", a Buffer for float16), and an NDArray a handler
 * returns travels the same way.
 *
 * Integers stay integral: JavaScript numbers lose precision past 2^53, so an
 * integer literal outside the safe range decodes to a BigInt, and a BigInt
 * encodes as plain digits (the Python side reads it back as an int). Numbers
 * that are integral encode without a fraction, as JSON.stringify does, so an
 * integral float from the caller comes back as an int — JavaScript cannot tell
 * 2.0 from 2.
 */

const BYTES_KEY = '__snakepit_bytes__';
const ESCAPE_KEY = '__snakepit_escape__';
const ARRAY_KEY = '__snakepit_array__';
const MARKERS = [BYTES_KEY, ESCAPE_KEY, ARRAY_KEY];
/** The TypedArray of each dtype the wire carries (little-endian; one-byte kinds with "|"). */
const TYPED = {
  '|b1': Uint8Array,
  '|i1': Int8Array,
  '|u1': Uint8Array,
  '<i2': Int16Array,
  '<u2': Uint16Array,
  '<i4': Int32Array,
  '<u4': Uint32Array,
  '<i8': BigInt64Array,
  '<u8': BigUint64Array,
  '<f2': null,
  '<f4': Float32Array,
  '<f8': Float64Array,
  '<c8': Float32Array,
  '<c16': Float64Array,
};
const MARKER_TEXT = '"__snakepit_';
const LONG_DIGITS = /\d{16,}/;
const STRING_RE = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const NUMBER_RE = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class WireError extends Error {
  constructor(message) {
    super(message);
    this.name = 'WireError';
  }
}

class NeedsWalk extends Error {}

/**
 * An n-dimensional array of numbers as the wire carries it: dtype in numpy's notation
 * ("<f4"), shape (an array of sizes) and data (a TypedArray, or a Buffer of the raw bytes;
 * complex numbers are pairs of floats).
 */
class NDArray {
  constructor(dtype, shape, data) {
    if (!Object.prototype.hasOwnProperty.call(TYPED, dtype)) {
      throw new WireError(`array dtype ${JSON.stringify(dtype)} is not one the wire carries (little-endian b, i, u, f, c)`);
    }
    if (!Array.isArray(shape) || !shape.every((n) => Number.isInteger(n) && n >= 0)) {
      throw new WireError(`array shape ${JSON.stringify(shape)} must be an array of sizes`);
    }
    if (!ArrayBuffer.isView(data)) throw new WireError('array data must be a TypedArray or a Buffer');
    const expected = shape.reduce((a, b) => a * b, 1) * Number(dtype.slice(2));
    if (expected !== data.byteLength) {
      throw new WireError(`array of dtype ${dtype} and shape ${JSON.stringify(shape)} needs ${expected} bytes, not ${data.byteLength}`);
    }
    this.dtype = dtype;
    this.shape = shape;
    this.data = data;
  }

  /** The raw bytes, without a copy. */
  bytes() {
    return Buffer.from(this.data.buffer, this.data.byteOffset, this.data.byteLength);
  }
}

function arrayFromBlob(spec, blobs) {
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    throw new WireError(`array marker must hold dtype, shape and blob, not ${JSON.stringify(spec)}`);
  }
  const index = spec.blob;
  if (!Number.isInteger(index) || index < 0 || index >= blobs.length) {
    throw new WireError(`array marker points at blob ${JSON.stringify(index)}, but there are ${blobs.length}`);
  }
  const raw = Buffer.from(blobs[index]);
  const Typed = Object.prototype.hasOwnProperty.call(TYPED, spec.dtype) ? TYPED[spec.dtype] : undefined;
  if (Typed === undefined) return new NDArray(spec.dtype, spec.shape, raw); // refused there, by name
  if (Typed === null) return new NDArray(spec.dtype, spec.shape, raw);
  let bytes = raw;
  if (raw.byteOffset % Typed.BYTES_PER_ELEMENT !== 0) bytes = Buffer.from(Uint8Array.prototype.slice.call(raw));
  if (raw.byteLength % Typed.BYTES_PER_ELEMENT !== 0) return new NDArray(spec.dtype, spec.shape, raw);
  const typed = new Typed(bytes.buffer, bytes.byteOffset, bytes.byteLength / Typed.BYTES_PER_ELEMENT);
  return new NDArray(spec.dtype, spec.shape, typed);
}

function isBytes(value) {
  return value instanceof Uint8Array; // Buffer is a Uint8Array
}

function typeName(value) {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  return (value.constructor && value.constructor.name) || 'Object';
}

function refuse(value) {
  throw new WireError(`cannot encode as JSON: a value of type ${typeName(value)} is not JSON serializable`);
}

/** Fast path: JSON.stringify, bailing out to the walk for bytes and BigInts. */
function fastReplacer(key, value) {
  const original = this[key];
  if (isBytes(original) || typeof original === 'bigint' || original instanceof NDArray) throw new NeedsWalk();
  return checkPlain(value);
}

function checkPlain(value) {
  switch (typeof value) {
    case 'number':
      if (!Number.isFinite(value)) throw new WireError(`cannot encode as JSON: ${value} is not a JSON number`);
      return value;
    case 'function':
    case 'symbol':
      return refuse(value);
    case 'object':
      if (value instanceof Map || value instanceof Set || value instanceof WeakMap || value instanceof Promise) {
        return refuse(value);
      }
      return value;
    default:
      return value;
  }
}

/** Slow path: write the JSON text ourselves, lifting bytes and escaping markers. */
function writeValue(value, blobs, inArray) {
  if (value === null) return 'null';
  if (value !== undefined && value !== null && typeof value.toJSON === 'function' && !isBytes(value) && !(value instanceof NDArray)) {
    value = value.toJSON();
  }
  switch (typeof value) {
    case 'undefined':
      return inArray ? 'null' : undefined;
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      return JSON.stringify(value);
    case 'bigint':
      return value.toString();
    case 'number':
      return JSON.stringify(checkPlain(value));
    case 'object':
      break;
    default:
      return refuse(value);
  }
  if (isBytes(value)) {
    blobs.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
    return `{"${BYTES_KEY}":${blobs.length - 1}}`;
  }
  if (value instanceof NDArray) {
    blobs.push(value.bytes());
    const spec = { dtype: value.dtype, shape: value.shape, blob: blobs.length - 1 };
    return `{"${ARRAY_KEY}":${JSON.stringify(spec)}}`;
  }
  if (Array.isArray(value)) {
    return `[${value.map((item) => writeValue(item, blobs, true)).join(',')}]`;
  }
  checkPlain(value);
  const keys = Object.keys(value).filter((k) => value[k] !== undefined);
  if (keys.length === 1 && MARKERS.includes(keys[0])) {
    const inner = writeValue(value[keys[0]], blobs, true);
    return `{"${ESCAPE_KEY}":[${JSON.stringify(keys[0])},${inner}]}`;
  }
  const parts = [];
  for (const key of keys) {
    const item = writeValue(value[key], blobs, false);
    if (item !== undefined) parts.push(`${JSON.stringify(key)}:${item}`);
  }
  return `{${parts.join(',')}}`;
}

/**
 * Encode a value as [json Buffer, blobs].
 * @throws {WireError} the value holds something JSON cannot carry (a Map, NaN, a function).
 */
function encode(value) {
  if (value === undefined) value = null;
  let text = null;
  try {
    text = JSON.stringify(value, fastReplacer);
  } catch (err) {
    if (!(err instanceof NeedsWalk)) {
      if (err instanceof WireError) throw err;
      throw new WireError(`cannot encode as JSON: ${err.message}`);
    }
  }
  if (text !== null && text !== undefined && !text.includes(MARKER_TEXT)) {
    return [Buffer.from(text, 'utf8'), []];
  }
  const blobs = [];
  try {
    text = writeValue(value, blobs, true);
  } catch (err) {
    if (err instanceof WireError) throw err;
    throw new WireError(`cannot encode as JSON: ${err.message}`);
  }
  return [Buffer.from(text, 'utf8'), blobs];
}

function restore(obj, blobs) {
  const keys = Object.keys(obj);
  if (keys.length !== 1) return obj;
  if (keys[0] === BYTES_KEY) {
    const index = obj[BYTES_KEY];
    if (!Number.isInteger(index) || index < 0 || index >= blobs.length) {
      throw new WireError(`bytes marker points at blob ${JSON.stringify(index)}, but there are ${blobs.length}`);
    }
    return Buffer.from(blobs[index]);
  }
  if (keys[0] === ESCAPE_KEY) {
    const pair = obj[ESCAPE_KEY];
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string') {
      throw new WireError(`escape marker must hold [key, value], not ${JSON.stringify(pair)}`);
    }
    return { [pair[0]]: pair[1] };
  }
  if (keys[0] === ARRAY_KEY) return arrayFromBlob(obj[ARRAY_KEY], blobs);
  return obj;
}

/**
 * Decode (json bytes, blobs) back to the value; empty json means null.
 * @throws {WireError} the JSON is not valid or a marker is broken.
 */
function decode(data, blobs) {
  if (!data || data.length === 0) return null;
  let text;
  try {
    text = typeof data === 'string' ? data : UTF8.decode(data);
  } catch {
    throw new WireError('payload is not valid JSON: it is not UTF-8 text');
  }
  const blobList = blobs ? Array.from(blobs) : [];
  const hasMarkers = text.includes(MARKER_TEXT);
  const walk = hasMarkers ? (obj) => restore(obj, blobList) : null;
  try {
    if (LONG_DIGITS.test(text)) return new Parser(text, walk).parseDocument();
    if (!walk) return JSON.parse(text);
    return JSON.parse(text, function reviver(key, value) {
      if (value !== null && typeof value === 'object' && !Array.isArray(value) && !Buffer.isBuffer(value) && !(value instanceof NDArray)) {
        return restore(value, blobList);
      }
      return value;
    });
  } catch (err) {
    if (err instanceof WireError) throw err;
    throw new WireError(`payload is not valid JSON: ${err.message}`);
  }
}

/**
 * A small JSON parser used only when the text holds long digit runs, so that
 * integers beyond Number.MAX_SAFE_INTEGER come back exact as BigInt.
 */
class Parser {
  constructor(text, walk) {
    this.text = text;
    this.pos = 0;
    this.walk = walk;
  }

  fail(what) {
    throw new WireError(`payload is not valid JSON: ${what} at position ${this.pos}`);
  }

  skip() {
    const t = this.text;
    while (this.pos < t.length) {
      const c = t.charCodeAt(this.pos);
      if (c === 32 || c === 9 || c === 10 || c === 13) this.pos += 1;
      else break;
    }
  }

  parseDocument() {
    const value = this.parseValue();
    this.skip();
    if (this.pos !== this.text.length) this.fail('unexpected text after the value');
    return value;
  }

  parseValue() {
    this.skip();
    const c = this.text[this.pos];
    if (c === '{') return this.parseObject();
    if (c === '[') return this.parseArray();
    if (c === '"') return this.parseString();
    if (c === '-' || (c >= '0' && c <= '9')) return this.parseNumber();
    for (const [word, value] of [['true', true], ['false', false], ['null', null]]) {
      if (this.text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return value;
      }
    }
    return this.fail('unexpected character');
  }

  parseObject() {
    this.pos += 1;
    const obj = {};
    this.skip();
    if (this.text[this.pos] === '}') {
      this.pos += 1;
      return this.walk ? this.walk(obj) : obj;
    }
    for (;;) {
      this.skip();
      if (this.text[this.pos] !== '"') this.fail('expected a string key');
      const key = this.parseString();
      this.skip();
      if (this.text[this.pos] !== ':') this.fail("expected ':'");
      this.pos += 1;
      const value = this.parseValue();
      // NOTE: a plain assignment to "__proto__" would set the prototype; JSON.parse makes it a key.
      Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
      this.skip();
      const c = this.text[this.pos];
      this.pos += 1;
      if (c === '}') break;
      if (c !== ',') this.fail("expected ',' or '}'");
    }
    return this.walk ? this.walk(obj) : obj;
  }

  parseArray() {
    this.pos += 1;
    const arr = [];
    this.skip();
    if (this.text[this.pos] === ']') {
      this.pos += 1;
      return arr;
    }
    for (;;) {
      arr.push(this.parseValue());
      this.skip();
      const c = this.text[this.pos];
      this.pos += 1;
      if (c === ']') return arr;
      if (c !== ',') this.fail("expected ',' or ']'");
    }
  }

  parseString() {
    STRING_RE.lastIndex = this.pos;
    const match = STRING_RE.exec(this.text);
    if (!match) this.fail('bad string');
    this.pos += match[0].length;
    return JSON.parse(match[0]);
  }

  parseNumber() {
    NUMBER_RE.lastIndex = this.pos;
    const match = NUMBER_RE.exec(this.text);
    if (!match) this.fail('bad number');
    this.pos += match[0].length;
    const number = Number(match[0]);
    if (!match[1] && !match[2] && !Number.isSafeInteger(number)) return BigInt(match[0]);
    return number;
  }
}

module.exports = { ARRAY_KEY, BYTES_KEY, ESCAPE_KEY, NDArray, WireError, encode, decode };

'use strict';
/**
 * The showcase's `compute` arithmetic, with Python's number rules so every
 * bridge answers alike: integer operands give an exact integer (a BigInt past
 * 2^53), a division that comes out even is an integer, a square root of a
 * perfect square is an integer; a float anywhere gives a float.
 * Division by zero and results with no real value throw RangeError.
 */

const OPERATIONS = ['add', 'subtract', 'multiply', 'divide', 'power', 'sqrt'];

function isInt(value) {
  return typeof value === 'bigint' || Number.isInteger(value);
}

/** A BigInt result back to a plain number when it fits exactly. */
function narrow(value) {
  if (typeof value === 'bigint' && value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
    return Number(value);
  }
  return value;
}

function isqrt(n) {
  if (n < 2n) return n;
  let x = BigInt(Math.floor(Math.sqrt(Number(n))));
  while (x * x > n) x -= 1n;
  while ((x + 1n) * (x + 1n) <= n) x += 1n;
  return x;
}

function finite(value, what) {
  if (typeof value === 'number' && !Number.isFinite(value)) throw new RangeError(`${what} is out of range`);
  return value;
}

const INTEGER = {
  add: (a, b) => a + b,
  subtract: (a, b) => a - b,
  multiply: (a, b) => a * b,
};

/**
 * @param {string} operation one of OPERATIONS.
 * @param {number|bigint} a
 * @param {number|bigint} [b]
 * @returns {number|bigint}
 */
function arithmetic(operation, a, b) {
  const ints = isInt(a) && (operation === 'sqrt' || isInt(b));
  if (operation === 'sqrt') {
    if (a < 0) throw new RangeError(`cannot take the square root of negative number ${a}`);
    if (ints) {
      const root = isqrt(BigInt(a));
      if (root * root === BigInt(a)) return narrow(root);
    }
    return Math.sqrt(Number(a));
  }
  if (operation in INTEGER) {
    if (ints) return narrow(INTEGER[operation](BigInt(a), BigInt(b)));
    return finite(INTEGER[operation](Number(a), Number(b)), `${a} ${operation} ${b}`);
  }
  if (operation === 'divide') {
    if (Number(b) === 0) throw new RangeError('division by zero');
    if (ints && BigInt(a) % BigInt(b) === 0n) return narrow(BigInt(a) / BigInt(b));
    return Number(a) / Number(b);
  }
  if (operation === 'power') {
    if (ints && b >= 0) {
      if (BigInt(b) > 100000n) throw new RangeError(`${a} ** ${b} is too large`);
      return narrow(BigInt(a) ** BigInt(b));
    }
    if (Number(a) === 0 && Number(b) < 0) throw new RangeError('0 cannot be raised to a negative power');
    const result = Number(a) ** Number(b);
    if (Number.isNaN(result)) throw new RangeError(`${a} ** ${b} has no real result`);
    return finite(result, `${a} ** ${b}`);
  }
  throw new RangeError(`unknown operation ${operation}`);
}

module.exports = { OPERATIONS, arithmetic };

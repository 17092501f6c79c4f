'use strict';
/**
 * The handler SDK: the commands a Node.js bridge serves.
 *
 * The same shape as the Python SDK: a handler registers commands; a plain or
 * async function is a unary command, a generator or async generator function is
 * a stream command (each yielded value is one chunk). Every command gets
 * (args, ctx): args is the call's JSON argument object, ctx its CallContext.
 *
 * @example
 *   const { Handler } = require('snakepit-bridge-node');
 *   class Greeter extends Handler {
 *     constructor() {
 *       super();
 *       this.command('hello', (args, ctx) => {
 *         ctx.session.greeted = args.name;
 *         return { greeting: `hello ${args.name}` };
 *       });
 *       this.command('count.up', async function* (args, ctx) {
 *         for (let n = 0; n < (args.to ?? 3); n += 1) yield { n };
 *       }, { doc: 'Count from 0, one chunk per number.' });
 *     }
 *   }
 *   module.exports = Greeter;
 */

/** Throw from a command to refuse its input (sent as INVALID_ARGUMENTS, not a crash). */
class InvalidArguments extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidArguments';
  }
}

function isGeneratorFunction(fn) {
  const kind = fn && fn.constructor && fn.constructor.name;
  return kind === 'GeneratorFunction' || kind === 'AsyncGeneratorFunction';
}

/** The running call, as a command sees it. */
class CallContext {
  constructor({ sessionId, session, requestId, deadline, signal, handler }) {
    /** The caller's session id; null for a stateless call. */
    this.sessionId = sessionId;
    /** Per-session state object; stateless calls share one bridge-global object. */
    this.session = session;
    /** The caller's id for this call (a Celery task id), or null. */
    this.requestId = requestId;
    /** Date.now() value of the soft deadline, or null for none. */
    this.deadline = deadline;
    /** Aborted when the caller cancels (or goes away); pass it to fetch() and friends. */
    this.signal = signal;
    /** The handler serving the call. */
    this.handler = handler;
  }

  /** True once the caller cancelled. */
  get cancelled() {
    return this.signal.aborted;
  }

  /** Milliseconds left before the soft deadline (never negative), or null. */
  remaining() {
    return this.deadline === null ? null : Math.max(0, this.deadline - Date.now());
  }

  /**
   * Wait `seconds`, waking early when the call is cancelled.
   * @returns {Promise<boolean>} true when the full time passed, false when cancelled.
   */
  sleep(seconds) {
    if (this.signal.aborted) return Promise.resolve(false);
    if (!(seconds > 0)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const onAbort = () => {
        clearTimeout(timer);
        resolve(false);
      };
      const timer = setTimeout(() => {
        this.signal.removeEventListener('abort', onAbort);
        resolve(true);
      }, Math.max(0, seconds * 1000));
      this.signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function quoted(names) {
  return [...names].sort().map((n) => `'${n}'`).join(', ');
}

/**
 * Check a call's arguments against what the command declared.
 * @throws {InvalidArguments} naming the missing or unexpected arguments.
 */
function bindArguments(spec, args) {
  const missing = spec.required.filter((key) => !Object.prototype.hasOwnProperty.call(args, key));
  if (missing.length > 0) {
    throw new InvalidArguments(`command '${spec.name}' is missing required argument(s) ${quoted(missing)}`);
  }
  if (spec.params !== null) {
    const unexpected = Object.keys(args).filter((key) => !spec.params.has(key));
    if (unexpected.length > 0) {
      const takes = spec.params.size > 0 ? quoted(spec.params) : 'no arguments';
      throw new InvalidArguments(`command '${spec.name}' got unexpected argument(s) ${quoted(unexpected)}; it takes ${takes}`);
    }
  }
}

/** Base of every handler. Register commands in the constructor (or on an instance). */
class Handler {
  constructor() {
    /** @type {Map<string, {name: string, fn: Function, stream: boolean, doc: string}>} */
    this.commands = new Map();
    /** Set by the server: counters the showcase `info` command reports. */
    this.stats = {
      startedAt: Date.now(),
      requests: 0,
      errors: 0,
      streamsStarted: 0,
      streamsClosed: 0,
      streamsCancelled: 0,
      sessionsStarted: 0,
      sessionsEnded: 0,
    };
  }

  /**
   * Register a command.
   * @param {string} name the wire name (may contain dots).
   * @param {Function} fn (args, ctx) => value | Promise | (async) generator.
   * @param {object} [options]
   * @param {string} [options.doc] what Describe reports.
   * @param {boolean} [options.stream] force stream mode for a function that returns an
   *   (async) iterable without being a generator function.
   * @param {string[]} [options.params] the argument names it takes; when given, any other
   *   name is refused as INVALID_ARGUMENTS before the call (as the Python SDK does).
   * @param {string[]} [options.required] the argument names it cannot do without.
   * @returns {this}
   */
  command(name, fn, options = {}) {
    if (typeof name !== 'string' || name === '') throw new TypeError('a command needs a non-empty string name');
    if (typeof fn !== 'function') throw new TypeError(`command ${name}: expected a function, got ${typeof fn}`);
    if (this.commands.has(name)) throw new TypeError(`${this.constructor.name}: two functions are registered as command '${name}'`);
    const stream = options.stream ?? isGeneratorFunction(fn);
    this.commands.set(name, {
      name,
      fn: fn.bind(this),
      stream: Boolean(stream),
      doc: options.doc ?? '',
      params: options.params ? new Set(options.params) : null,
      required: options.required ?? [],
    });
    return this;
  }

  /** The registered command names, sorted. */
  commandNames() {
    return [...this.commands.keys()].sort();
  }

  /**
   * Called once per session on this bridge, before its first call.
   * @param {string} sessionId
   * @param {object} state the session's (empty) state object, to fill.
   * @param {*} data the stored session data sent with InitSession, or null.
   */
  // eslint-disable-next-line no-unused-vars
  onSessionStart(sessionId, state, data) {}

  /** Called once when the session ends on this bridge (or the bridge stops). */
  // eslint-disable-next-line no-unused-vars
  onSessionEnd(sessionId, state) {}
}

module.exports = { CallContext, Handler, InvalidArguments, bindArguments, isGeneratorFunction };

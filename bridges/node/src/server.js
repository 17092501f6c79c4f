'use strict';
/**
 * The Bridge gRPC service: runs a handler's commands for the pool.
 *
 * One call = one command run. Arguments are decoded from the JSON+blobs
 * payload; a stream command's chunks that are ready at the same moment are
 * coalesced into one ExecuteStreamResponse (never past the message limit);
 * the caller's cancel aborts ctx.signal and closes the generator so its
 * `finally` blocks run at once.
 *
 * Describe reports `active_calls`: the Execute/ExecuteStream calls whose
 * handler code still runs. A cancelled call counts until its command has
 * settled (a stream: until its generator has really closed), so the pool
 * waits for that, or kills a bridge whose command ignores the cancel.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { CallContext, InvalidArguments, bindArguments } = require('./handler');
const { BridgeError, Kind, classify, invalidArguments, toStatus } = require('./errors');
const { HealthService, NOT_SERVING, SERVING } = require('./health');
const { BATCH_BYTES, closeIterator, pump } = require('./streams');
const { runBatch } = require('./batch');
const tracing = require('./tracing');
const wire = require('./wire');

const PROTOCOL_VERSION = '1';
const SERVICE_NAME = 'snakepit.bridge.v1.Bridge';
/** Room for the protobuf framing around a payload of the maximum size. */
const FRAMING_BYTES = 64 * 1024;

/** The repository's protos/ directory, found from this file (or $SNAKEPIT_PROTO_DIR). */
function defaultProtoRoot() {
  return process.env.SNAKEPIT_PROTO_DIR || path.resolve(__dirname, '..', '..', '..', 'protos');
}

function loadServices(protoRoot) {
  const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
  const definition = protoLoader.loadSync(
    [path.join(protoRoot, 'snakepit', 'bridge', 'v1', 'bridge.proto'), path.join(__dirname, '..', 'proto', 'grpc', 'health', 'v1', 'health.proto')],
    { ...options, includeDirs: [protoRoot, path.join(__dirname, '..', 'proto')] },
  );
  const loaded = grpc.loadPackageDefinition(definition);
  return { bridge: loaded.snakepit.bridge.v1.Bridge.service, health: loaded.grpc.health.v1.Health.service };
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && !Buffer.isBuffer(value);
}

function describeType(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (Buffer.isBuffer(value)) return 'bytes';
  return { string: 'a string', boolean: 'a boolean', number: 'a number', bigint: 'a number' }[typeof value] ?? typeof value;
}

/** The gRPC deadline of a call as a Date.now() value, or null for none. */
function callDeadline(call) {
  const deadline = call.getDeadline();
  if (deadline instanceof Date) return deadline.getTime();
  return Number.isFinite(deadline) ? deadline : null;
}

/** A unary command that finished past its soft deadline, or after a cancel, fails so. */
function checkFinish(spec, ctx) {
  if (ctx.deadline !== null && Date.now() > ctx.deadline) {
    throw new BridgeError(Kind.TIMEOUT, 'TimeoutError', `command '${spec.name}' ran past its deadline`);
  }
  if (ctx.cancelled) throw new BridgeError(Kind.CANCELLED, 'CancelledError', `command '${spec.name}' was cancelled`);
}

class BridgeServer {
  /**
   * @param {object} options
   * @param {import('./handler').Handler} options.handler
   * @param {string} [options.handlerName] what Describe reports as the handler.
   * @param {number} options.maxMessageBytes the gRPC message limit, both ways.
   * @param {string} [options.protoRoot]
   * @param {(line: string) => void} [options.log]
   */
  constructor({ handler, handlerName, maxMessageBytes, protoRoot, log }) {
    this.handler = handler;
    this.handlerName = handlerName || handler.constructor.name;
    this.maxMessageBytes = maxMessageBytes;
    this.protoRoot = protoRoot || defaultProtoRoot();
    this.log = log || (() => {});
    this.globalState = {};
    /** @type {Map<string, object>} */
    this.sessions = new Map();
    /** Controllers of the calls in flight, aborted on shutdown. */
    this.inflight = new Set();
    /** Calls whose handler code still runs (Describe's active_calls). */
    this.active = 0;
    /** Sessions whose onSessionStart is running, so racing calls share one start. */
    this.starting = new Map();
    this.health = new HealthService([SERVICE_NAME]);
    const services = loadServices(this.protoRoot);
    this.server = new grpc.Server({
      // Above the payload limit, so an oversized payload gets our own error detail.
      'grpc.max_receive_message_length': maxMessageBytes + FRAMING_BYTES,
      'grpc.max_send_message_length': maxMessageBytes + FRAMING_BYTES,
    });
    this.server.addService(services.bridge, this.implementation());
    this.server.addService(services.health, this.health.implementation());
  }

  /** Bind the Unix socket, then report SERVING. */
  start(socketPath) {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => {
        if (err) {
          reject(err);
          return;
        }
        this.health.setAll(SERVING);
        resolve();
      });
    });
  }

  /** Report NOT_SERVING, cancel what runs, end every session, close the server. */
  async stop(graceMs = 1000) {
    this.health.setAll(NOT_SERVING);
    for (const controller of this.inflight) controller.abort();
    for (const [sessionId, state] of [...this.sessions]) {
      this.sessions.delete(sessionId);
      try {
        await this.handler.onSessionEnd(sessionId, state);
      } catch (err) {
        this.log(`onSessionEnd(${sessionId}) failed at shutdown: ${err && err.stack}`);
      }
    }
    await new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  implementation() {
    return {
      Execute: (call, callback) => this.execute(call, callback),
      ExecuteBatch: (call, callback) => this.executeBatch(call, callback),
      ExecuteStream: (call) => this.executeStream(call),
      InitSession: (call, callback) => this.settle(this.initSession(call.request), callback),
      EndSession: (call, callback) => this.settle(this.endSession(call.request), callback),
      Describe: (call, callback) => callback(null, this.describe()),
    };
  }

  settle(promise, callback) {
    promise.then(
      (reply) => callback(null, reply),
      (err) => callback(toStatus(classify(err), this.protoRoot)),
    );
  }

  describe() {
    return {
      language: 'node',
      runtime_version: process.version,
      pid: process.pid,
      handler: this.handlerName,
      commands: this.handler.commandNames().map((name) => {
        const spec = this.handler.commands.get(name);
        return { name, stream: spec.stream, doc: spec.doc };
      }),
      protocol_version: PROTOCOL_VERSION,
      active_calls: this.active,
    };
  }

  async initSession({ session_id: sessionId, data }) {
    if (!sessionId) throw new BridgeError(Kind.SESSION_ERROR, 'InvalidSessionId', 'InitSession needs a session_id');
    if (this.sessions.has(sessionId)) return {};
    let value;
    try {
      value = wire.decode(data && data.json, data && data.blobs);
    } catch (err) {
      throw invalidArguments(err, 'session data');
    }
    await this.openSession(sessionId, value);
    return {};
  }

  async openSession(sessionId, data) {
    // NOTE: one start per session even when calls race in while the hook awaits.
    let starting = this.starting.get(sessionId);
    if (starting === undefined) {
      starting = this.startSession(sessionId, data).finally(() => this.starting.delete(sessionId));
      this.starting.set(sessionId, starting);
    }
    return starting;
  }

  async startSession(sessionId, data) {
    const state = {};
    try {
      await this.handler.onSessionStart(sessionId, state, data);
    } catch (err) {
      const cause = classify(err);
      throw new BridgeError(Kind.SESSION_ERROR, cause.type, `onSessionStart failed for session '${sessionId}': ${cause.message}`, cause.traceback);
    }
    this.sessions.set(sessionId, state);
    this.handler.stats.sessionsStarted += 1;
    return state;
  }

  async endSession({ session_id: sessionId }) {
    const state = this.sessions.get(sessionId);
    if (state === undefined) return { existed: false };
    this.sessions.delete(sessionId);
    this.handler.stats.sessionsEnded += 1;
    try {
      await this.handler.onSessionEnd(sessionId, state);
    } catch (err) {
      const cause = classify(err);
      throw new BridgeError(Kind.SESSION_ERROR, cause.type, `onSessionEnd failed for session '${sessionId}': ${cause.message}`, cause.traceback);
    }
    return { existed: true };
  }

  /** The command's spec; an unknown one, or a stream command for a unary call, is refused. */
  lookup(command, unary) {
    const spec = this.handler.commands.get(command);
    if (spec === undefined) {
      const names = this.handler.commandNames().join(', ');
      throw new BridgeError(Kind.UNKNOWN_COMMAND, 'UnknownCommand', `unknown command '${command}'; the commands there are: ${names}`);
    }
    if (unary && spec.stream) {
      throw new BridgeError(Kind.INVALID_ARGUMENTS, 'InvalidArguments', `command '${spec.name}' is a stream command; call it with ExecuteStream`);
    }
    return spec;
  }

  /** Look the command up, decode its args, find its session state: a CallContext. */
  async prepare(request, signal, unary, deadlineOfCall) {
    const spec = this.lookup(request.command, unary);
    const payload = request.args || { json: Buffer.alloc(0), blobs: [] };
    const size = payload.json.length + payload.blobs.reduce((sum, blob) => sum + blob.length, 0);
    if (size > this.maxMessageBytes) {
      throw new BridgeError(Kind.INVALID_ARGUMENTS, 'PayloadTooLarge', `arguments of command '${spec.name}' are ${size} bytes, over the limit of ${this.maxMessageBytes} bytes`);
    }
    let args;
    try {
      args = wire.decode(payload.json, payload.blobs);
    } catch (err) {
      throw invalidArguments(err, `command '${spec.name}'`);
    }
    if (args === null) args = {};
    if (!isPlainObject(args)) {
      throw new BridgeError(Kind.INVALID_ARGUMENTS, 'InvalidArguments', `arguments of command '${spec.name}' must be a JSON object, not ${describeType(args)}`);
    }
    try {
      bindArguments(spec, args);
    } catch (err) {
      if (!(err instanceof InvalidArguments)) throw err;
      throw new BridgeError(Kind.INVALID_ARGUMENTS, 'InvalidArguments', err.message);
    }
    const sessionId = request.session_id || null;
    let session = this.globalState;
    if (sessionId !== null) {
      session = this.sessions.get(sessionId) ?? (await this.openSession(sessionId, null));
    }
    const deadline = request.timeout > 0 ? Date.now() + request.timeout * 1000 : deadlineOfCall;
    const ctx = new CallContext({ sessionId, session, requestId: request.request_id || null, deadline, signal, handler: this.handler });
    return { spec, args, ctx };
  }

  encodeValue(value, what) {
    let json;
    let blobs;
    try {
      [json, blobs] = wire.encode(value);
    } catch (err) {
      throw new BridgeError(Kind.COMMAND_ERROR, 'WireError', `${what} cannot be sent: ${err.message}`, err.stack || '');
    }
    const size = json.length + blobs.reduce((sum, blob) => sum + blob.length, 0);
    if (size > this.maxMessageBytes) {
      throw new BridgeError(Kind.COMMAND_ERROR, 'PayloadTooLarge', `${what} is ${size} bytes, over the limit of ${this.maxMessageBytes} bytes`);
    }
    return { payload: { json, blobs }, size };
  }

  track(call) {
    const controller = new AbortController();
    if (call.cancelled) controller.abort();
    call.on('cancelled', () => controller.abort());
    this.inflight.add(controller);
    return controller;
  }

  /** Run a unary command; whatever it throws becomes a BridgeError naming it. */
  async invoke(spec, args, ctx) {
    let value;
    try {
      value = await spec.fn(args, ctx);
    } catch (err) {
      throw classify(err, spec.name);
    }
    checkFinish(spec, ctx);
    return this.encodeValue(value, `the result of command '${spec.name}'`).payload;
  }

  fail(err) {
    this.handler.stats.errors += 1;
    return toStatus(classify(err), this.protoRoot);
  }

  async execute(call, callback) {
    const controller = this.track(call);
    this.handler.stats.requests += 1;
    this.active += 1;
    const traced = tracing.start('Execute', call.request, call);
    try {
      const { spec, args, ctx } = await this.prepare(call.request, controller.signal, true, callDeadline(call));
      const result = await tracing.run(traced, () => this.invoke(spec, args, ctx));
      tracing.end(traced);
      callback(null, { result });
    } catch (err) {
      tracing.fail(traced, classify(err));
      callback(this.fail(err));
    } finally {
      this.inflight.delete(controller);
      // NOTE: after the command's promise settled, even when the caller cancelled long before.
      this.active -= 1;
    }
  }

  /** Many calls of one command in one message (see ./batch.js); the batch is one active call. */
  async executeBatch(call, callback) {
    const controller = this.track(call);
    this.active += 1;
    const traced = tracing.start('ExecuteBatch', call.request, call);
    try {
      const reply = await tracing.run(traced, () => runBatch(this, call.request, controller.signal, callDeadline(call)));
      const failed = reply.results.filter((item) => !item.ok).length;
      tracing.end(traced, failed ? 'error' : 'ok', { 'snakepit.batch.items': reply.results.length, 'snakepit.batch.failed': failed });
      callback(null, reply);
    } catch (err) {
      tracing.fail(traced, classify(err));
      callback(this.fail(err));
    } finally {
      this.inflight.delete(controller);
      this.active -= 1;
    }
  }

  async executeStream(call) {
    const controller = this.track(call);
    const signal = controller.signal;
    const stats = this.handler.stats;
    stats.requests += 1;
    this.active += 1;
    let iterator = null;
    let finished = false;
    let name = null;
    const traced = tracing.start('ExecuteStream', call.request, call);
    try {
      const { spec, args, ctx } = await this.prepare(call.request, signal, false, callDeadline(call));
      name = spec.name;
      if (!spec.stream) {
        // A unary command streamed: its result is the one chunk.
        call.write({ chunks: [await tracing.run(traced, () => this.invoke(spec, args, ctx))] });
        tracing.chunk(traced);
        finished = true;
      } else {
        stats.streamsStarted += 1;
        let produced;
        try {
          produced = tracing.run(traced, () => spec.fn(args, ctx));
        } catch (err) {
          throw classify(err, spec.name);
        }
        if (produced && typeof produced[Symbol.asyncIterator] === 'function') iterator = produced[Symbol.asyncIterator]();
        else if (produced && typeof produced[Symbol.iterator] === 'function') iterator = produced[Symbol.iterator]();
        else throw new BridgeError(Kind.COMMAND_ERROR, 'TypeError', `stream command '${spec.name}' returned ${describeType(produced)}, not an iterable`);
        const encode = (value) => {
          tracing.chunk(traced);
          return this.encodeValue(value, `a chunk of command '${spec.name}'`);
        };
        const limit = Math.min(BATCH_BYTES, this.maxMessageBytes);
        finished = await tracing.run(traced, () => pump(call, iterator, signal, encode, limit));
        if (finished) stats.streamsClosed += 1;
      }
      if (finished) call.end();
      else if (!call.cancelled) throw new BridgeError(Kind.CANCELLED, 'CancelledError', 'the bridge is shutting down');
      if (traced !== null) tracing.end(traced, finished ? 'ok' : 'cancelled', { 'snakepit.chunks': traced.chunks });
    } catch (err) {
      const failure = classify(err, name);
      if (traced !== null) tracing.fail(traced, failure, { 'snakepit.chunks': traced.chunks });
      if (!call.cancelled) call.emit('error', this.fail(failure));
    } finally {
      this.inflight.delete(controller);
      try {
        if (!finished && iterator !== null) {
          // Waits for a step still running: the generator has ended when this returns.
          await closeIterator(iterator, this.log);
          stats.streamsClosed += 1;
          if (signal.aborted) stats.streamsCancelled += 1;
        }
      } finally {
        this.active -= 1;
      }
    }
  }

}

module.exports = { BridgeServer, PROTOCOL_VERSION, SERVICE_NAME, defaultProtoRoot };

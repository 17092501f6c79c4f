'use strict';
/**
 * A server span per command, child of the caller's span sent as W3C `traceparent`.
 *
 * The worker sends its bridge-call span's context in the gRPC metadata; each
 * Execute, ExecuteStream and ExecuteBatch opens a SERVER span under it, named
 * after the RPC and the command, with the command, the session id and the
 * outcome as attributes. A failure marks the span: status ERROR, an
 * `exception` event and `error.type`. A stream's chunks are span events (the
 * first CHUNK_EVENTS; `snakepit.chunks` counts them all).
 *
 * The command runs inside its span's context, so a handler opens child spans
 * the usual way (a context manager must be registered for async code, as
 * NodeSDK or `new AsyncLocalStorageContextManager().enable()` does):
 *
 *   const { trace } = require('@opentelemetry/api');
 *   const tracer = trace.getTracer('my-handler');
 *   this.command('predict', (args) => tracer.startActiveSpan('predict.load', (span) => {
 *     try { return load(args); } finally { span.end(); }
 *   }));
 *
 * Only @opentelemetry/api is needed; with no SDK registered in the process
 * (the API's no-op provider) every function here returns after one check.
 * The context is read with the globally registered propagator (NodeSDK
 * registers W3C trace context).
 */

const api = require('@opentelemetry/api');

const { Kind } = require('./errors');

/** Chunks of one stream recorded as span events; the rest are only counted. */
const CHUNK_EVENTS = 100;
/** The tracer's instrumentation scope. */
const SCOPE = 'snakepit-bridge-node';

const NOOP_PROVIDER = new api.ProxyTracerProvider().getDelegate().constructor;
const KIND_NAMES = Object.fromEntries(Object.entries(Kind).map(([name, n]) => [n, name.toLowerCase()]));

/** True when an OpenTelemetry SDK (a real tracer provider) is registered in this process. */
function enabled() {
  const provider = api.trace.getTracerProvider();
  const real = typeof provider.getDelegate === 'function' ? provider.getDelegate() : provider;
  return !(real instanceof NOOP_PROVIDER);
}

/**
 * Open the server span of one call under the caller's context (from the call's metadata).
 * @returns {{span: object, context: object, chunks: number} | null} null when nothing is traced.
 */
function start(rpc, request, call) {
  if (!enabled()) return null;
  const carrier = {};
  const map = call.metadata ? call.metadata.getMap() : {};
  for (const [key, value] of Object.entries(map)) if (typeof value === 'string') carrier[key] = value;
  const parent = api.propagation.extract(api.ROOT_CONTEXT, carrier);
  const attributes = {
    'rpc.system': 'grpc',
    'rpc.service': 'snakepit.bridge.v1.Bridge',
    'rpc.method': rpc,
    'snakepit.command': request.command,
  };
  if (request.session_id) attributes['snakepit.session_id'] = request.session_id;
  const span = api.trace
    .getTracer(SCOPE)
    .startSpan(`${rpc} ${request.command}`, { kind: api.SpanKind.SERVER, attributes }, parent);
  return { span, context: api.trace.setSpan(parent, span), chunks: 0 };
}

/** Run fn (and the async work it starts) in the call's span context; just fn when untraced. */
function run(traced, fn) {
  return traced === null ? fn() : api.context.with(traced.context, fn);
}

/** Count one more chunk of a stream (an event while under the cap). */
function chunk(traced) {
  if (traced === null) return;
  if (traced.chunks < CHUNK_EVENTS) traced.span.addEvent('chunk', { 'snakepit.chunk.index': traced.chunks });
  traced.chunks += 1;
}

/** End the span with outcome ('ok', 'cancelled') and any last attributes. */
function end(traced, outcome = 'ok', attributes = {}) {
  if (traced === null) return;
  traced.span.setAttributes({ 'snakepit.outcome': outcome, ...attributes });
  traced.span.end();
}

/** Mark the span failed by a classified BridgeError and end it. */
function fail(traced, err, attributes = {}) {
  if (traced === null) return;
  const type = err.type || err.name || 'Error';
  const event = { 'exception.type': type, 'exception.message': err.message || '' };
  if (err.traceback) event['exception.stacktrace'] = err.traceback;
  traced.span.addEvent('exception', event);
  traced.span.setStatus({ code: api.SpanStatusCode.ERROR, message: `${type}: ${err.message}` });
  end(traced, KIND_NAMES[err.kind] || 'command_error', { 'error.type': type, ...attributes });
}

/** Export the spans an SDK still holds (at most timeoutMs); the bridge exits next. */
async function flush(timeoutMs = 2000) {
  if (!enabled()) return;
  const provider = api.trace.getTracerProvider();
  const real = typeof provider.getDelegate === 'function' ? provider.getDelegate() : provider;
  if (typeof real.forceFlush !== 'function') return;
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(resolve, timeoutMs); });
  try {
    await Promise.race([real.forceFlush().catch(() => {}), late]);
  } finally {
    clearTimeout(timer);
  }
}

module.exports = { CHUNK_EVENTS, chunk, enabled, end, fail, flush, run, start };

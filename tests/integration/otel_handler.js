'use strict';
/**
 * The Node.js bridge's handler in the tracing tests: the showcase, traced to a file.
 *
 * Loading it installs the real OpenTelemetry SDK (the bridge's dev packages) in
 * the bridge, exporting each span as a JSON line to
 * $SNAKEPIT_OTEL_TEST_DIR/bridge-node-<pid>.jsonl (the format of otel_testing.py),
 * as a user's handler file would install theirs with an OTLP exporter.
 * `traced_sum` opens a child span of its own under the bridge's server span.
 */

const fs = require('node:fs');
const path = require('node:path');
const { createRequire } = require('node:module');

const bridgeDir = path.resolve(__dirname, '..', '..', 'bridges', 'node');
const bridgeRequire = createRequire(path.join(bridgeDir, 'package.json'));
const api = bridgeRequire('@opentelemetry/api');
const { BasicTracerProvider, SimpleSpanProcessor } = bridgeRequire('@opentelemetry/sdk-trace-base');
const { ExportResultCode, W3CTraceContextPropagator } = bridgeRequire('@opentelemetry/core');
const { AsyncLocalStorageContextManager } = bridgeRequire('@opentelemetry/context-async-hooks');
const { ShowcaseHandler } = bridgeRequire('./src/index.js');

const KINDS = ['INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER'];
const STATUS = ['UNSET', 'OK', 'ERROR'];
const file = path.join(process.env.SNAKEPIT_OTEL_TEST_DIR, `bridge-node-${process.pid}.jsonl`);

const exporter = {
  export(spans, done) {
    const lines = spans.map((span) => JSON.stringify({
      service: 'bridge-node',
      name: span.name,
      kind: KINDS[span.kind],
      trace_id: span.spanContext().traceId,
      span_id: span.spanContext().spanId,
      parent_id: span.parentSpanContext ? span.parentSpanContext.spanId : null,
      status: STATUS[span.status.code],
      attributes: span.attributes,
      events: span.events.map((event) => ({ name: event.name, attributes: event.attributes || {} })),
    }) + '\n');
    fs.appendFileSync(file, lines.join(''));
    done({ code: ExportResultCode.SUCCESS });
  },
  shutdown() {
    return Promise.resolve();
  },
};

api.trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
api.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());

const tracer = api.trace.getTracer('otel_handler');

class TracedShowcase extends ShowcaseHandler {
  constructor() {
    super();
    this.command('traced_sum', async (args) => tracer.startActiveSpan('handler.sum', async (span) => {
      try {
        await new Promise((resolve) => setImmediate(resolve)); // the context survives an await
        span.setAttribute('values', args.values.length);
        return { sum: args.values.reduce((a, b) => a + b, 0) };
      } finally {
        span.end();
      }
    }), { params: ['values'] });
  }
}

module.exports = TracedShowcase;

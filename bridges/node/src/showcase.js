'use strict';
/**
 * The showcase handler: the seed's demo commands, served by default.
 *
 * Same names and fields as the Python bridge's showcase (snakepit_bridge/showcase.py),
 * so the one contract suite and the demos run against any bridge. Stream
 * commands are fast by default and take their pace from the arguments; each
 * counts its cleanup, so a test can see through `info` that a cancelled
 * generator really was closed.
 */

const crypto = require('node:crypto');
const { Handler, InvalidArguments } = require('./handler');
const { arithmetic, OPERATIONS } = require('./arith');

const LOG_LEVELS = ['INFO', 'INFO', 'DEBUG', 'WARNING', 'INFO', 'ERROR'];
const LABELS = ['cat', 'dog', 'bird', 'car', 'tree'];

function typeOf(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

/** A JSON number (a BigInt for big integers); booleans are refused. */
function num(name, value) {
  if (typeof value !== 'number' && typeof value !== 'bigint') {
    throw new InvalidArguments(`${name} must be a number, not ${typeOf(value)} ${JSON.stringify(value)}`);
  }
  return value;
}

function isInt(value) {
  return typeof value === 'bigint' || Number.isInteger(value);
}

function round(value, digits) {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

function labelOf(item) {
  const digest = crypto.createHash('sha1').update(String(JSON.stringify(item))).digest();
  return LABELS[digest[0] % LABELS.length];
}

function logLine(n) {
  return `2024-01-01T00:00:${String(n % 60).padStart(2, '0')} ${LOG_LEVELS[n % LOG_LEVELS.length]} worker-${n % 4} event ${n}`;
}

class ShowcaseHandler extends Handler {
  constructor() {
    super();
    this.streamsClosedHere = 0;
    this.streamsCancelledHere = 0;
    const anyArgs = { params: null }; // like Python's **kwargs: any argument name
    this.command('ping', (args, ctx) => this.ping(ctx), { ...anyArgs, doc: 'Answer {"status": "ok"} with the bridge\'s pid and time.' });
    this.command('echo', (args) => ({ echoed: args }), { ...anyArgs, doc: 'Answer the arguments as they arrived, under "echoed".' });
    this.command('compute', (args) => this.compute(args), {
      params: ['operation', 'a', 'b'],
      required: ['operation', 'a'],
      doc: 'Arithmetic on a and b: add, subtract, multiply, divide, power, sqrt.',
    });
    this.command('info', (args, ctx) => this.info(ctx), { params: [], doc: "The bridge's pid, runtime, uptime and counters." });
    this.command('random', (args) => this.random(args), {
      params: ['type', 'min', 'max', 'mean', 'std'],
      doc: 'A random number: uniform (min, max), integer (min, max) or normal (mean, std).',
    });
    this.command('sleep', (args, ctx) => this.sleep(args, ctx), { params: ['seconds'], doc: 'Sleep (stops early when the call is cancelled); for timeouts and demos.' });
    this.command('session_info', (args, ctx) => ({
      session_id: ctx.sessionId,
      init_data: ctx.session.init_data ?? null,
      keys: Object.keys(ctx.session).sort(),
    }), { params: [], doc: "The session's id, the data it was initialised with and its state keys." });
    this.command('set_counter', (args, ctx) => {
      ctx.session.counter = num('value', args.value);
      return { value: ctx.session.counter };
    }, { params: ['value'], required: ['value'], doc: "Set the session's counter." });
    this.command('get_counter', (args, ctx) => ({ value: ctx.session.counter ?? 0 }), { params: [], doc: "The session's counter (0 when never set)." });
    this.command('increment_counter', (args, ctx) => {
      ctx.session.counter = arithmetic('add', ctx.session.counter ?? 0, num('by', args.by ?? 1));
      return { value: ctx.session.counter };
    }, { params: ['by'], doc: "Add `by` to the session's counter." });

    this.command('ping_stream', this.pingStream, { params: ['count', 'interval'], doc: '`count` pings, `interval` seconds apart (count <= 0: until cancelled).' });
    this.command('batch_inference', this.batchInference, {
      params: ['batch_items', 'items', 'model', 'model_path', 'delay'],
      doc: 'One prediction chunk per item of batch_items (or items), then a final summary.',
    });
    this.command('process_large_dataset', this.processLargeDataset, {
      params: ['total_rows', 'chunk_size', 'delay', 'file_path'],
      doc: 'Progress chunks over total_rows in steps of chunk_size; the last has final_stats.',
    });
    this.command('tail_and_analyze', this.tailAndAnalyze, {
      params: ['lines', 'count', 'interval', 'pattern'],
      doc: 'Analyse log lines (given, or `count` simulated ones) as they come; then a summary.',
    });
    this.command('distributed_training', this.distributedTraining, {
      params: ['epochs', 'interval', 'learning_rate', 'model_config', 'dataset_path'],
      doc: 'Simulated training: one chunk per epoch (train_loss, val_acc), then final_model_path.',
    });
  }

  onSessionStart(sessionId, state, data) {
    const isObject = data !== null && typeof data === 'object' && !Array.isArray(data);
    state.counter = isObject && data.counter !== undefined ? data.counter : 0;
    state.init_data = data ?? null;
  }

  /** Count a stream generator's cleanup: closed always, cancelled unless it ran to the end. */
  closed(ctx, completed) {
    this.streamsClosedHere += 1;
    if (!completed || ctx.cancelled) this.streamsCancelledHere += 1;
  }

  ping(ctx) {
    return { status: 'ok', message: 'pong', pid: process.pid, timestamp: Date.now() / 1000, session_id: ctx.sessionId };
  }

  compute({ operation, a, b = null }) {
    if (!OPERATIONS.includes(operation)) {
      throw new InvalidArguments(`unknown operation ${JSON.stringify(operation)}; use one of ${OPERATIONS.join(', ')}`);
    }
    const x = num('a', a);
    if (operation === 'sqrt') return { result: arithmetic('sqrt', x), operation };
    if (b === null) throw new InvalidArguments(`operation '${operation}' needs b`);
    return { result: arithmetic(operation, x, num('b', b)), operation };
  }

  info(ctx) {
    const { stats } = this;
    return {
      pid: process.pid,
      language: 'node',
      runtime_version: process.version,
      handler: this.constructor.name,
      uptime: (Date.now() - stats.startedAt) / 1000,
      requests_handled: stats.requests,
      errors: stats.errors,
      streams_started: stats.streamsStarted,
      streams_closed: this.streamsClosedHere,
      streams_cancelled: this.streamsCancelledHere,
      sessions_active: stats.sessionsStarted - stats.sessionsEnded,
      sessions_started: stats.sessionsStarted,
      sessions_ended: stats.sessionsEnded,
      session_id: ctx.sessionId,
    };
  }

  random({ type = 'uniform', min = 0, max = 1, mean = 0, std = 1 }) {
    let value;
    if (type === 'uniform') {
      const low = Number(num('min', min));
      value = low + Math.random() * (Number(num('max', max)) - low);
    } else if (type === 'integer') {
      const low = num('min', min);
      const high = num('max', max);
      if (!(isInt(low) && isInt(high)) || low > high) {
        throw new InvalidArguments(`integer needs whole numbers min <= max, not ${JSON.stringify(min)}, ${JSON.stringify(max)}`);
      }
      value = crypto.randomInt(Number(low), Number(high) + 1);
    } else if (type === 'normal') {
      let u = 0;
      while (u === 0) u = Math.random();
      const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
      value = Number(num('mean', mean)) + Number(num('std', std)) * z;
    } else {
      throw new InvalidArguments(`unknown random type ${JSON.stringify(type)}; use uniform, integer or normal`);
    }
    return { value, type };
  }

  async sleep({ seconds = 0.1 }, ctx) {
    const started = performance.now();
    const full = await ctx.sleep(Number(num('seconds', seconds)));
    return { slept: (performance.now() - started) / 1000, cancelled: !full };
  }

  async *pingStream({ count = 5, interval = 0.01 }, ctx) {
    let completed = false;
    try {
      for (let seq = 0; count <= 0 || seq < count; seq += 1) {
        const last = count > 0 && seq === count - 1;
        yield { seq, message: `ping ${seq}`, timestamp: Date.now() / 1000, is_final: last };
        if (!last && !(await ctx.sleep(interval))) return;
      }
      completed = true;
    } finally {
      this.closed(ctx, completed);
    }
  }

  async *batchInference({ batch_items: batchItems = null, items = null, model = 'resnet50', model_path: modelPath = null, delay = 0 }, ctx) {
    const batch = batchItems ?? items ?? [];
    if (!Array.isArray(batch)) throw new InvalidArguments(`batch_items must be a list, not ${typeOf(batch)}`);
    let completed = false;
    try {
      for (let index = 0; index < batch.length; index += 1) {
        if (!(await ctx.sleep(delay))) return;
        yield {
          item: batch[index],
          index,
          prediction: labelOf(batch[index]),
          confidence: round(0.7 + Math.random() * 0.29, 4),
          model: modelPath ?? model,
          is_final: false,
        };
      }
      completed = true;
      yield { is_final: true, total_processed: batch.length, model: modelPath ?? model };
    } finally {
      this.closed(ctx, completed);
    }
  }

  async *processLargeDataset({ total_rows: totalRows = 1000, chunk_size: chunkSize = 100, delay = 0, file_path: filePath = null }, ctx) {
    if (!(chunkSize > 0) || !(totalRows >= 0)) throw new InvalidArguments('chunk_size must be > 0 and total_rows >= 0');
    const started = performance.now();
    const chunks = Math.max(1, Math.ceil(totalRows / chunkSize));
    let completed = false;
    try {
      for (let index = 0; index < chunks; index += 1) {
        if (index > 0 && !(await ctx.sleep(delay))) return;
        const processed = Math.min(totalRows, (index + 1) * chunkSize);
        const final = index === chunks - 1;
        const chunk = {
          chunk_index: index,
          processed_rows: processed,
          total_rows: totalRows,
          progress_percent: totalRows ? round((100 * processed) / totalRows, 2) : 100.0,
          file_path: filePath,
          is_final: final,
        };
        if (final) {
          completed = true;
          chunk.total_processed = processed;
          chunk.final_stats = { rows: processed, chunks, duration: (performance.now() - started) / 1000 };
        }
        yield chunk;
      }
    } finally {
      this.closed(ctx, completed);
    }
  }

  async *tailAndAnalyze({ lines = null, count = 20, interval = 0, pattern = 'ERROR' }, ctx) {
    const source = lines ?? Array.from({ length: count }, (_, n) => logLine(n));
    if (!Array.isArray(source)) throw new InvalidArguments(`lines must be a list, not ${typeOf(source)}`);
    const levels = {};
    let matches = 0;
    let completed = false;
    try {
      for (let number = 1; number <= source.length; number += 1) {
        if (number > 1 && !(await ctx.sleep(interval))) return;
        const line = String(source[number - 1]);
        const level = ['ERROR', 'WARNING', 'DEBUG', 'INFO'].find((lvl) => line.includes(lvl)) ?? 'OTHER';
        levels[level] = (levels[level] ?? 0) + 1;
        const matched = line.includes(pattern);
        if (matched) matches += 1;
        yield { line_number: number, line, level, matches: matched, is_final: false };
      }
      completed = true;
      yield { is_final: true, lines: source.length, matches, levels, pattern };
    } finally {
      this.closed(ctx, completed);
    }
  }

  async *distributedTraining({ epochs = 5, interval = 0, learning_rate: learningRate = 0.01, dataset_path: datasetPath = null }, ctx) {
    let loss = 2.5;
    let acc = 0.1;
    let completed = false;
    try {
      for (let epoch = 1; epoch <= epochs; epoch += 1) {
        if (epoch > 1 && !(await ctx.sleep(interval))) return;
        loss *= 0.7 + 0.1 * Math.random();
        acc += (0.99 - acc) * (0.3 + 0.05 * Math.random());
        yield {
          epoch,
          total_epochs: epochs,
          train_loss: round(loss, 5),
          val_loss: round(loss * 1.1, 5),
          val_acc: round(acc, 5),
          learning_rate: learningRate,
          is_final: false,
        };
      }
      completed = true;
      yield {
        is_final: true,
        epochs,
        final_val_acc: round(acc, 5),
        final_model_path: `/tmp/snakepit_models/model_${crypto.randomBytes(6).toString('hex')}.pt`,
        dataset_path: datasetPath,
      };
    } finally {
      this.closed(ctx, completed);
    }
  }
}

module.exports = { ShowcaseHandler };

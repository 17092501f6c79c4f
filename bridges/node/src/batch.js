'use strict';
/**
 * ExecuteBatch: many calls of one command in one gRPC message.
 *
 * A batch map's cost per item is the gRPC round trip, not the command. A
 * batch pays it once for many items: each item runs through the very path of
 * Execute (prepare: arguments, session, deadline; invoke: the command and its
 * encoded result), one after another, each counted as a request, and their
 * outcomes go back in one response.
 *
 * The response must fit the message limit: no further item is started once
 * the results reach half of it (the caller sends the rest again), and a result
 * too large for the room left is that item's PayloadTooLarge error, as an
 * oversized Execute result is.
 */

const { BridgeError, Kind, classify } = require('./errors');

/** Share of the message limit after which no further item is started. */
const BUDGET_SHARE = 0.5;
/** Bytes of protobuf framing counted per item result. */
const ITEM_OVERHEAD = 16;

function resultSize(payload) {
  return payload.json.length + payload.blobs.reduce((sum, blob) => sum + blob.length, 0);
}

function detailSize(err) {
  return Buffer.byteLength(err.message || '') + Buffer.byteLength(err.type || '') + Buffer.byteLength(err.traceback || '') + 8;
}

/**
 * Run every item of an ExecuteBatchRequest in order.
 * @param {import('./server').BridgeServer} server
 * @returns {Promise<{results: object[]}>} one ItemResult per item run.
 * @throws {BridgeError} an unknown command or a stream command: the whole call fails.
 */
async function runBatch(server, request, signal, deadlineOfCall) {
  const spec = server.lookup(request.command, true);
  const stats = server.handler.stats;
  const limit = server.maxMessageBytes;
  const budget = Math.floor(limit * BUDGET_SHARE);
  const results = [];
  let used = 0;
  for (const item of request.items) {
    if (used >= budget || signal.aborted) break; // the rest is sent again (or the caller is gone)
    stats.requests += 1;
    let outcome;
    let size;
    try {
      const { args, ctx } = await server.prepare({ ...request, args: item }, signal, true, deadlineOfCall);
      const payload = await server.invoke(spec, args, ctx);
      size = resultSize(payload);
      if (used + size + ITEM_OVERHEAD > limit) {
        throw new BridgeError(Kind.COMMAND_ERROR, 'PayloadTooLarge', `the result of command '${spec.name}' is ${size} bytes; with the results before it in this batch it is over the limit of ${limit} bytes`);
      }
      outcome = { ok: true, result: payload };
    } catch (err) {
      const failure = classify(err, spec.name);
      stats.errors += 1;
      outcome = { ok: false, error: { kind: failure.kind, type: failure.type, message: failure.message, traceback: failure.traceback } };
      size = detailSize(failure);
    }
    used += size + ITEM_OVERHEAD;
    results.push(outcome);
    if (request.stop_on_error && !outcome.ok) break;
  }
  return { results };
}

module.exports = { BUDGET_SHARE, ITEM_OVERHEAD, runBatch };

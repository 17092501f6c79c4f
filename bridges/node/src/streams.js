'use strict';
/**
 * Stream commands: pull a generator's chunks and write them to the call.
 *
 * Chunks that are ready at the same moment (the generator yields again
 * without waiting on anything) are coalesced into one ExecuteStreamResponse,
 * up to a count and a byte cap, so a fast generator fills each message while
 * a lone chunk goes out at once. A slow reader makes the pump wait for
 * 'drain' (backpressure), so memory stays flat. A cancel stops the wait at
 * once, even while the generator is between yields; the caller then closes
 * the generator so its `finally` blocks run.
 */

/** Largest stream message (many chunks); a bigger lone chunk goes alone. */
const BATCH_BYTES = 1024 * 1024;
/** Most chunks in one stream message, so a fast generator still streams. */
const MAX_CHUNKS_PER_MESSAGE = 256;
const NOT_READY = Symbol('not ready');

/** Resolve a promise-or-value now if it is already settled, else NOT_READY. */
function readyOrNot(step) {
  if (!step || typeof step.then !== 'function') return step;
  return Promise.race([step, new Promise((resolve) => setImmediate(resolve, NOT_READY))]);
}

/** Await a step, but give up (NOT_READY) the moment the call is cancelled. */
function abortable(promise, signal) {
  if (signal.aborted) return Promise.resolve(NOT_READY);
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve(NOT_READY);
    signal.addEventListener('abort', onAbort, { once: true });
    Promise.resolve(promise).then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/**
 * Pull chunks and write them, coalescing the ones ready together.
 * @returns {Promise<boolean>} true when the generator finished, false when cancelled.
 */
async function pump(call, iterator, signal, encode, limit) {
  let pending = null;
  for (;;) {
    const step = pending ?? iterator.next();
    pending = null;
    const first = await abortable(step, signal);
    if (first === NOT_READY) {
      if (step && typeof step.catch === 'function') step.catch(() => {});
      return false;
    }
    if (first.done) return true;
    let batch = [];
    let size = 0;
    let done = false;
    const add = (value) => {
      const chunk = encode(value);
      if (batch.length > 0 && size + chunk.size > limit) {
        call.write({ chunks: batch });
        batch = [];
        size = 0;
      }
      batch.push(chunk.payload);
      size += chunk.size;
    };
    add(first.value);
    while (batch.length < MAX_CHUNKS_PER_MESSAGE && !signal.aborted) {
      const next = iterator.next();
      const ready = await readyOrNot(next);
      if (ready === NOT_READY) {
        pending = next;
        next.catch(() => {});
        break;
      }
      if (ready.done) {
        done = true;
        break;
      }
      add(ready.value);
    }
    if (signal.aborted) return false;
    const flowing = call.write({ chunks: batch });
    if (done) return true;
    if (!flowing && !(await drained(call, signal))) return false;
  }
}

/** Wait until the client takes more data; false when the call is cancelled first. */
function drained(call, signal) {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onDrain = () => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    };
    const onAbort = () => {
      call.removeListener('drain', onDrain);
      resolve(false);
    };
    call.once('drain', onDrain);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Close an unfinished generator so its `finally` blocks run. */
async function closeIterator(iterator, log) {
  if (typeof iterator.return !== 'function') return;
  try {
    await iterator.return(undefined);
  } catch (err) {
    log(`closing a cancelled stream raised: ${err && err.stack}`);
  }
}

module.exports = { BATCH_BYTES, closeIterator, pump };

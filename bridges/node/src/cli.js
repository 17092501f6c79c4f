'use strict';
/**
 * The bridge process: parse the CLI every bridge takes, load the handler,
 * serve on the Unix socket, and go away cleanly.
 *
 *   snakepit-bridge-node --socket PATH --parent-pid PID --run-id ID
 *                        --max-message-bytes N [--adapter path/to/handler.js]
 *
 * Exit paths: SIGTERM/SIGINT (stop serving, end sessions, exit 0) and the
 * parent's death (polled every 200 ms with kill(pid, 0)), so a bridge never
 * outlives the worker that started it, even when the worker was SIGKILLed.
 */

const fs = require('node:fs');
const path = require('node:path');

const { Handler } = require('./handler');
const { BridgeServer } = require('./server');
const tracing = require('./tracing');

const PARENT_POLL_MS = 200;
const USAGE = 'usage: snakepit-bridge-node --socket PATH --parent-pid PID --run-id ID --max-message-bytes N [--adapter FILE]';

class UsageError extends Error {}

function parseArgs(argv) {
  const options = { socket: null, parentPid: null, runId: '', maxMessageBytes: 64 * 1024 * 1024 + 64 * 1024, adapter: null };
  const names = { '--socket': 'socket', '--parent-pid': 'parentPid', '--run-id': 'runId', '--max-message-bytes': 'maxMessageBytes', '--adapter': 'adapter' };
  for (let i = 0; i < argv.length; i += 1) {
    let flag = argv[i];
    let value;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    } else {
      value = argv[i + 1];
      i += 1;
    }
    const key = names[flag];
    if (key === undefined) throw new UsageError(`unknown option ${flag}`);
    if (value === undefined) throw new UsageError(`option ${flag} needs a value`);
    options[key] = value;
  }
  if (!options.socket) throw new UsageError('--socket is required');
  for (const [flag, key] of [['--parent-pid', 'parentPid'], ['--max-message-bytes', 'maxMessageBytes']]) {
    if (options[key] === null) continue;
    const number = Number(options[key]);
    if (!Number.isInteger(number) || number <= 0) throw new UsageError(`${flag} must be a positive integer, not ${JSON.stringify(options[key])}`);
    options[key] = number;
  }
  return options;
}

/**
 * Load the handler from a file: module.exports (or its `default`/`handler`) may be a
 * Handler instance, a Handler subclass, or a function returning a Handler.
 */
function loadHandler(file) {
  if (!file) {
    const { ShowcaseHandler } = require('./showcase');
    return { handler: new ShowcaseHandler(), name: 'ShowcaseHandler' };
  }
  const resolved = path.resolve(file);
  let exported = require(resolved);
  if (exported && !(exported instanceof Handler) && typeof exported === 'object') {
    exported = exported.default ?? exported.handler ?? exported;
  }
  let handler = exported;
  if (typeof exported === 'function') {
    handler = exported.prototype instanceof Handler || exported === Handler ? new exported() : exported();
  }
  if (!(handler instanceof Handler)) {
    throw new UsageError(`--adapter ${file}: the module must export a Handler, a Handler subclass or a function returning one`);
  }
  return { handler, name: `${path.basename(resolved)}:${handler.constructor.name}` };
}

/**
 * Whether the parent still runs. kill(pid, 0) alone is fooled by a parent that
 * died but is not reaped yet (a zombie), so when the parent is our real parent
 * we also notice being re-parented.
 */
function parentAlive(pid, directChild) {
  if (directChild && process.ppid !== pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

async function main(argv = process.argv.slice(2)) {
  let options;
  let loaded;
  try {
    options = parseArgs(argv);
    loaded = loadHandler(options.adapter);
  } catch (err) {
    process.stderr.write(`snakepit-bridge-node: ${err instanceof UsageError ? err.message : err.stack}\n${USAGE}\n`);
    process.exit(2);
  }
  const tag = `[snakepit-bridge-node ${process.pid}${options.runId ? ` run ${options.runId}` : ''}]`;
  const log = (line) => process.stderr.write(`${tag} ${line}\n`);
  const server = new BridgeServer({ handler: loaded.handler, handlerName: loaded.name, maxMessageBytes: options.maxMessageBytes, log });

  let stopping = false;
  let watch = null;
  const stop = async (reason, code = 0) => {
    if (stopping) return;
    stopping = true;
    if (watch !== null) clearInterval(watch);
    log(`stopping: ${reason}`);
    try {
      await server.stop();
    } catch (err) {
      log(`error while stopping: ${err && err.stack}`);
    }
    try {
      fs.unlinkSync(options.socket);
    } catch {
      // already gone: nothing to clean
    }
    await tracing.flush(); // process.exit drops spans an SDK still holds
    process.exit(code);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('unhandledRejection', (err) => log(`unhandled rejection (bridge keeps serving): ${err && err.stack}`));

  if (options.parentPid !== null) {
    const directChild = process.ppid === options.parentPid;
    if (!parentAlive(options.parentPid, false)) {
      log(`parent ${options.parentPid} is not running; not starting`);
      process.exit(1);
    }
    watch = setInterval(() => {
      if (!parentAlive(options.parentPid, directChild)) stop(`parent ${options.parentPid} died`);
    }, PARENT_POLL_MS);
  }
  try {
    await server.start(options.socket);
  } catch (err) {
    log(`cannot serve on unix:${options.socket}: ${err.message}`);
    process.exit(1);
  }
  log(`serving ${loaded.name} on unix:${options.socket}`);
}

module.exports = { loadHandler, main, parseArgs };

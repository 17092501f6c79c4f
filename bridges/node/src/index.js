'use strict';
/** The public surface of the Node.js bridge SDK: write a handler, serve it. */

const { CallContext, Handler, InvalidArguments } = require('./handler');
const { BridgeServer } = require('./server');
const { ShowcaseHandler } = require('./showcase');
const wire = require('./wire');

module.exports = { BridgeServer, CallContext, Handler, InvalidArguments, NDArray: wire.NDArray, ShowcaseHandler, wire };

#!/usr/bin/env node
'use strict';
// The bridge executable the pool's node adapter runs; see src/cli.js.
require('../src/cli').main();

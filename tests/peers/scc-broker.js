#!/usr/bin/env node
// The real scc-broker (see package.json for the pinned version), the relay
// between the servers of a SocketCluster cluster, for the scbridge
// integration tests.
//
//   node scc-broker.js
//
// scc-broker listens on the fixed port in SCC_BROKER_SERVER_PORT (0 means
// its default, 8888). Here it listens on an ephemeral port of 127.0.0.1
// instead, so that no test depends on a port being free, and prints
//   READY <port>
// once it does. It shuts down when its stdin closes, so a broker whose test
// process died does not linger.
//
// Environment
//   SCC_STATE_SERVER_PORT   where scc-broker looks for the cluster's state
//                 server on 127.0.0.1. scc-state is not on npm and none
//                 runs in the tests: the broker's attempts to register keep
//                 failing, which does not stop it from relaying.

'use strict';

const http = require('http');

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function () {
  this.once('listening', () => process.stdout.write(`READY ${this.address().port}\n`));
  return listen.call(this, 0, '127.0.0.1');
};

process.env.SCC_STATE_SERVER_HOST = '127.0.0.1';
// Its log of failed attempts to reach the state server says nothing a test
// needs.
process.env.SCC_BROKER_SERVER_LOG_LEVEL = process.env.SCC_BROKER_SERVER_LOG_LEVEL || '0';

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

require('scc-broker/server.js');

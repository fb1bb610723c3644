#!/usr/bin/env node
// A real socketcluster-server (see package.json for the pinned version) for
// the scbridge integration tests.
//
//   node server.js [--port N] [--proto 1|2] [--auth] [--log] [--raw]
//                  [--exit-with-stdin] [--tls-cert FILE --tls-key FILE]
//
// Everything the tests need to observe is printed on stdout, one line per
// event, and the tests drive the server through commands on stdin (one per
// line). The full list of lines and commands is at the end of this header.
//
// Options
//   --port N      port to listen on, on 127.0.0.1 (default 0: ephemeral)
//   --proto 1|2   protocolVersion: only changes the ping/pong tokens
//                 (v1 "#1"/"#2", v2 ""/"") (default 2)
//   --auth        #subscribe and #publish from unauthenticated sockets are
//                 rejected with {name: "AuthRequiredError",
//                 message: "Not authenticated"}
//   --log         server warnings and errors as text on stderr
//   --raw         every frame of every socket as a JSON line on stderr:
//                 {"t":<ms>,"socket":<id>,"dir":"in"|"out","frame":<text>}
//                 plus {"t","socket","dir":"close","code","reason"}, and
//                 {"t","socket","silenced":true} where `silence` took effect
//   --exit-with-stdin   shut down (as on SIGTERM) when stdin closes, so a
//                 server whose test process died does not linger
//   --tls-cert FILE --tls-key FILE   serve wss:// (HTTPS) with this PEM
//                 certificate chain and key
//
// Environment
//   SC_PING_INTERVAL, SC_PING_TIMEOUT, SC_HANDSHAKE_TIMEOUT, SC_ACK_TIMEOUT
//                 milliseconds, passed to the server options
//   SC_PATH       WebSocket path (default /socketcluster/)
//   SC_AUTH_KEY   JWT signing key (default: a fixed test key, so tokens
//                 stay valid across restarts)
//   SC_BATCH_ON_HANDSHAKE=1   batchOnHandshake: true
//   SC_NO_CLIENT_PUBLISH=1    allowClientPublish: false
//   SC_PASSWORD   when set, the login RPC requires this password
//   SC_SCC_BROKERS   comma-separated scc-broker URLs: join a SocketCluster
//                 cluster (SCC) through those brokers, with scc-broker-client
//   SC_SCC_STATE_PORT   the port scc-broker-client looks for the cluster's
//                 state server on (127.0.0.1); see "Cluster" below
//
// RPCs served to clients
//   login          data "user" or {username, password}; setAuthToken({username});
//                  answers "ok" (the #setAuthToken push follows the answer)
//   logout         deauthenticate; answers "ok"
//   echo           answers with its data
//   fail           fails with {name: "CustomError", message: "fail requested"}
//   kickOut        {channel, message}: kicks this socket out of channel
//   serverPublish  {channel, data}: exchange.invokePublish
//   serverInvoke   invokes "hello" on this socket with data, answers with the
//                  client's answer (or fails with the client's error)
//   disconnectMe   {code, reason}: answers, then closes this socket
//   startBatching, stopBatching   this socket's outbound batching
//   flush          answers null (a barrier: everything sent before it has
//                  been processed)
//
// Stdout lines (<json> is compact JSON, or "-" when the value is absent)
//   READY <port>
//   CONNECTION <socketId> authenticated=<true|false> token=<username|->
//   AUTH_FAILED <socketId> <errorName>
//   AUTHENTICATED <socketId> <username|->      (login, #authenticate or set-token)
//   DEAUTHENTICATED <socketId>
//   SUBSCRIBE <socketId> <channel> authenticated=<true|false>
//   SUBOPTS <socketId> <channel> <json>        (after SUBSCRIBE, when the
//                                              subscribe carried waitForAuth/data)
//   UNSUBSCRIBE <socketId> <channel>           (also on kickOut and on close)
//   PUBLISH <socketId> <channel> <json>        (accepted client #publish)
//   BLOCKED <socketId> <subscribe|publish> <channel> <errorName>
//   TRANSMIT <socketId> <event> <json>         (custom transmitted event)
//   INVOKE <socketId> <event> <json>           (custom invoked event)
//   DISCONNECT <socketId> <code> <reason|->    (socket that completed the handshake)
//   ABORT <socketId> <code> <reason|->         (socket closed before the handshake)
//                 the reason is the close frame's, or when that is empty the
//                 server's text for the code (1001 "Socket was disconnected",
//                 4001 "Client pong timed out", ...), or "-"
//   STOPPED                                    (after SIGTERM/SIGINT, before exit 0)
//   SCC_SUBSCRIBE <channel>                    (SC_SCC_BROKERS: the channel is
//                                              subscribed at its broker, so
//                                              publishes on other servers reach it)
//   SCC_SUBFAIL <channel>
//
// Stdin commands (<target> is a socket id or "*" for every connected socket);
// each ends with "OK <command line>" or "ERR <command line> <why>", printed
// after the command has acted; reply lines come before it.
//   sign <username>                 TOKEN <username> <jwt>
//   sign-expired <username>         TOKEN <username> <jwt>   (exp in the past)
//   publish <channel> [<json>]      exchange.invokePublish (no json: data absent)
//   kickout <target> <channel> [<message...>]
//   disconnect <target> <code> [<reason...>]
//   silence <target>                no more pings and no pong timeout for it
//   invoke <target> <event> [<json>]
//                                   INVOKE_RESULT <socketId> <json>
//                                   INVOKE_ERROR <socketId> <name> <message>
//   transmit <target> <event> [<json>]
//   set-token <target> <username>   setAuthToken({username})
//   deauth <target>                 deauthenticate
//   batch <target> on|off
//   sockets                         SOCKETS <id> <id> ...

'use strict';

const fs = require('fs');
const http = require('http');
const https = require('https');
const readline = require('readline');
const socketClusterServer = require('socketcluster-server');

const DEFAULT_AUTH_KEY = 'scbridge-test-auth-key-do-not-use-in-production';

function out(line) {
  // process.stdout is synchronous for pipes and files on Linux, so every
  // line is out of the process as soon as this returns.
  process.stdout.write(line + '\n');
}

function fail(message) {
  process.stderr.write(`server.js: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  let args = {port: 0, proto: 2, auth: false, log: false, raw: false, exitWithStdin: false, tlsCert: null, tlsKey: null};
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '--port': args.port = Number(value()); break;
      case '--proto': args.proto = Number(value()); break;
      case '--auth': args.auth = true; break;
      case '--log': args.log = true; break;
      case '--raw': args.raw = true; break;
      case '--exit-with-stdin': args.exitWithStdin = true; break;
      case '--tls-cert': args.tlsCert = value(); break;
      case '--tls-key': args.tlsKey = value(); break;
      default: fail(`unknown argument ${arg}`);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) fail('bad --port');
  if (args.proto !== 1 && args.proto !== 2) fail('--proto must be 1 or 2');
  if (!args.tlsCert !== !args.tlsKey) fail('--tls-cert and --tls-key go together');
  return args;
}

function envMs(name) {
  let raw = process.env[name];
  if (raw == null || raw === '') return undefined;
  let ms = Number(raw);
  if (!Number.isFinite(ms) || ms < 0) fail(`${name} must be a number of milliseconds`);
  return ms;
}

// Compact JSON, or "-" for an absent (undefined) value.
function json(value) {
  if (value === undefined) return '-';
  try {
    return JSON.stringify(value);
  } catch (error) {
    return JSON.stringify(String(value));
  }
}

function parseJsonArg(text) {
  if (text == null || text === '') return undefined;
  return JSON.parse(text);
}

function orDash(text) {
  return text == null || text === '' ? '-' : String(text);
}

function usernameOf(authToken) {
  if (authToken && typeof authToken === 'object' && authToken.username != null) {
    return String(authToken.username);
  }
  return '-';
}

function errorName(error) {
  return (error && error.name) || 'Error';
}

function namedError(name, message) {
  let error = new Error(message);
  error.name = name;
  return error;
}

const args = parseArgs(process.argv.slice(2));

const serverOptions = {
  protocolVersion: args.proto,
  authKey: process.env.SC_AUTH_KEY || DEFAULT_AUTH_KEY,
  path: process.env.SC_PATH || '/socketcluster/',
  batchOnHandshake: process.env.SC_BATCH_ON_HANDSHAKE === '1',
  allowClientPublish: process.env.SC_NO_CLIENT_PUBLISH !== '1'
};
for (let [env, option] of [
  ['SC_PING_INTERVAL', 'pingInterval'],
  ['SC_PING_TIMEOUT', 'pingTimeout'],
  ['SC_HANDSHAKE_TIMEOUT', 'handshakeTimeout'],
  ['SC_ACK_TIMEOUT', 'ackTimeout']
]) {
  let ms = envMs(env);
  if (ms !== undefined) serverOptions[option] = ms;
}
const password = process.env.SC_PASSWORD || null;

function notImplemented(req, res) {
  res.writeHead(501);
  res.end('Not Implemented');
}
const httpServer = args.tlsCert
  ? https.createServer(
      {cert: fs.readFileSync(args.tlsCert), key: fs.readFileSync(args.tlsKey)},
      notImplemented,
    )
  : http.createServer(notImplemented);
const agServer = socketClusterServer.attach(httpServer, serverOptions);

function consume(stream, handler) {
  (async () => {
    for await (let item of stream) {
      try {
        await handler(item);
      } catch (error) {
        process.stderr.write(`server.js: handler failed: ${error && error.stack || error}\n`);
      }
    }
  })();
}

// ---- Frame log (--raw) ----

function rawLog(record) {
  process.stderr.write(JSON.stringify({t: Date.now(), ...record}) + '\n');
}

function hookRawFrames(agSocket) {
  let ws = agSocket.socket;
  let id = agSocket.id;
  ws.on('message', (data, isBinary) => {
    rawLog({socket: id, dir: 'in', frame: isBinary ? data.toString('hex') : data.toString(), ...(isBinary ? {binary: true} : {})});
  });
  ws.on('close', (code, reason) => {
    rawLog({socket: id, dir: 'close', code, reason: reason.toString()});
  });
  let send = ws.send.bind(ws);
  ws.send = (data, options, cb) => {
    rawLog({socket: id, dir: 'out', frame: typeof data === 'string' ? data : String(data)});
    return send(data, options, cb);
  };
}

// ---- Server events ----
//
// The server's events are observed synchronously, by wrapping its emit, so
// every line is printed at the moment the server acts, in the server's own
// order (stream listeners would see them a few microtasks later).

const serverEventHandlers = {
  handshake({socket}) {
    if (args.raw) hookRawFrames(socket);
  },
  connection({socket, isAuthenticated}) {
    // A handshake with a valid token also emits "authentication" a little
    // later; this CONNECTION line already reports it.
    socket._handshakeAuthPending = !!isAuthenticated;
    out(`CONNECTION ${socket.id} authenticated=${!!isAuthenticated} token=${isAuthenticated ? usernameOf(socket.authToken) : '-'}`);
    serveProcedures(socket);
  },
  badSocketAuthToken({socket, authError}) {
    out(`AUTH_FAILED ${socket.id} ${errorName(authError)}`);
  },
  authentication({socket, authToken}) {
    if (socket._handshakeAuthPending) {
      socket._handshakeAuthPending = false;
      return;
    }
    out(`AUTHENTICATED ${socket.id} ${usernameOf(authToken)}`);
  },
  deauthentication({socket}) {
    // A bad token in the handshake also deauthenticates; AUTH_FAILED covers it.
    if (socket.state === socket.OPEN) out(`DEAUTHENTICATED ${socket.id}`);
  },
  subscription({socket, channel, subscriptionOptions}) {
    out(`SUBSCRIBE ${socket.id} ${channel} authenticated=${socket.authState === socket.AUTHENTICATED}`);
    // The server leaves a "data: undefined" key behind; only real options count.
    let hasOptions = subscriptionOptions &&
      Object.values(subscriptionOptions).some((value) => value !== undefined);
    if (hasOptions) {
      out(`SUBOPTS ${socket.id} ${channel} ${json(subscriptionOptions)}`);
    }
  },
  unsubscription({socket, channel}) {
    out(`UNSUBSCRIBE ${socket.id} ${channel}`);
  },
  disconnection({socket, code, reason}) {
    out(`DISCONNECT ${socket.id} ${code} ${orDash(reason)}`);
  },
  connectionAbort({socket, code, reason}) {
    out(`ABORT ${socket.id} ${code} ${orDash(reason)}`);
  },
  warning({warning}) {
    if (args.log) process.stderr.write(`warning: ${errorName(warning)}: ${warning && warning.message}\n`);
  },
  error({error}) {
    if (args.log) process.stderr.write(`error: ${errorName(error)}: ${error && error.message}\n`);
  }
};

const serverEmit = agServer.emit.bind(agServer);
agServer.emit = (eventName, data) => {
  let handler = serverEventHandlers[eventName];
  if (handler) {
    try {
      handler(data);
    } catch (error) {
      process.stderr.write(`server.js: ${eventName} handler failed: ${error && error.stack || error}\n`);
    }
  }
  serverEmit(eventName, data);
};

// ---- Inbound middleware: logging, and the --auth rule ----

agServer.setMiddleware(agServer.MIDDLEWARE_INBOUND, (middlewareStream) => {
  (async () => {
    for await (let action of middlewareStream) {
      let socket = action.socket;
      let authenticated = socket.authState === socket.AUTHENTICATED;
      switch (action.type) {
        case action.SUBSCRIBE:
        case action.PUBLISH_IN: {
          let kind = action.type === action.SUBSCRIBE ? 'subscribe' : 'publish';
          if (args.auth && !authenticated) {
            let error = namedError('AuthRequiredError', 'Not authenticated');
            out(`BLOCKED ${socket.id} ${kind} ${action.channel} ${error.name}`);
            action.block(error);
            continue;
          }
          if (action.type === action.PUBLISH_IN) {
            out(`PUBLISH ${socket.id} ${action.channel} ${json(action.data)}`);
          }
          break;
        }
        case action.TRANSMIT:
          out(`TRANSMIT ${socket.id} ${action.receiver} ${json(action.data)}`);
          break;
        case action.INVOKE:
          out(`INVOKE ${socket.id} ${action.procedure} ${json(action.data)}`);
          break;
        default:
          break;
      }
      action.allow();
    }
  })();
});

// ---- RPCs served to each socket ----

async function login(socket, data) {
  let username;
  let given;
  if (typeof data === 'string') {
    username = data;
  } else if (data && typeof data === 'object' && typeof data.username === 'string') {
    username = data.username;
    given = data.password;
  }
  if (!username) {
    throw namedError('LoginError', 'login needs a username');
  }
  if (password != null && given !== password) {
    throw namedError('LoginError', 'wrong password');
  }
  await socket.setAuthToken({username});
  return 'ok';
}

const procedures = {
  login,
  async logout(socket) {
    await socket.deauthenticate();
    return 'ok';
  },
  async echo(socket, data) {
    return data;
  },
  async fail() {
    throw namedError('CustomError', 'fail requested');
  },
  async kickOut(socket, data) {
    let {channel, message} = data || {};
    await socket.kickOut(channel, message);
  },
  async serverPublish(socket, data) {
    let {channel} = data || {};
    await agServer.exchange.invokePublish(channel, data ? data.data : undefined);
  },
  async serverInvoke(socket, data) {
    return socket.invoke('hello', data);
  },
  async startBatching(socket) {
    socket.startBatching();
  },
  async stopBatching(socket) {
    socket.stopBatching();
  },
  async flush() {
    return null;
  }
};

function serveProcedures(socket) {
  for (let [name, handler] of Object.entries(procedures)) {
    consume(socket.procedure(name), (request) => {
      // Each request runs on its own so a slow one (serverInvoke) does not
      // hold back the next.
      (async () => {
        let result;
        try {
          result = await handler(socket, request.data);
        } catch (error) {
          request.error(error);
          return;
        }
        request.end(result);
      })();
    });
  }
  consume(socket.procedure('disconnectMe'), (request) => {
    let {code, reason} = request.data || {};
    request.end();
    socket.disconnect(typeof code === 'number' ? code : 1000, reason);
  });
  // A plain receiver for the transmitted "note" event; the inbound
  // middleware has already printed its TRANSMIT line.
  consume(socket.receiver('note'), () => {});
}

// ---- Stdin commands ----

function targets(target) {
  if (target === '*') {
    return Object.values(agServer.clients);
  }
  let socket = agServer.clients[target];
  if (!socket) {
    throw new Error(`no connected socket ${target}`);
  }
  return [socket];
}

function need(words, count, usage) {
  if (words.length < count) throw new Error(`usage: ${usage}`);
}

async function signToken(username, expired) {
  let options = {};
  let payload = {username};
  if (expired) {
    let now = Math.floor(Date.now() / 1000);
    payload.iat = now - 7200;
    payload.exp = now - 3600;
  } else {
    options.expiresIn = agServer.defaultSignatureOptions.expiresIn;
  }
  if (agServer.defaultSignatureOptions.algorithm != null) {
    options.algorithm = agServer.defaultSignatureOptions.algorithm;
  }
  return agServer.auth.signToken(payload, agServer.signatureKey, options);
}

function silence(socket) {
  clearInterval(socket._pingIntervalTicker);
  clearTimeout(socket._pingTimeoutTicker);
  socket._pingIntervalTicker = null;
  socket._pingTimeoutTicker = null;
  socket._sendPing = () => {};
  // Inbound messages call this to re-arm the pong timer; a no-op on the
  // instance shadows the prototype method.
  socket._resetPongTimeout = () => {};
  // In the frame log's own order, so a test can tell the pings sent before
  // the silence from any sent after it.
  if (args.raw) rawLog({socket: socket.id, silenced: true});
}

// Splits "<a> <b> <rest...>" keeping the rest (JSON, reasons) intact.
function splitWords(line, count) {
  let words = [];
  let rest = line;
  for (let i = 0; i < count; i++) {
    rest = rest.replace(/^\s+/, '');
    if (rest === '') break;
    let match = /^(\S+)(.*)$/s.exec(rest);
    words.push(match[1]);
    rest = match[2];
  }
  rest = rest.trim();
  if (rest !== '') words.push(rest);
  return words;
}

const commands = {
  async sign(line) {
    let words = splitWords(line, 2);
    need(words, 2, 'sign <username>');
    out(`TOKEN ${words[1]} ${await signToken(words[1], false)}`);
  },
  async 'sign-expired'(line) {
    let words = splitWords(line, 2);
    need(words, 2, 'sign-expired <username>');
    out(`TOKEN ${words[1]} ${await signToken(words[1], true)}`);
  },
  async publish(line) {
    let words = splitWords(line, 2);
    need(words, 2, 'publish <channel> [<json>]');
    await agServer.exchange.invokePublish(words[1], parseJsonArg(words[2]));
  },
  async kickout(line) {
    let words = splitWords(line, 3);
    need(words, 3, 'kickout <socketId|*> <channel> [<message...>]');
    await Promise.all(targets(words[1]).map((socket) => socket.kickOut(words[2], words[3])));
  },
  async disconnect(line) {
    let words = splitWords(line, 3);
    need(words, 3, 'disconnect <socketId|*> <code> [<reason...>]');
    let code = Number(words[2]);
    if (!Number.isInteger(code)) throw new Error('code must be an integer');
    for (let socket of targets(words[1])) {
      socket.disconnect(code, words[3]);
    }
  },
  async silence(line) {
    let words = splitWords(line, 2);
    need(words, 2, 'silence <socketId|*>');
    for (let socket of targets(words[1])) silence(socket);
  },
  async invoke(line) {
    let words = splitWords(line, 3);
    need(words, 3, 'invoke <socketId|*> <event> [<json>]');
    let data = parseJsonArg(words[3]);
    await Promise.all(targets(words[1]).map(async (socket) => {
      try {
        let result = await socket.invoke(words[2], data);
        out(`INVOKE_RESULT ${socket.id} ${json(result)}`);
      } catch (error) {
        out(`INVOKE_ERROR ${socket.id} ${errorName(error)} ${orDash(error && error.message)}`);
      }
    }));
  },
  async transmit(line) {
    let words = splitWords(line, 3);
    need(words, 3, 'transmit <socketId|*> <event> [<json>]');
    let data = parseJsonArg(words[3]);
    for (let socket of targets(words[1])) socket.transmit(words[2], data);
  },
  async 'set-token'(line) {
    let words = splitWords(line, 3);
    need(words, 3, 'set-token <socketId|*> <username>');
    await Promise.all(targets(words[1]).map((socket) => socket.setAuthToken({username: words[2]})));
  },
  async deauth(line) {
    let words = splitWords(line, 2);
    need(words, 2, 'deauth <socketId|*>');
    await Promise.all(targets(words[1]).map((socket) => socket.deauthenticate()));
  },
  async batch(line) {
    let words = splitWords(line, 3);
    need(words, 3, 'batch <socketId|*> on|off');
    if (words[2] !== 'on' && words[2] !== 'off') throw new Error('batch takes on or off');
    for (let socket of targets(words[1])) {
      if (words[2] === 'on') socket.startBatching();
      else socket.stopBatching();
    }
  },
  async sockets() {
    out(['SOCKETS', ...Object.keys(agServer.clients)].join(' '));
  }
};

async function runCommands() {
  let lines = readline.createInterface({input: process.stdin, terminal: false});
  for await (let rawLine of lines) {
    let line = rawLine.trim();
    if (line === '') continue;
    let verb = line.split(/\s+/, 1)[0];
    let command = Object.hasOwn(commands, verb) ? commands[verb] : null;
    try {
      if (!command) throw new Error(`unknown command ${verb}`);
      await command(line);
      out(`OK ${line}`);
    } catch (error) {
      out(`ERR ${line} ${String(error && error.message || error).replace(/\s+/g, ' ')}`);
    }
  }
  // Stdin closed. Without --exit-with-stdin, keep serving until a signal
  // arrives (stdin may be /dev/null by design).
  if (args.exitWithStdin) shutdown();
}

// ---- Startup and shutdown ----

let stopping = false;

async function shutdown() {
  if (stopping) return;
  stopping = true;
  // Close every socket the way a server restart would, then stop listening.
  for (let socket of Object.values(agServer.clients)) {
    socket.disconnect(1001);
  }
  let closed = Promise.all([
    agServer.close().catch(() => {}),
    new Promise((resolve) => httpServer.close(() => resolve()))
  ]);
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1000))]);
  out('STOPPED');
  process.exit(0);
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// ---- Cluster (SC_SCC_BROKERS) ----
//
// scc-state, the cluster's state server, is not published on npm, so none
// runs here and the one thing it would tell this server, the list of
// brokers, is handed to scc-broker-client directly. Everything that carries
// messages (the broker engine hooks, the broker connections, the sharding of
// channels over brokers) is scc-broker-client's own. Its attempts to reach
// the state server keep failing and are ignored.
if (process.env.SC_SCC_BROKERS) {
  const sccBrokerClient = require('scc-broker-client');
  const cluster = sccBrokerClient.attach(agServer.brokerEngine, {
    stateServerHost: '127.0.0.1',
    stateServerPort: Number(process.env.SC_SCC_STATE_PORT) || undefined,
    instanceId: `server-${process.pid}`
  });
  cluster.setBrokers(process.env.SC_SCC_BROKERS.split(','));
  consume(cluster.listener('subscribe'), ({channel}) => out(`SCC_SUBSCRIBE ${channel}`));
  consume(cluster.listener('subscribeFail'), ({channel}) => out(`SCC_SUBFAIL ${channel}`));
  consume(cluster.listener('error'), ({error}) => {
    if (args.log) process.stderr.write(`server.js: cluster: ${error && error.message || error}\n`);
  });
}

function listen(port, retryUntil) {
  httpServer.once('error', (error) => {
    if (error.code === 'EADDRINUSE' && port !== 0 && Date.now() < retryUntil) {
      // A restart on the same port may race with the old process going away.
      setTimeout(() => listen(port, retryUntil), 100);
      return;
    }
    fail(`cannot listen on 127.0.0.1:${port}: ${error.message}`);
  });
  httpServer.listen(port, '127.0.0.1', () => {
    out(`READY ${httpServer.address().port}`);
    runCommands();
  });
}

listen(args.port, Date.now() + 5000);

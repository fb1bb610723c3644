#!/usr/bin/env node
// A real socketcluster-client (see package.json for the pinned version) for
// the scbridge integration tests. Three modes:
//
//   node client.js sub <ch>[,<ch>..] --port N [--count K] [--timeout S]
//        [--login u[:p]] [--wait-for-auth] [--sub-data JSON]
//        [--proto 1|2] [--path P] [--reconnect-delay MS] [--token JWT]
//     Subscribes to every channel and prints each message. Exits 0 after K
//     messages in total (with --count), 2 on timeout.
//     With --login, logs in (and waits for the token) before subscribing,
//     unless --wait-for-auth is given: then the channels are subscribed with
//     waitForAuth at once, and go out when the token arrives.
//
//   node client.js pub <ch> --port N [--n N] [--data JSON] [--interval MS]
//        [--transmit] [--login u[:p]] [--proto 1|2] [--path P] [--token JWT]
//     Publishes N messages (default 1), payload {"seq":i,"ts":<ms>} (i from
//     0), or exactly the --data JSON for every message. invokePublish with an
//     ack per message, unless --transmit (transmitPublish, then one "flush"
//     RPC as a barrier so the server has seen them all). Exits 0, or 1 if a
//     publish failed.
//
//   node client.js interactive --port N [--proto 1|2] [--path P]
//        [--reconnect-delay MS] [--token JWT]
//     Connects, then reads commands on stdin, one a line:
//       sub <ch>                 prints SUBSCRIBED <ch> / SUBFAIL ...
//       unsub <ch>               prints UNSUBSCRIBED <ch>
//       pub <ch> [<json>]        transmitPublish, prints PUBSENT <ch>
//       ipub <ch> [<json>]       invokePublish, prints PUBACK <ch> or PUBERR <ch> <name> <message>
//       invoke <event> [<json>]  prints RESULT <event> <json> or RPCERR <event> <name> <message>
//       transmit <event> [<json>] prints SENT <event>
//       quit                     disconnects, prints DONE, exits 0 (also on stdin EOF)
//
// Common options: --token JWT sends that token in the first handshake (as a
// token saved by an earlier #setAuthToken would be); --reconnect-delay MS is
// the fixed delay before a reconnect (default 500, no backoff, no randomness).
//
// Stdout lines (every mode; <json> is compact JSON, "-" when absent):
//   CONNECTED <socketId>                 on every (re)connect
//   DISCONNECTED <code> <reason|->
//   LOGGED_IN <username> / LOGIN_FAILED <name> <message>
//   AUTHENTICATED <username|->           the client got a token
//   SUBSCRIBED <ch>                      on every (re)subscribe
//   SUBFAIL <ch> <name> <message>
//   KICKOUT <ch> <message|->
//   MSG {"channel":<ch>,"data":<data>}   one per message ("data" absent when absent)
//   HELLO <json>                         the server invoked "hello"; answered "hi back"
//   PUBLISHED <n>                        pub mode: how many publishes succeeded
//   PUBERR <ch> <name> <message>
//   TIMEOUT                              before exit 2
//   DONE                                 before a normal exit

'use strict';

const readline = require('readline');
const socketClusterClient = require('socketcluster-client');

function out(line) {
  process.stdout.write(line + '\n');
}

function fail(message) {
  process.stderr.write(`client.js: ${message}\n`);
  process.exit(64);
}

function json(value) {
  return value === undefined ? '-' : JSON.stringify(value);
}

function orDash(text) {
  return text == null || text === '' ? '-' : String(text);
}

function errorText(error) {
  let name = (error && error.name) || 'Error';
  let message = String((error && error.message) || error).replace(/\s+/g, ' ');
  return `${name} ${message}`;
}

function parseJson(text, what) {
  try {
    return JSON.parse(text);
  } catch (error) {
    fail(`${what} is not JSON: ${error.message}`);
  }
}

function parseArgs(argv) {
  let args = {
    mode: argv[0],
    target: null,
    port: null,
    count: null,
    timeout: 60,
    login: null,
    waitForAuth: false,
    subData: undefined,
    proto: 2,
    path: '/socketcluster/',
    n: 1,
    data: undefined,
    interval: 0,
    transmit: false,
    reconnectDelay: 500,
    token: null
  };
  let rest = argv.slice(1);
  if (args.mode === 'sub' || args.mode === 'pub') {
    if (rest.length === 0 || rest[0].startsWith('--')) fail(`${args.mode} needs a channel`);
    args.target = rest.shift();
  } else if (args.mode !== 'interactive') {
    fail('usage: node client.js sub|pub|interactive ...');
  }
  for (let i = 0; i < rest.length; i++) {
    let arg = rest[i];
    let value = () => {
      if (i + 1 >= rest.length) fail(`${arg} needs a value`);
      return rest[++i];
    };
    let number = () => {
      let n = Number(value());
      if (!Number.isFinite(n) || n < 0) fail(`${arg} needs a non-negative number`);
      return n;
    };
    switch (arg) {
      case '--port': args.port = number(); break;
      case '--count': args.count = number(); break;
      case '--timeout': args.timeout = number(); break;
      case '--login': args.login = value(); break;
      case '--wait-for-auth': args.waitForAuth = true; break;
      case '--sub-data': args.subData = parseJson(value(), '--sub-data'); break;
      case '--proto': args.proto = number(); break;
      case '--path': args.path = value(); break;
      case '--n': args.n = number(); break;
      case '--data': args.data = parseJson(value(), '--data'); break;
      case '--interval': args.interval = number(); break;
      case '--transmit': args.transmit = true; break;
      case '--reconnect-delay': args.reconnectDelay = number(); break;
      case '--token': args.token = value(); break;
      default: fail(`unknown argument ${arg}`);
    }
  }
  if (args.port == null) fail('--port is required');
  if (args.proto !== 1 && args.proto !== 2) fail('--proto must be 1 or 2');
  return args;
}

const args = parseArgs(process.argv.slice(2));

const socket = socketClusterClient.create({
  hostname: '127.0.0.1',
  port: args.port,
  path: args.path,
  protocolVersion: args.proto,
  // A fixed, short reconnect delay (the cables.gl op uses a fixed 1 s) keeps
  // restart tests quick; 4000/4001/1005 closes still reconnect at once.
  autoReconnectOptions: {initialDelay: args.reconnectDelay, randomness: 0, multiplier: 1},
  autoConnect: false
});

// Channels with a running MSG printer, so a second "sub" does not start a
// second printer (which would print every message twice).
const watched = new Set();

// The client drops a kicked-out or refused channel; stop its printer too, so
// that subscribing again starts a fresh one.
function forgetChannel(name) {
  watched.delete(name);
  socket.closeChannel(name);
}

function listen(eventName, handler) {
  (async () => {
    for await (let event of socket.listener(eventName)) {
      handler(event);
    }
  })();
}

listen('connect', ({id}) => out(`CONNECTED ${id}`));
listen('disconnect', ({code, reason}) => out(`DISCONNECTED ${code} ${orDash(reason)}`));
listen('subscribe', ({channel}) => out(`SUBSCRIBED ${channel}`));
listen('subscribeFail', ({channel, error}) => {
  out(`SUBFAIL ${channel} ${errorText(error)}`);
  forgetChannel(channel);
});
listen('kickOut', ({channel, message}) => {
  out(`KICKOUT ${channel} ${orDash(message)}`);
  forgetChannel(channel);
});
listen('authenticate', ({authToken}) => {
  out(`AUTHENTICATED ${orDash(authToken && authToken.username)}`);
});
// Errors are reported through the lines above; keep this stream drained.
listen('error', () => {});

(async () => {
  for await (let request of socket.procedure('hello')) {
    out(`HELLO ${json(request.data)}`);
    request.end('hi back');
  }
})();

if (args.token) {
  // The in-memory token store is what the first handshake reads its token from.
  socket.auth.saveToken(socket.authTokenName, args.token, {});
}
socket.connect();

let exiting = false;

function finish(code) {
  if (exiting) return;
  exiting = true;
  out(code === 2 ? 'TIMEOUT' : 'DONE');
  socket.disconnect();
  // Give the close frame a moment to leave.
  setTimeout(() => process.exit(code), 50);
}

function parseLogin(text) {
  let colon = text.indexOf(':');
  if (colon < 0) return {username: text, data: text};
  let username = text.slice(0, colon);
  return {username, data: {username, password: text.slice(colon + 1)}};
}

async function login() {
  let {username, data} = parseLogin(args.login);
  let authenticated = socket.listener('authenticate').once();
  try {
    await socket.invoke('login', data);
  } catch (error) {
    out(`LOGIN_FAILED ${errorText(error)}`);
    return false;
  }
  // The login answer arrives before the #setAuthToken push; wait for it.
  if (socket.authState !== socket.AUTHENTICATED) await authenticated;
  out(`LOGGED_IN ${username}`);
  return true;
}

function watchChannel(name, count) {
  if (watched.has(name)) return;
  watched.add(name);
  let channel = socket.subscribe(name, {
    waitForAuth: args.waitForAuth,
    ...(args.subData !== undefined ? {data: args.subData} : {})
  });
  (async () => {
    for await (let data of channel) {
      if (exiting) break;
      let message = {channel: name};
      if (data !== undefined) message.data = data;
      out(`MSG ${JSON.stringify(message)}`);
      count();
    }
  })();
}

async function runSub() {
  let channels = args.target.split(',').filter((c) => c !== '');
  let received = 0;
  let count = () => {
    received++;
    if (args.count != null && received >= args.count) finish(0);
  };
  if (args.login && !args.waitForAuth) {
    if (socket.state !== socket.OPEN) await socket.listener('connect').once();
    if (!(await login())) {
      finish(1);
      return;
    }
  }
  for (let channel of channels) watchChannel(channel, count);
  if (args.login && args.waitForAuth) {
    if (socket.state !== socket.OPEN) await socket.listener('connect').once();
    await login();
  }
  if (args.count === 0) finish(0);
}

async function runPub() {
  if (socket.state !== socket.OPEN) await socket.listener('connect').once();
  if (args.login && !(await login())) {
    finish(1);
    return;
  }
  let published = 0;
  let failed = false;
  for (let i = 0; i < args.n; i++) {
    let data = args.data !== undefined ? args.data : {seq: i, ts: Date.now()};
    if (args.transmit) {
      socket.transmitPublish(args.target, data);
      published++;
    } else {
      try {
        await socket.invokePublish(args.target, data);
        published++;
      } catch (error) {
        failed = true;
        out(`PUBERR ${args.target} ${errorText(error)}`);
      }
    }
    if (args.interval > 0 && i + 1 < args.n) {
      await new Promise((resolve) => setTimeout(resolve, args.interval));
    }
  }
  if (args.transmit) {
    try {
      await socket.invoke('flush');
    } catch (error) {
      failed = true;
      out(`PUBERR ${args.target} ${errorText(error)}`);
    }
  }
  out(`PUBLISHED ${published}`);
  finish(failed ? 1 : 0);
}

// Splits "<verb> <word> <rest...>" keeping the rest (JSON) intact.
function splitCommand(line) {
  let match = /^(\S+)(?:\s+(\S+))?(?:\s+(.*))?$/s.exec(line.trim());
  if (!match) return [];
  return [match[1], match[2], match[3]];
}

async function runInteractive() {
  let lines = readline.createInterface({input: process.stdin, terminal: false});
  for await (let line of lines) {
    if (line.trim() === '') continue;
    let [verb, name, rest] = splitCommand(line);
    let data;
    if (rest !== undefined) {
      try {
        data = JSON.parse(rest);
      } catch (error) {
        out(`BADCMD ${line.trim()} ${error.message}`);
        continue;
      }
    }
    if (verb !== 'quit' && name === undefined) {
      out(`BADCMD ${line.trim()} missing argument`);
      continue;
    }
    switch (verb) {
      case 'sub':
        watchChannel(name, () => {});
        break;
      case 'unsub':
        socket.unsubscribe(name);
        forgetChannel(name);
        out(`UNSUBSCRIBED ${name}`);
        break;
      case 'pub':
        socket.transmitPublish(name, data);
        out(`PUBSENT ${name}`);
        break;
      case 'ipub':
        socket.invokePublish(name, data).then(
          () => out(`PUBACK ${name}`),
          (error) => out(`PUBERR ${name} ${errorText(error)}`)
        );
        break;
      case 'invoke':
        socket.invoke(name, data).then(
          (result) => out(`RESULT ${name} ${json(result)}`),
          (error) => out(`RPCERR ${name} ${errorText(error)}`)
        );
        break;
      case 'transmit':
        socket.transmit(name, data);
        out(`SENT ${name}`);
        break;
      case 'quit':
        finish(0);
        return;
      default:
        out(`BADCMD ${line.trim()} unknown command`);
    }
  }
  finish(0);
}

if (args.mode !== 'interactive') {
  setTimeout(() => finish(2), args.timeout * 1000);
}

process.on('SIGTERM', () => finish(0));
process.on('SIGINT', () => finish(0));

const run = {sub: runSub, pub: runPub, interactive: runInteractive}[args.mode];
run().catch((error) => {
  process.stderr.write(`client.js: ${error && error.stack || error}\n`);
  process.exit(1);
});

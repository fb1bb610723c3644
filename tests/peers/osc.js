#!/usr/bin/env node
// A minimal OSC 1.0 peer over UDP for scripts/demo, with Node's own dgram
// (no package). Two modes:
//
//   node osc.js listen
//     Binds 127.0.0.1 on a free port, prints "READY <port>", then one line
//     per message: "<address> ,<tags> <arg> <arg> ...". Bundles are opened.
//
//   node osc.js send <port> <address> [<float> ...]
//     Sends one message with float32 arguments to 127.0.0.1:<port>.

'use strict';

const dgram = require('dgram');

function padded(length) {
  return (length + 4) & ~3; // a string's bytes, its NUL, then up to 4-byte alignment
}

function readString(buf, offset) {
  const end = buf.indexOf(0, offset);
  if (end < 0) throw new Error('unterminated string');
  return [buf.toString('utf8', offset, end), offset + padded(end - offset)];
}

function decodeMessage(buf, lines) {
  let [address, offset] = readString(buf, 0);
  if (address === '#bundle') {
    offset += 8; // time tag
    while (offset + 4 <= buf.length) {
      const size = buf.readInt32BE(offset);
      decodeMessage(buf.subarray(offset + 4, offset + 4 + size), lines);
      offset += 4 + size;
    }
    return;
  }
  let tags = ',';
  if (offset < buf.length) [tags, offset] = readString(buf, offset);
  const args = [];
  for (const tag of tags.slice(1)) {
    switch (tag) {
      case 'f': args.push(buf.readFloatBE(offset)); offset += 4; break;
      case 'i': args.push(buf.readInt32BE(offset)); offset += 4; break;
      case 'd': args.push(buf.readDoubleBE(offset)); offset += 8; break;
      case 'h': args.push(buf.readBigInt64BE(offset).toString()); offset += 8; break;
      case 's': { const [s, next] = readString(buf, offset); args.push(JSON.stringify(s)); offset = next; break; }
      case 'b': { const size = buf.readInt32BE(offset); args.push(`<${size} bytes>`); offset += 4 + ((size + 3) & ~3); break; }
      case 'T': args.push('true'); break;
      case 'F': args.push('false'); break;
      case 'N': args.push('nil'); break;
      default: args.push(`<${tag}?>`);
    }
  }
  lines.push([address, tags, ...args].join(' '));
}

function encodeString(text) {
  const bytes = Buffer.from(text, 'utf8');
  const out = Buffer.alloc(padded(bytes.length));
  bytes.copy(out);
  return out;
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'listen') {
  const socket = dgram.createSocket('udp4');
  socket.on('message', (buf) => {
    const lines = [];
    try {
      decodeMessage(buf, lines);
    } catch (err) {
      lines.push(`<undecodable datagram of ${buf.length} bytes: ${err.message}>`);
    }
    for (const line of lines) process.stdout.write(line + '\n');
  });
  socket.bind(0, '127.0.0.1', () => process.stdout.write(`READY ${socket.address().port}\n`));
} else if (mode === 'send' && rest.length >= 2) {
  const [port, address, ...values] = rest;
  const args = values.map((v) => {
    const b = Buffer.alloc(4);
    b.writeFloatBE(Number(v));
    return b;
  });
  const packet = Buffer.concat([encodeString(address), encodeString(',' + 'f'.repeat(args.length)), ...args]);
  const socket = dgram.createSocket('udp4');
  socket.send(packet, Number(port), '127.0.0.1', (err) => {
    socket.close();
    if (err) {
      process.stderr.write(`osc.js: ${err.message}\n`);
      process.exit(1);
    }
  });
} else {
  process.stderr.write('usage: osc.js listen | osc.js send <port> <address> [<float> ...]\n');
  process.exit(2);
}

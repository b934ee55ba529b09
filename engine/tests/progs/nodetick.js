// A node program as a user would run one: V8's heap (which V8 marks
// MADV_DONTFORK), libuv's event loop (an epoll set, eventfds, pipes) and
// a timer. Each tick it checks a table of objects it built at start,
// replaces one of them (the heap changes), and appends `tick N ok` (or
// `FAIL ...`) to ./progress.log.
'use strict';
const fs = require('fs');
const table = [];
for (let i = 0; i < 100000; i++) table.push({ i, s: 'v' + i });
const fd = fs.openSync('progress.log', 'a');
let n = 0;
setInterval(() => {
  n++;
  let bad = -1;
  for (let i = n % 97; i < table.length; i += 997) {
    if (table[i].i !== i || table[i].s !== 'v' + i) bad = i;
  }
  const k = (n * 7919) % table.length;
  table[k] = { i: k, s: 'v' + k };
  fs.writeSync(fd, bad < 0 ? `tick ${n} ok\n` : `FAIL table[${bad}] (tick ${n})\n`);
}, 100);

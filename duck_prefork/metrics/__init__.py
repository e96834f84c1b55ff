"""Whole-server metrics: what every worker counts, gathered by the master, served to scrapers.

  counters.py    the worker's hot-path counters (compiled with the hot path: plain attributes
                 and lists, nothing per request but additions)
  layout.py      the shared-memory area the master creates before forking: one cell per
                 running worker (one writer each, a generation counter against torn reads),
                 one retired row per slot (the master's), and how each is read and written
  gather.py      the master's side: cells claimed and folded into the retired rows as workers
                 come and go, plus what the master measures itself (listen queues, memory,
                 heartbeats, exits by reason), into one Snapshot
  exposition.py  a Snapshot as Prometheus text, OpenMetrics text, or the /status JSON
  server.py      the scrape endpoint, served from the master's poll loop (non-blocking,
                 bounded in size, time and connections)
  status.py      `duck-prefork status` and the systemd STATUS= line

May import: the standard library, psutil, duck_prefork.config, logs and net.listeners. The
master and worker import this package; nothing here imports master/ or worker/.
"""

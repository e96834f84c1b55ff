"""The master process: binds or inherits the listeners, forks the workers, supervises them.

Owns: the supervision loop and its signal handlers (supervisor.py); a worker's lifecycle, one
state and a table of transitions (lifecycle.py); health verdicts and memory readings
(health.py); worker slots, their crash back-off and --reuse-port sockets (slots.py); every
system call it makes, through one narrow interface (processes.py); USR2's upgrade in place
(upgrade.py); how a stop goes, the lame duck included, one table of phases (drain.py);
HAProxy's agent check answered from the loop (agent.py); systemd's notify protocol and status
line (systemd.py); the pid file and the master it names (pidfile.py); what runs before the
loop (startup.py); --reload's watcher, a process of its own that sends HUP (reload.py).
May import: config, logs, hooks, net (listeners), and worker (to run a worker after fork and
read its channel). Never an event loop, never a thread: see supervisor.py.
"""

"""The master process: binds or inherits the listeners, forks the workers, supervises them.

Owns: the supervision loop and its signal handlers (supervisor.py), the system calls it makes
through one narrow interface (processes.py), USR2's upgrade in place (upgrade.py), systemd's
notify protocol (systemd.py), the pid file (pidfile.py).
May import: config, logs, hooks, net (listeners), and worker (to run a worker after fork and
read its channel). Never an event loop, never a thread: see supervisor.py.
"""

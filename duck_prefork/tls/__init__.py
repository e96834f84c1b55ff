"""TLS: the certificates and their SSLContexts (built and validated in the master, inherited by
every worker at fork, so that one set of session ticket keys serves them all), the file watch
that reloads them, the handshake stage of a TLS listener's connections, the ASGI TLS extension,
and the plain listeners' redirect to https.

    context.py    the master: options -> Certificates (every file read and checked), or a
                  TlsError naming the file and the problem; certificate facts for the log
    watch.py      the master: have the files changed, and are they stable (--tls-reload watch)
    handshake.py  the worker: the TLS handshake as a connection stage (net/stages.py), the
                  plain-HTTP answer, the failure summary, scope["extensions"]["tls"]
    redirect.py   the worker: --redirect-https, a stage that answers a plain request with a 308

May import net/ and logs; never http1/ or asgi/ (the scope reads facts.tls, built here).
"""

"""moto_server, answering one request at a time.

moto's DynamoDB evaluates a condition expression and writes the item in separate steps,
with no lock between them, and moto_server serves requests on many threads: two
concurrent conditional writes to one item can both succeed. Real DynamoDB applies
each conditional write atomically, and axnt-oauth's refresh lease relies on exactly
that. Serialising requests gives the tests DynamoDB's semantics; moto is bound by
Python's GIL anyway, so little throughput is lost. Connections are still accepted on
many threads, so clients queue here rather than in the listen backlog.

Usage: python scripts/moto-serial.py -H 127.0.0.1 -p PORT   (moto_server's arguments)
"""

import threading

import moto.server as server

_run_simple = server.run_simple
_one_at_a_time = threading.Lock()


def _serialised(app):
    def handle(environ, start_response):
        with _one_at_a_time:
            # The whole answer is produced inside the lock.
            return list(app(environ, start_response))

    return handle


def run_simple(host, port, app, **kwargs):
    _run_simple(host, port, _serialised(app), **kwargs)


server.run_simple = run_simple

if __name__ == "__main__":
    server.main()

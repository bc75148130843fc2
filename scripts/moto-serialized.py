#!/usr/bin/env python3
"""moto_server with one request at a time.

moto's server is threaded and its DynamoDB backend takes no lock, so two concurrent
conditional writes to one item can both succeed: a race real DynamoDB never has (each
item write is atomic). Tests of concurrent deliveries need DynamoDB's guarantee, so this
wraps moto's WSGI app in a lock: connections stay concurrent, requests are applied one
after another.

usage: moto-serialized.py -H HOST -p PORT
"""
import argparse
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    run_simple(args.host, args.port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()

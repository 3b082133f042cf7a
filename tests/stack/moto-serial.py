"""moto's server, answering one request at a time.

moto 5.2.5 evaluates a DynamoDB condition and applies the write without a lock, so two
concurrent conditional writes to one item can both succeed (measured: 3 of 200 racing
UpdateItem pairs both saw no item). DynamoDB serialises them. The multi-worker tests depend on
that guarantee, so they run moto like this: same application, same request handler, no threads.

Usage: python moto-serial.py PORT   (binds 127.0.0.1 only)
"""

import os
import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)



class OneRequestPerConnection(MotoRequestHandler):
    """HTTP/1.0: the connection closes after each answer. With keep-alive, a client holding an
    idle pooled connection would block this one-at-a-time server for everyone else. The timeout
    drops a connection that sends nothing."""

    protocol_version = "HTTP/1.0"
    timeout = 5


port = int(sys.argv[1])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
run_simple("127.0.0.1", port, app, threaded=False, request_handler=OneRequestPerConnection)

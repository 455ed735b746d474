"""A real S3 implementation on 127.0.0.1 for the tests: moto's server (``moto[server]``), run in its
own process with request signing enforced, behind a switch that injects S3's transient faults.

Run as ``python s3.py``: prints ``<port>`` once listening. Signing is enforced from the first
request on (``INITIAL_NO_AUTH_ACTION_COUNT`` set by :class:`S3Server`), except for the few IAM calls
that create the test user and its access key.

The fault switch: ``POST /__faults__?status=503&count=N`` answers the next N S3 requests with that
status and S3's ``SlowDown`` error body, as an overloaded bucket does; ``count=-1`` until switched off.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from urllib.parse import parse_qs

#: IAM calls made without a signature before signing is enforced: create user, access key, policy.
SETUP_CALLS = 3
BUCKET = "bioscan"


class Faults:
    """WSGI middleware: the next ``count`` requests (``-1``: all) get ``status``."""

    def __init__(self, app):
        self.app, self.status, self.count, self.lock = app, 503, 0, threading.Lock()
        self.requests = 0

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/__faults__":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            with self.lock:
                self.status = int(query.get("status", ["503"])[0])
                self.count = int(query.get("count", ["0"])[0])
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"requests": self.requests}).encode()]
        with self.lock:
            self.requests += 1
            fail = self.count != 0
            if self.count > 0:
                self.count -= 1
        if fail:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            start_response(f"{self.status} Fault", [("Content-Type", "application/xml"),
                                                    ("Content-Length", str(len(body)))])
            return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]
        return self.app(environ, start_response)


def serve() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, Faults(DomainDispatcherApplication(create_backend_app)), threaded=True,
                         request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class S3Server:
    """Starts :func:`serve` in a subprocess; ``storage_options`` carry the credentials of a user
    allowed to use the bucket (created through the server's own IAM API)."""

    def __init__(self):
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_CALLS), AWS_DEFAULT_REGION="us-east-1",
                   MOTO_ALLOW_NONEXISTENT_REGION="true")
        self.process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env, text=True)
        self.port = int(self.process.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="researcher")
        key = iam.create_access_key(UserName="researcher")["AccessKey"]
        iam.put_user_policy(UserName="researcher", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        self.key, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.key,
                     aws_secret_access_key=self.secret).create_bucket(Bucket=BUCKET)

    def storage_options(self, secret: str | None = None) -> dict:
        # botocore's own retries cut to one repeat, so that a test of ours does not wait out its backoff
        return {"key": self.key, "secret": secret or self.secret, "endpoint_url": self.endpoint,
                "client_kwargs": {"region_name": "us-east-1"},
                "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def faults(self, count: int, status: int = 503) -> int:
        """Fail the next ``count`` requests; returns the requests served so far."""
        url = f"{self.endpoint}/__faults__?status={status}&count={count}"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as r:
            return json.loads(r.read())["requests"]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def free_port_refusing() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    serve()

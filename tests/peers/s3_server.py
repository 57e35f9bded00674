"""A real S3 endpoint on 127.0.0.1: moto's server, driven through boto3 like AWS itself."""

from __future__ import annotations

from dataclasses import dataclass

from moto.server import ThreadedMotoServer

from tests.peers.mail_server import free_port


@dataclass
class S3Server:
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self.port = self.port or free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self):
        import boto3

        return boto3.client("s3", region_name="eu-west-1", endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

"""The Python client against a gateway with mutual TLS and tokens (certificates made with
openssl for the test)."""

import os
import subprocess

import grpc
import pytest

import taskwire
import taskwire.aio
from conftest import System
from examples.magic.v1 import magic_pb2

Magic = taskwire.service(magic_pb2, "Magic")
TOKEN = "python-producer-0123456789abcdef"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a gateway certificate for 127.0.0.1 and a client certificate, as PEM files."""
    d = str(tmp_path_factory.mktemp("pki"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=taskwire test CA", cwd=d)
    for name, san in (("gateway", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:producer")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)

    def read(name):
        with open(os.path.join(d, name), "rb") as f:
            return f.read()

    return d, read


@pytest.fixture(scope="module")
def secured(pki):
    d, read = pki
    running = System(
        TASKWIRE_TLS_CERT=os.path.join(d, "gateway.pem"),
        TASKWIRE_TLS_KEY=os.path.join(d, "gateway.key"),
        TASKWIRE_TLS_CLIENT_CA=os.path.join(d, "ca.pem"),
        TASKWIRE_AUTH_TOKENS=f"{TOKEN} submit,read examples.magic.v1.*",
    )
    try:
        running.rust_worker()
        options = dict(
            root_certificates=read("ca.pem"),
            certificate_chain=read("client.pem"),
            private_key=read("client.key"),
            token=TOKEN,
        )
        running.wait_for_tasks({"examples.magic.v1.Magic/Add"}, **options)
        yield running, options
    finally:
        running.close()


def test_mutual_tls_and_a_token_get_through(secured):
    running, options = secured
    with taskwire.Client(running.target, **options) as client:
        assert Magic(client).add.delay(1, 2, 3).get(timeout=20).sum == 6


def test_the_asyncio_client_takes_the_same_settings(secured):
    import asyncio

    running, options = secured

    async def main():
        async with taskwire.aio.Client(running.target, **options) as client:
            handle = await client.submit("examples.magic.v1.Magic/Add", magic_pb2.AddArgs(arg1=4), magic_pb2.AddResult)
            return (await handle.get(timeout=20)).sum

    assert asyncio.run(main()) == 4


def test_without_the_token_or_the_client_certificate_calls_are_refused(secured):
    running, options = secured
    no_token = dict(options, token=None)
    with taskwire.Client(running.target, **no_token) as client:
        with pytest.raises(taskwire.Error) as refused:
            Magic(client).add.delay(1, 2, 3)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    no_cert = dict(options, certificate_chain=None, private_key=None)
    with taskwire.Client(running.target, **no_cert) as client:
        with pytest.raises(taskwire.Error) as refused:
            Magic(client).add.delay(1, 2, 3)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="together"):
        taskwire.Client(running.target, root_certificates=options["root_certificates"], certificate_chain=b"x")

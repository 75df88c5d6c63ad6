from __future__ import annotations

import os

# No model hub is reachable from tests: fail hub lookups at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from extract.tiny import save_tiny_clip, save_tiny_siglip


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + byte-level BPE tokenizer (GPT-2 pre-tokenizer: ``]`` and ``\\n``
    are separate tokens) saved like a hub checkpoint."""
    from models.tiny import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama")


S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API (moto's server) on a free port of 127.0.0.1 for the session: its endpoint
    and test keys go into ``os.environ`` (writers in subprocesses inherit them), restored and
    the server stopped at the end."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new empty bucket on the test server (on whatever endpoint ``AWS_ENDPOINT_URL`` names
    now): ``s3://NAME``."""
    import uuid

    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(params=["local", "s3"])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's store goes, once per backend: a folder, and a prefix of a new bucket."""
    if request.param == "local":
        return tmp_path / "s.zarr"
    return f"{request.getfixturevalue('s3_bucket')}/s.zarr"


@pytest.fixture(scope="session")
def slurm() -> Iterator[None]:
    """A real SLURM on localhost (scripts/slurm/up.sh). Fails loudly, never skips: CI must
    notice when SLURM cannot start. At the end, stops every service this session started:
    the SLURM daemons, and munged and MariaDB too when they were not running before."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def running(name: str) -> bool:
        return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0

    was_up = shutil.which("sinfo") is not None and (
        subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode == 0
    )
    helpers_up = {"--munge": running("munged"), "--mariadb": running("mariadbd")}
    up = subprocess.run(
        ["bash", str(root / "scripts" / "slurm" / "up.sh")], capture_output=True, text=True
    )
    if up.returncode != 0:
        pytest.fail(f"SLURM did not start:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    yield
    if not was_up:
        down = [flag for flag, was in helpers_up.items() if not was]
        subprocess.run(
            ["bash", str(root / "scripts" / "slurm" / "down.sh"), *down], capture_output=True
        )

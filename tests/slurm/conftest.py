"""Session fixture: a private single-node SLURM cluster (own state dir and ports), always stopped at the end."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.slurm_testlib import SCRIPT, free_port, run


def cluster_env(state_dir: Path) -> dict[str, str]:
    return {
        "SLURM_LOCAL_DIR": str(state_dir),
        "SLURM_LOCAL_CTLD_PORT": str(free_port()),
        "SLURM_LOCAL_D_PORT": str(free_port()),
        "SLURM_LOCAL_NO_ETC_LINK": "1",
    }


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed and installing it needs root (scripts/slurm_local.sh start)")
    # short path: the munge socket path must stay under the 108-byte unix socket limit
    state_dir = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    env = {**os.environ, **cluster_env(state_dir)}
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state_dir / "etc" / "slurm.conf")
    try:
        started = run(["bash", str(SCRIPT), "start"], timeout=600, env=env)
        if started.returncode != 0:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((state_dir / "log").glob("*")))
            pytest.fail(f"slurm_local.sh start failed ({started.returncode}):\n{started.stderr}{logs}")
        yield {**env, "SLURM_CONF": os.environ["SLURM_CONF"]}
    finally:
        run(["bash", str(SCRIPT), "stop"], timeout=120, env=env)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf

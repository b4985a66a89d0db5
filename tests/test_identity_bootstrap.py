"""`python -m services.registry bootstrap` on a real database: first run creates the defaults and
an organization admin token (file mode 0600, printed once); a second run refuses loudly and
changes nothing; concurrent runs bootstrap once; `--rotate` replaces the bootstrap token."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common.settings import REPO_ROOT
from tests.conftest import db_execute


def _bootstrap(database_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICEOS_")}
    env.update(DATABASE_URL=database_url, ICEOS_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "services.registry", "bootstrap", *args],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_bootstrap_once_then_refuse(fresh_database: str, tmp_path: Path) -> None:
    first = _bootstrap(fresh_database, tmp_path)
    assert first.returncode == 0, first.stderr
    token_file = tmp_path / "admin-token"
    secret = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert secret.startswith("ice_") and first.stdout.count(secret) == 1
    assert db_execute(fresh_database, "SELECT id FROM organizations") == [{"id": "default"}]
    assert db_execute(fresh_database, "SELECT id, organization_id FROM projects") == \
        [{"id": "default", "organization_id": "default"}]
    tokens = db_execute(fresh_database, "SELECT role, project_id, creator FROM api_tokens")
    assert tokens == [{"role": "admin", "project_id": None, "creator": "bootstrap"}]

    second = _bootstrap(fresh_database, tmp_path)
    assert second.returncode == 3
    assert "already" in second.stderr and "docs/security.md" in second.stderr
    assert secret not in second.stdout + second.stderr
    assert token_file.read_text().strip() == secret  # untouched
    assert len(db_execute(fresh_database, "SELECT id FROM api_tokens")) == 1


def test_concurrent_bootstraps_create_one_admin(fresh_database: str, tmp_path: Path) -> None:
    homes = [tmp_path / f"h{i}" for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda h: _bootstrap(fresh_database, h), homes))
    assert sorted(r.returncode for r in results) == [0, 3, 3], [r.stderr for r in results]
    assert len(db_execute(fresh_database, "SELECT id FROM api_tokens")) == 1


def test_rotate_revokes_the_old_bootstrap_token(fresh_database: str, tmp_path: Path) -> None:
    assert _bootstrap(fresh_database, tmp_path, "--rotate").returncode == 2  # nothing to rotate
    assert _bootstrap(fresh_database, tmp_path).returncode == 0
    old = (tmp_path / "admin-token").read_text().strip()
    rotated = _bootstrap(fresh_database, tmp_path, "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = (tmp_path / "admin-token").read_text().strip()
    assert new != old and new in rotated.stdout and "Revoked 1" in rotated.stdout
    rows = db_execute(fresh_database, "SELECT prefix, revoke_time FROM api_tokens "
                                      "ORDER BY create_time")
    assert [(r["prefix"], r["revoke_time"] is None) for r in rows] == \
        [(old[:12], False), (new[:12], True)]
    assert _bootstrap(fresh_database, tmp_path, "--bogus").returncode == 2

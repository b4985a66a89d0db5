"""Contracts: buf lint and format pass, and regenerating from proto/ reproduces gen/ exactly."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

from services.common.settings import REPO_ROOT

BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd)})


def test_buf_lint_and_format_pass() -> None:
    assert _run([sys.executable, "tools/third_party_protos.py"], REPO_ROOT).returncode == 0
    lint = _run([str(BIN / "buf"), "lint"], REPO_ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run([str(BIN / "buf"), "format", "--diff", "--exit-code", "proto"], REPO_ROOT)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_regeneration_reproduces_committed_gen(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("proto", "tools"):
        shutil.copytree(REPO_ROOT / name, work / name)
    for name in ("buf.yaml", "buf.gen.yaml"):
        shutil.copy(REPO_ROOT / name, work / name)
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    assert _run([sys.executable, "tools/third_party_protos.py"], work).returncode == 0
    gen = _run([str(BIN / "buf"), "generate"], work)
    assert gen.returncode == 0, gen.stderr
    assert _run([sys.executable, "tools/finish_gen.py"], work).returncode == 0
    build = _run([str(BIN / "buf"), "build", "--as-file-descriptor-set", "-o",
                  "gen/descriptor.binpb"], work)
    assert build.returncode == 0, build.stderr

    def differences(a: Path, b: Path) -> list[str]:
        cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
        found = [str(a / n) for n in cmp.left_only + cmp.right_only + cmp.diff_files]
        for sub in cmp.common_dirs:
            found += differences(a / sub, b / sub)
        return found

    assert differences(REPO_ROOT / "gen" / "python" / "iceos", work / "gen" / "python" /
                       "iceos") == []
    assert (REPO_ROOT / "gen" / "descriptor.binpb").read_bytes() == \
        (work / "gen" / "descriptor.binpb").read_bytes()


def test_descriptor_has_imports_source_info_and_error_details() -> None:
    from google.protobuf import descriptor_pb2
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (REPO_ROOT / "gen" / "descriptor.binpb").read_bytes()).file
    names = {f.name for f in files}
    assert {"google/rpc/error_details.proto", "google/api/annotations.proto",
            "iceos/orchestrator/v1/orchestrator.proto"} <= names
    orchestrator = next(f for f in files if f.name == "iceos/orchestrator/v1/orchestrator.proto")
    assert orchestrator.source_code_info.location

"""`appliance bench ingest` at tiny sizes: our real receiver, DCMTK's storescp, stock pynetdicom."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bench.files import make_memory_object, make_small_set
from appliance.bench.harness import BenchError
from appliance.bench.harness.processes import free_port
from appliance.bench.ingest import Launcher, check_arrived, measure_memory
from appliance.bench.peers import (
    Receiver,
    check_dcmtk,
    dcmtk,
    run_ours,
    run_pynetdicom,
    send,
)
from appliance.cli import main


def _has_dcmtk() -> bool:
    try:
        check_dcmtk()
    except BenchError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _has_dcmtk(), reason="needs DCMTK (storescu, storescp, echoscu)"
)


def _rows(output: str) -> dict[tuple[str, str, str], list[str]]:
    """The throughput table's rows by (set, senders, receiver)."""
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 8 and cells[0] in ("small", "large") and cells[1].isdigit():
            rows[(cells[0], cells[1], cells[2])] = cells[3:]
    return rows


def test_bench_ingest_prints_all_three_receivers_with_every_file_arrived(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "ingest", "--small", "20", "--large", "1", "--large-frames", "2"]
    argv += ["--repeat", "1", "--senders", "1,2", "--skip-memory", "--workdir", str(tmp_path)]

    assert main(argv) == 0

    output = capsys.readouterr().out
    rows = _rows(output)
    expected = {("large", "1"): "2/2", ("small", "1"): "20/20", ("small", "2"): "20/20"}
    receivers = ("ours", "storescp", "pynetdicom")
    assert set(rows) == {(s, n, r) for s, n in expected for r in receivers}
    for (set_name, senders, _receiver), cells in rows.items():
        arrived, _mb, seconds, images_per_s, mb_per_s = cells[:5]
        assert arrived == expected[(set_name, senders)]
        assert float(seconds) > 0 and float(images_per_s) > 0 and float(mb_per_s) > 0
    assert "ours/storescp  ours/pynetdicom" in output
    for set_name, senders in expected:
        ours_storescp, ours_pynetdicom = rows[(set_name, senders, "ours")][5:]
        assert float(ours_storescp) > 0 and float(ours_pynetdicom) > 0
        assert len(rows[(set_name, senders, "pynetdicom")]) == 5  # no ratios on its rows
    assert "pynetdicom: stock pynetdicom SCP, same accepted contexts" in output
    assert "Where our receiver's time per image goes" in output
    assert "Durable-write limit" in output and "of the limit" in output
    assert "stock pynetdicom SCP ceiling on one association:" in output
    assert "of the durable-write limit" in output
    assert "Resident memory" not in output


def test_peers_picks_the_receivers_and_a_report_without_ours_has_no_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "ingest", "--small", "2", "--large", "1", "--large-frames", "0"]
    argv += ["--repeat", "1", "--senders", "1", "--skip-memory", "--peers", "pynetdicom"]

    assert main([*argv, "--workdir", str(tmp_path)]) == 0

    output = capsys.readouterr().out
    assert set(_rows(output)) == {("large", "1", "pynetdicom"), ("small", "1", "pynetdicom")}
    assert "ours/" not in output and "  ours:" not in output and "  storescp:" not in output
    assert "Where our receiver's time" not in output
    assert "stock pynetdicom SCP ceiling on one association:" in output


@pytest.mark.parametrize("peers", ["ours,nobody", "ours,ours", ""])
def test_peers_must_name_known_receivers_once(
    peers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["bench", "ingest", "--peers", peers])

    assert caught.value.code == 2
    assert "--peers" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "launch"), [("ours", run_ours), ("pynetdicom", run_pynetdicom)])
def test_memory_is_sampled_while_a_receiver_takes_a_multiframe(
    name: str, launch: Launcher, tmp_path: Path
) -> None:
    big = make_memory_object(tmp_path / "files", frames=3)

    result = measure_memory(name, launch, big, tmp_path / "run")

    assert result.receiver == name
    assert result.object_mb == pytest.approx(3 * 640 * 480 * 3 / 1e6, rel=0.01)
    assert 0 < result.before_mb <= result.hwm_mb
    assert result.sampled_peak_mb >= result.before_mb
    assert result.seconds > 0


def test_accepted_files_are_counted_without_incoming_ones(tmp_path: Path) -> None:
    spool = tmp_path / "spool"  # tmp_path itself lies under /tmp: only parts below count
    for name in ("objects/ab/1.dcm", "objects/cd/2.dcm", "tmp/3.part"):
        (spool / name).parent.mkdir(parents=True, exist_ok=True)
        (spool / name).write_bytes(b"x")
    receiver = Receiver("ours", 1, 1, spool, tmp_path / "log", skip="tmp")

    assert receiver.count_accepted() == 2
    assert check_arrived(receiver, 2) == 2
    with pytest.raises(BenchError, match="accepted 2 files of 3 sent"):
        check_arrived(receiver, 3)


def test_a_failed_storescu_is_an_error_that_quotes_it(tmp_path: Path) -> None:
    files = make_small_set(tmp_path / "files", 1)
    log = tmp_path / "receiver.log"
    log.write_text("nobody listens here\n")
    nobody = Receiver("ours", free_port(), 1, tmp_path / "none", log)

    with pytest.raises(BenchError, match=r"storescu to ours exited with \d+") as caught:
        send(nobody, [files.paths], tmp_path / "logs")

    assert "nobody listens here" in str(caught.value)


def test_dcmtk_tools_are_found_behind_pynetdicom_apps_of_the_same_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    venv_bin = Path(sys.executable).parent  # pynetdicom's storescu lives here
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    dcmtk.cache_clear()
    try:
        path = dcmtk("storescu")
    finally:
        dcmtk.cache_clear()

    assert Path(path).parent != venv_bin
    version = subprocess.run([path, "--version"], capture_output=True, check=True)
    assert b"$dcmtk:" in version.stdout

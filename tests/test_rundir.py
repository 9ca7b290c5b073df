import pandas as pd
import pytest

from homerank.engine.errors import HomerankError
from homerank.jobs.rundir import MANIFEST, SUCCESS, atomic_path, verify_dataset, write_parquet_dataset


def test_dataset_manifest_counts_rows_and_detects_tampering(tmp_path):
    frame = pd.DataFrame({"user_id": range(5), "score": [0.5] * 5})
    write_parquet_dataset(tmp_path / "rankings", frame, rows_per_file=2)
    manifest = verify_dataset(tmp_path / "rankings")
    assert manifest["rows"] == 5 and len(manifest["files"]) == 3
    assert sum(f["rows"] for f in manifest["files"].values()) == 5
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rankings"), frame)
    frame.iloc[:1].to_parquet(tmp_path / "rankings" / "part-00000.parquet", index=False)
    with pytest.raises(HomerankError, match="checksum"):
        verify_dataset(tmp_path / "rankings")


def test_failed_write_leaves_the_previous_dataset(tmp_path):
    target = tmp_path / "rankings"
    write_parquet_dataset(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-00000.parquet").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert verify_dataset(target)["rows"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["rankings"]  # no temp leftovers
    assert (target / MANIFEST).exists()


def test_missing_manifest_is_incomplete(tmp_path):
    (tmp_path / "partial").mkdir()
    with pytest.raises(HomerankError, match="incomplete"):
        verify_dataset(tmp_path / "partial")


def test_dataset_has_an_empty_success_marker_beside_its_manifest(tmp_path):
    """``_SUCCESS`` is what Spark, Hadoop and Airflow sensors wait for; readers skip it like the manifest."""
    frame = pd.DataFrame({"a": [1, 2, 3]})
    write_parquet_dataset(tmp_path / "rankings", frame)
    assert SUCCESS == "_SUCCESS" and (tmp_path / "rankings" / SUCCESS).stat().st_size == 0
    assert (tmp_path / "rankings" / MANIFEST).exists()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rankings"), frame)
    (tmp_path / "rankings" / SUCCESS).unlink()
    with pytest.raises(HomerankError, match="_SUCCESS marker"):
        verify_dataset(tmp_path / "rankings")

"""The demo's ``--out`` folder (qa21, session 16). Found and fixed: ``--out`` naming an existing
file was refused with mkdir's own words, "File exists", which reads as if the folder were
fine; it now says that the path is a file and that ``--out`` names a folder."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazymat.cli import UsageError, main
from lazymat.demo import _heatmap_folder


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["dir", "file", "missing"]), min_size=1, max_size=3))
def test_out_is_a_folder_or_a_usage_error_naming_the_path(tmp_path_factory, kinds):
    """Any path of folders, a file and names not made yet (what lies below a missing folder or a
    file is a name only)."""
    pytest.importorskip("matplotlib")
    path, making = tmp_path_factory.mktemp("out"), True
    for i, kind in enumerate(kinds):
        path = path / f"p{i}"
        if making and kind == "dir":
            path.mkdir()
        elif making and kind == "file":
            path.write_text("")
        making = making and kind == "dir"
    try:
        folder = _heatmap_folder(str(path))
    except UsageError as e:
        message = str(e)
        assert message.startswith(f"--out {str(path)!r}") and "File exists" not in message, message
        if path.is_file():
            assert "is a file; --out names a folder" in message
        else:
            assert "file" in message.lower() or "directory" in message.lower(), message
        return
    assert folder.is_dir() and folder == path


def test_the_demo_refuses_a_file_for_out_in_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "x.png").write_text("")
    assert main(["demo", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.png' is a file; --out names a folder for the heatmap PNGs" in err[0], err

import io

from escnet.progress import progress


def test_plain_lines_when_not_a_terminal(monkeypatch):
    clock = iter(range(0, 1000, 20))  # every step 20 s later
    monkeypatch.setattr("escnet.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    assert list(progress(range(5), "evaluate val", unit="img", every=30.0, file=out)) == list(range(5))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("evaluate val: 2/5 img, 0.05 img/s, about 60 s left")
    assert len(lines) == 3 and lines[-1] == "evaluate val: 5 img done in 2 min"
    assert "\r" not in out.getvalue()


def test_disabled_is_silent():
    out = io.StringIO()
    assert list(progress([1, 2], "x", disable=True, file=out)) == [1, 2] and out.getvalue() == ""

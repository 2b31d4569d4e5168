"""The demo's timeline picture is written as a real PNG."""

from canarist.devstack.timeline import Timeline


def test_timeline_renders_a_png(tmp_path):
    timeline = Timeline()
    for t, weight, errors, score in [(0, 0, None, None), (1, 5, 0.0, None), (2, 5, 0.0, 0.9), (3, 20, 0.0, 0.3)]:
        timeline.add(t, weight, errors, score)
    timeline.mark(3, "rolled back", "tab:red")
    path = timeline.render(tmp_path / "out" / "timeline.png", "test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_the_shadow_phase_is_a_band_of_its_own(tmp_path):
    timeline = Timeline()
    for t, shadow in enumerate([False, True, True, False, False, True, True]):
        timeline.add(t, 0, None, None, shadow=shadow)
    assert timeline.shadow_spans() == [(1, 3), (5, 6)]
    assert timeline.render(tmp_path / "t.png", "shadow").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

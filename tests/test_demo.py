"""The main job runs, is deterministic, and reports what it promises."""

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from aquatic import demo  # noqa: E402


@pytest.fixture(scope="module")
def two_quick_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    first = demo.main(["--quick", "--out", str(folder / "a.png")])
    second = demo.main(["--quick", "--out", str(folder / "b.png")])
    return first, second, folder


def test_rows_and_plot(two_quick_runs, capsys):
    first, _, folder = two_quick_runs
    names = [r.name for r in first]
    assert names == [
        "MLP float",
        "MLP int8 w / int8 act",
        "MLP int4 w / int8 act",
        "MLP binary w / int8 act",
        "SNN float",
        "SNN Xylo preset",
    ]
    png = (folder / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_seeded_runs_repeat(two_quick_runs):
    first, second, _ = two_quick_runs
    assert [r.accuracy for r in first] == [r.accuracy for r in second]


def test_quantized_models_learn_and_integer_models_agree(two_quick_runs):
    first, _, _ = two_quick_runs
    by_name = {r.name: r for r in first}
    assert by_name["MLP float"].accuracy > 0.6  # ten classes: chance is 0.1
    assert by_name["SNN float"].accuracy > 0.5
    for r in first:
        if r.bits is None:
            assert r.agreement is None and r.size_bytes % 4 == 0
        else:
            assert r.agreement >= 0.97, r
    # smaller weights, smaller models
    sizes = [
        by_name[n].size_bytes
        for n in (
            "MLP float",
            "MLP int8 w / int8 act",
            "MLP int4 w / int8 act",
            "MLP binary w / int8 act",
        )
    ]
    assert sizes == sorted(sizes, reverse=True)


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "digits" in text


def test_rate_code_probabilities():
    import torch

    x = torch.full((1, 4), 0.25)
    spikes = demo.rate_code(x, 4000, torch.Generator().manual_seed(0))
    assert set(spikes.unique().tolist()) == {0.0, 1.0}
    assert abs(spikes.mean().item() - 0.25) < 0.02

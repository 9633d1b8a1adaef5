"""``python -m minifcn.summary``: every row's output shape is what a forward pass really
produces, the parameter counts add up to the model's, the activation memory is the
shapes' bytes, and the crop offsets are the paper's (19; 5, 27; 5, 9, 31)."""
from __future__ import annotations

import numpy as np
import pytest

from minifcn.models import MODELS
from minifcn.summary import main as summary_main, summarize


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("geometry,size", [("notes", (37, 50)), ("paper", (23, 31))])
def test_rows_match_a_real_forward_pass(name, geometry, size):
    model = MODELS[name](num_classes=3, geometry=geometry, width=1 / 32, seed=0)
    rows = summarize(model, size, batch=2)
    seen = {}
    model.eval().forward(np.zeros((2, 3) + size, np.float32),
                         hook=lambda node, y: seen.__setitem__(node, tuple(y.shape)))
    assert [r[0] for r in rows] == list(seen)
    for node, layer, shape, n_params, nbytes in rows:
        assert tuple(shape) == seen[node], node
        assert n_params == sum(a.size for a in layer.params.values())
        assert nbytes == 4 * int(np.prod(seen[node]))
    assert sum(r[3] for r in rows) == model.num_params()
    assert seen[rows[-1][0]] == (2, 3) + size                # the logits: the input's size


@pytest.mark.parametrize("name,offsets", [("fcn32s", "score 19"),
                                          ("fcn16s", "score_pool4c 5, score 27"),
                                          ("fcn8s", "score_pool4c 5, score_pool3c 9, score 31")])
def test_cli_prints_the_papers_crop_offsets(capsys, name, offsets):
    assert summary_main(["--model", name, "--geometry", "paper", "--size", "64x48",
                         "--width", "0.03125"]) == 0
    out = capsys.readouterr().out
    assert f"crop offsets (derived from the layers' coordinate maps): {offsets}" in out
    assert "input 1x3x64x48" in out


def test_cli_refuses_bad_arguments(capsys):
    from minifcn.cli import run_main
    for argv in (["--batch", "0"], ["--num-classes", "0"], ["--size", "0x5"], ["--width", "-1"]):
        with pytest.raises(SystemExit) as e:
            run_main(summary_main, argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert "error:" in last and argv[0].lstrip("-").split("-")[0] in last, (argv, err)
        assert "Traceback" not in err


def test_running_out_of_memory_is_one_line_not_a_traceback(capsys):
    """Sizes too large for the machine (``summary --num-classes 100000000`` asked NumPy for
    381 GiB) end in one line that says so, exit status 2. The allocation is simulated
    here: a real one could meet the OOM killer instead of a MemoryError."""
    from minifcn.cli import run_main

    def main(argv):
        raise MemoryError("Unable to allocate 381. GiB for an array with shape (100000000, 1024)")
    assert run_main(main, []) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: out of memory") and "381. GiB" in err and "smaller" in err
    assert run_main(lambda argv: (_ for _ in ()).throw(MemoryError()), []) == 2
    assert capsys.readouterr().err.startswith("error: out of memory (MemoryError)")


def test_every_command_runs_its_main_through_run_main():
    """``python -m minifcn.X`` and ``python -m benchmarks.X`` end bad input and running out of
    memory in one line (:func:`minifcn.cli.run_main`); ``sizes`` called ``main()`` bare, and a
    MemoryError there printed a 21-line traceback. Every module that runs as a command
    hands its ``main`` to ``run_main``."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    commands = [p for folder in ("minifcn", "benchmarks") for p in sorted((root / folder).glob("*.py"))
                if 'if __name__ == "__main__":' in p.read_text()]
    assert {p.stem for p in commands} >= {"train", "evaluate", "predict", "sizes", "summary",
                                          "deconv", "step"}
    for p in commands:
        tail = p.read_text().split('if __name__ == "__main__":', 1)[1]
        assert "run_main(main" in tail, f"{p.name}: its __main__ block does not use run_main"


def test_activation_memory_of_huge_sizes_does_not_wrap():
    """The activation bytes are Python ints (``math.prod``): at 3e9 x 3e9 the input alone is
    1.08e20 bytes, which int64 (NumPy's prod) wrapped to a wrong, smaller figure."""
    model = MODELS["fcn8s"](num_classes=21, geometry="notes", width=0.05)
    rows = summarize(model, (3_000_000_000, 3_000_000_000))
    assert rows[0][4] == 4 * 3 * 3_000_000_000 ** 2

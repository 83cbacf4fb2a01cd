"""The Colab notebooks (``colab/``) run top to bottom on this CPU at tiny settings
(``JAXSURG_NOTEBOOK_TINY=1``), executed by nbclient, and are stored without outputs."""

import json
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = ("quickstart.ipynb", "tpu.ipynb", "predict_video.ipynb")


def _execute(name, work, monkeypatch, **env):
    for key, value in {"JAXSURG_NOTEBOOK_TINY": "1", "JAXSURG_NOTEBOOK_DIR": str(work), "JAXSURG_TFDS_DIR": str(work.parent / "tfds"), **env}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    return nb


def _text(nb):
    return "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))


def test_the_notebooks_are_stored_without_outputs_and_link_the_tiny_switch():
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (name, cell.source[:80])
        assert "JAXSURG_NOTEBOOK_TINY" in nb.cells[1].source


@pytest.mark.slow
def test_quickstart_then_predict_video_on_its_run_then_tpu(tmp_path, monkeypatch):
    quick = tmp_path / "quickstart"
    quick.mkdir()
    nb = _execute("quickstart.ipynb", quick, monkeypatch)
    summary = json.load(open(quick / "laparoflow" / "eval" / "summary.json"))
    assert summary["method"] == "laparoflow" and "Dice" in _text(nb)
    assert (quick / "laparoflow" / "pretrain" / "pca.png").exists() and (quick / "predicted" / "predict.json").exists()
    assert any(o.get("output_type") == "display_data" for cell in nb.cells for o in cell.get("outputs", []))  # the pictures
    # predict_video on the quickstart's run (the notebook trains nothing then).
    video = tmp_path / "predict"
    video.mkdir()
    nb = _execute("predict_video.ipynb", video, monkeypatch, JAXSURG_NOTEBOOK_WORKDIR=str(quick / "laparoflow"))
    assert not (video / "unet11_tiny").exists()
    record = json.load(open(video / "my_video" / "predict.json"))
    assert record["method"] == "laparoflow" and record["frames"] == 12
    assert "class map (1, " in _text(nb) and (video / "model.jaxexport").exists()
    tpu = tmp_path / "tpu"
    tpu.mkdir()
    nb = _execute("tpu.ipynb", tpu, monkeypatch)
    assert "2 devices:" in _text(nb) and "sum over all cores: 28.0" in _text(nb)
    assert json.load(open(tpu / "laparoflow_tpu" / "config.json"))["batch_size"] == 4  # 2 per device

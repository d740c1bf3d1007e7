"""Checkpoint files are found, downloaded, and read safely; failures say what and where."""

import pytest
import torch

from mrl_dist.models import CheckpointError, load_pretrained, read_checkpoint, resolve_checkpoint
from mrl_dist.models.loading import save_official_checkpoint


class NotAWeight:
    """Pickling an instance of this class makes a file that needs code to load."""


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_config": {}, "state_dict": {}, "extra": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)


def test_file_without_model_config_is_refused_naming_what_it_found(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt.*model_config.*found \['weights'\]"):
        load_pretrained(path)


def test_state_dict_that_does_not_fit_its_config_is_refused(official_file, tmp_path):
    payload = read_checkpoint(official_file("b0"))
    del payload["state_dict"]["linear.bias"]
    path = tmp_path / "broken.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="missing.*linear.bias"):
        load_pretrained(path)


def test_preset_name_resolves_from_the_checkpoints_env_folder(official_file, tmp_path, isolated_hub, monkeypatch):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "b0-vox2-ft_lm.pt").write_bytes(official_file("b0").read_bytes())
    monkeypatch.setenv("MRL_DIST_CHECKPOINTS", str(folder))
    model = load_pretrained("b0")
    assert not model.training and model.config.F == 60


def test_preset_name_resolves_from_torch_hub_cache(official_file, isolated_hub):
    isolated_hub.mkdir(parents=True)
    (isolated_hub / "b2-vox1-ptn.pt").write_bytes(official_file("b2").read_bytes())
    model = load_pretrained("b2", dataset="vox1", train_type="ptn")
    assert model.config.C == 16


def test_missing_checkpoint_offline_names_file_and_every_folder(tmp_path, isolated_hub, monkeypatch):
    monkeypatch.setenv("MRL_DIST_CHECKPOINTS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MRL_DIST_OFFLINE", "1")
    with pytest.raises(CheckpointError) as error:
        load_pretrained("b6")
    message = str(error.value)
    assert "b6-vox2-ft_lm.pt" in message
    assert str(tmp_path / "nowhere") in message and str(isolated_hub) in message


def test_failed_download_names_file_folders_and_url(tmp_path, isolated_hub, monkeypatch):
    monkeypatch.setenv("MRL_DIST_CHECKPOINT_URL", f"file://{tmp_path}/no-such-mirror/{{file}}")
    with pytest.raises(CheckpointError) as error:
        load_pretrained("b3")
    message = str(error.value)
    assert "b3-vox2-ft_lm.pt" in message and str(isolated_hub) in message and "no-such-mirror" in message


def test_download_lands_in_torch_hub_cache_and_loads(official_file, tmp_path, isolated_hub, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "b0-vox2-ft_lm.pt").write_bytes(official_file("b0").read_bytes())
    monkeypatch.setenv("MRL_DIST_CHECKPOINT_URL", f"file://{mirror}/{{file}}")
    model = load_pretrained("b0")
    assert (isolated_hub / "b0-vox2-ft_lm.pt").is_file()
    assert resolve_checkpoint("b0", download=False) == isolated_hub / "b0-vox2-ft_lm.pt"
    assert model.config.F == 60


def test_tiny_preset_has_no_pretrained_weights():
    with pytest.raises(CheckpointError, match="no official pretrained weights"):
        load_pretrained("tiny")


def test_unknown_source_is_an_error_naming_it():
    with pytest.raises(CheckpointError, match="not-a-model.*neither"):
        load_pretrained("not-a-model")


def test_saved_official_file_reloads_to_the_same_model(official_file, tmp_path):
    model = load_pretrained(official_file("b0"))
    path = save_official_checkpoint(model, tmp_path / "copy.pt")
    again = load_pretrained(path)
    wave = torch.randn(1, 16000)
    with torch.no_grad():
        assert torch.equal(model(wave), again(wave))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file

"""Checkpoint files are found, downloaded, and read safely; failures say what and where."""

import pytest
import torch

from mrl_dist.models import CheckpointError, load_pretrained, read_checkpoint, resolve_checkpoint
from mrl_dist.models.checkpoints import load_any_checkpoint
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


# ---------------------------------------------------------------------------- one loader, one read


def _saved_model(kind: str, folder):
    """(a model of `kind` in eval mode, the checkpoint file it was saved to)."""
    from mrl_dist.models import ReDimNetMRL, build_preset

    torch.manual_seed(0)
    path = folder / f"{kind}.pt"
    if kind == "mrl":
        model = ReDimNetMRL.from_redimnet(build_preset("tiny").eval(), dims=[32, 64, 192], head_init="pretrained")
        model.eval().save_checkpoint(path)
        return model, path
    if kind == "ssrfnet":
        pytest.importorskip("transformers", reason="SSRFNet's PTM needs the [ptm] extra")
        from mrl_dist.models import SSRFNet, preset_config

        model = SSRFNet(**preset_config("ssrfnet-tiny"))
    else:
        model = build_preset("tiny" if kind == "redimnet" else "redimnet2-tiny")
    save_official_checkpoint(model.eval(), path)
    return model, path


def _count_reads(monkeypatch) -> list:
    """Every file torch.load opens from now on (the loaders' only way to read a checkpoint)."""
    reads = []
    original = torch.load

    def counting_load(file, *args, **kwargs):
        reads.append(file)
        return original(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


@pytest.mark.parametrize(
    "kind, model_type, family",
    [
        ("mrl", "ReDimNetMRL", "redimnet"),
        ("redimnet", "ReDimNet", "redimnet"),
        ("redimnet2", "ReDimNet2", "redimnet2"),
        ("ssrfnet", "SSRFNet", "ssrfnet"),
    ],
)
def test_any_checkpoint_is_read_once_and_built_as_the_model_it_holds(kind, model_type, family, tmp_path, monkeypatch):
    model, path = _saved_model(kind, tmp_path)
    reads = _count_reads(monkeypatch)
    loaded = load_any_checkpoint(path)
    assert len(reads) == 1
    assert type(loaded.model).__name__ == model_type and not loaded.model.training
    assert (loaded.kind, loaded.family) == ("mrl" if kind == "mrl" else "official", family)
    assert model_type in loaded.description
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.equal(loaded.model(wave), model(wave))


def _load_for_eval(path):
    from mrl_dist.eval.cli import load_eval_model

    return load_eval_model(path)[0]


def _load_for_export(path):
    from mrl_dist.export.model import load_for_export

    return load_for_export(path)[0]


def _load_for_hub(path):
    from mrl_dist.export.hub import load_mrl

    return load_mrl(path).model


def _load_for_enrolment(path):
    from mrl_dist.search.enrol import load_mrl_model

    return load_mrl_model(path)


@pytest.mark.parametrize("load", [_load_for_eval, _load_for_export, _load_for_hub, _load_for_enrolment])
def test_every_command_reads_an_mrl_checkpoint_once(load, tmp_path, monkeypatch):
    model, path = _saved_model("mrl", tmp_path)
    reads = _count_reads(monkeypatch)
    loaded = load(path)
    assert len(reads) == 1
    wave = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.allclose(loaded(wave), model(wave), atol=1e-5)  # enrolment's inference form: equal up to fp


@pytest.mark.parametrize("load", [_load_for_eval, _load_for_export])
def test_the_commands_that_take_any_checkpoint_read_an_official_one_once(load, tmp_path, monkeypatch):
    model, path = _saved_model("redimnet2", tmp_path)
    reads = _count_reads(monkeypatch)
    assert type(load(path)).__name__ == "ReDimNet2" and len(reads) == 1


@pytest.mark.parametrize("load", [_load_for_hub, _load_for_enrolment])
def test_mrl_only_commands_refuse_an_official_checkpoint_before_building_it(load, tmp_path, monkeypatch):
    _, path = _saved_model("redimnet", tmp_path)
    monkeypatch.setattr("mrl_dist.models.loading.build_model", lambda config: pytest.fail("built the model"))
    with pytest.raises(CheckpointError, match=r"redimnet\.pt: not an MRL checkpoint \(no mrl_config\)"):
        load(path)

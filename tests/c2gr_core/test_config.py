import json

import pytest

from c2gr_core.config import ExperimentConfig, preset


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_preset_round_trips_through_json(tmp_path, name):
    cfg = preset(name)
    cfg.save(tmp_path / "config.json")
    back = ExperimentConfig.load(tmp_path / "config.json")
    assert back == cfg
    assert json.loads((tmp_path / "config.json").read_text())["preset"] == name


def test_paper_preset_matches_section_4_2():
    cfg = preset("paper")
    assert cfg.segmentor.channels == (32, 64, 128, 256, 512, 512, 512)
    assert cfg.denoiser.channels == (128, 128, 256, 256, 512, 512)
    assert cfg.segmentor.cross_attention_dim == cfg.denoiser.cross_attention_dim == 768
    assert cfg.diffusion.num_train_timesteps == 1000 and cfg.diffusion.sample_steps == 200
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 48, 300)
    assert (cfg.prompt.node_dim, cfg.prompt.q_dim) == (512, 256)


def test_unknown_preset_and_keys_are_named():
    with pytest.raises(ValueError, match="tiny"):
        preset("huge")
    with pytest.raises(ValueError, match="config.train: unknown key"):
        ExperimentConfig.from_dict({"train": {"epochz": 3}})

"""The config schema and its one loader: defaults in one place, one-line errors."""

import dataclasses
import json
import pathlib

import pytest

from lmjax import configs
from lmjax.configs import base
from lmjax.task import TaskSpec
from lmjax.train.optim import OptimConfig

REPO = pathlib.Path(__file__).parents[1]
EXPERIMENTS = REPO / "experiments" / "configs"


def write(tmp_path, body: str, name: str = "cfg.py") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_every_field_has_a_doc_line():
    for name, _default, doc in base.describe():
        assert doc and "\n" not in doc, name


def test_task_and_optim_defaults_are_the_library_defaults():
    spec = TaskSpec()
    for name, field in base.TASK.items():
        if not hasattr(spec, name):  # only the config knows it (e.g. the temperature)
            continue
        value = getattr(spec, name)
        # The config's "" and () mean "not set", which TaskSpec spells None.
        expected = None if field.default in ("", ()) else field.default
        assert value == expected, name
    optim = {f.name: f.default for f in dataclasses.fields(OptimConfig)}
    for name, field in base.OPTIM.items():
        assert optim[name] == field.default or optim[name] == tuple(field.default), name


def test_resolve_fills_left_out_fields_and_is_idempotent():
    out = configs.resolve({"model": {"name": "unet", "features": 8}, "train": {"steps": 5}})
    assert out.train.steps == 5 and out.train.batch_size == base.TRAIN["batch_size"].default
    assert out.model.trainable == "all" and out.model.features == 8
    assert "num_levels" not in out.model  # the builder's default applies
    assert configs.resolve(out).to_dict() == out.to_dict()


def test_free_mappings_replace_the_default_whole():
    out = configs.resolve({"task": {"losses": {"dice_ce": 1.0}}})
    assert dict(out.task.losses) == {"dice_ce": 1.0}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, r"unknown field config\.trian; did you mean train\?"),
        ({"train": {"stepz": 3}}, r"unknown field config\.train\.stepz; did you mean steps\?"),
        ({"train": {"steps": "many"}}, r"config\.train\.steps must be int, got str"),
        ({"model": {"name": "unet", "featurez": 8}}, r"takes no option .*did you mean features"),
        ({"model": {"name": "unetz"}}, r"unknown model .*did you mean unet"),
    ],
)
def test_resolve_rejects_unknown_names_and_wrong_types(raw, message):
    with pytest.raises(configs.ConfigError, match=message) as err:
        configs.resolve(raw, source="x.py")
    assert str(err.value).startswith("x.py: ") and "\n" not in str(err.value)


def test_load_runs_get_config_with_its_argument(tmp_path):
    path = write(
        tmp_path,
        "from lmjax.configs import phantom\n"
        "def get_config(arg='a'):\n"
        "    c = phantom.get_config()\n"
        "    c.train.steps = {'a': 1, 'b': 2}[arg]\n"
        "    return c\n",
    )
    assert configs.load(path).train.steps == 1
    assert configs.load(f"{path}:b").train.steps == 2
    assert configs.load(f"{path}:b", ["train.steps=7", "data.augment="]).train.steps == 7


@pytest.mark.parametrize(
    "body, message",
    [
        (None, "no such config file"),
        ("x = 1\n", "defines no get_config"),
        ("import nosuchmodule\n", "cannot be run: ModuleNotFoundError"),
        (
            "from lmjax.configs import phantom\n"
            "def get_config(arg=''):\n    c = phantom.get_config()\n"
            "    c.train.stepz = 3\n    return c\n",
            r"unknown field config\.train\.stepz; did you mean steps",
        ),
        ("def get_config(arg=''):\n    raise ValueError('bad arg')\n", "get_config.*bad arg"),
    ],
)
def test_load_errors_name_the_file_in_one_line(tmp_path, body, message):
    path = tmp_path / "cfg.py" if body is None else write(tmp_path, body)
    with pytest.raises(configs.ConfigError, match=message) as err:
        configs.load(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "item, value",
    [
        ("train.steps=12", 12),
        ("optim.learning_rate=1e-4", 1e-4),
        ("optim.clip_norm=None", None),
        ("data.input_size=(32, 48)", (32, 48)),
        ("train.tensorboard=false", False),
        ("data.augment=", ""),
        ("task.losses={'dice_ce': 1.0}", {"dice_ce": 1.0}),
        ("task.losses.coord_l1=0.5", {"heatmap_mse": 1.0, "coord_l1": 0.5}),
        ("model.features=4", 4),
    ],
)
def test_overrides_parse_values_by_field(item, value):
    out = configs.apply_overrides(configs.load(), [item])
    name = item.partition("=")[0].split(".")
    got = out[name[0]][name[1]]
    got = got.to_dict() if hasattr(got, "to_dict") else got
    if name[1] == "losses" and len(name) == 3:
        assert got["coord_l1"] == 0.5
    else:
        assert (tuple(got) if isinstance(got, list) else got) == value


def test_override_typo_names_the_flag_and_the_nearest_field():
    with pytest.raises(configs.ConfigError, match=r"--config\.train\.stepz: .*did you mean steps"):
        configs.apply_overrides(configs.load(), ["train.stepz=3"])


def test_every_experiment_config_resolves():
    args = {
        "isbi2015_unet_heatmap.py": ["cpu", "kl_cpu", "gpu", "smoke"],
        "isbi2015_best.py": ["cpu", "gpu", "smoke"],
        "isbi2015_pelvis_unet.py": ["cpu", "gpu", "smoke"],
        "isbi2015_unet_segmentation.py": ["cpu", "gpu", "smoke"],
        "isbi2015_ceph_seg.py": ["fpn", "unet_cpu", "fpn_smoke"],
        "isbi2015_hrnet.py": ["kl", "mse_cpu", "kl_smoke"],
        "isbi2015_swin_unetr.py": ["", "cpu", "smoke"],
        "isbi2015_vit_lora.py": ["b", "l", "tiny_cpu"],
        "isbi2015_vgg.py": ["unet", "regression_cpu", "seg_regression_smoke"],
        "phantom_hrnet.py": ["proposed", "mse_cpu", "ncc", "ncc_cpu", "proposed_soft_cpu"],
        "pelvis_sam_decoder.py": ["tiny", "medsam"],
        "pelvis_detector.py": ["tiny", "paper", "heatmap"],
        "cascade_pelvis.py": [
            *("tiny", "heatmap", "paper", "full"),
            *("tiny.detector", "heatmap.detector", "paper.detector", "full.detector"),
        ],
        "cascade_isbi2015.py": ["cpu", "smoke", "cpu.detector", "smoke.detector"],
        "medsapiens_mixture.py": ["generalist", "specialist_isbi", "specialist_phantom_cpu"],
    }
    assert set(args) == {p.name for p in EXPERIMENTS.glob("*.py")}
    for name, variants in args.items():
        for arg in variants:
            config = configs.load(f"{EXPERIMENTS / name}:{arg}")
            assert config.paper, (name, arg)


# The preset of each paper, and configs that name a paper but deviate in their
# augmentation on purpose (the deviation is written in their docstrings).
PAPER_PRESETS = {
    "pelvis paper": "pelvis",
    "cephalogram paper": "",
    "lower-limb paper": "lower_limb",
    "MedSapiens": "medsapiens",
    "fluoroscopy paper": "fluoroscopy",
}
AUGMENT_DEVIATIONS = {
    "pelvis_detector.py",  # YOLO's own recipe (brightness, contrast, affine), not the U-Net's
    "pelvis_sam_decoder.py",  # cached embeddings: prompts are jittered instead
    "cascade_pelvis.py",  # the same, and the detector config carries its own
    "cascade_isbi2015.py",
}


@pytest.mark.parametrize(
    "name, arg",
    [
        ("isbi2015_pelvis_unet.py", "cpu"),
        ("isbi2015_unet_segmentation.py", "cpu"),
        ("isbi2015_ceph_seg.py", "fpn"),
        ("isbi2015_hrnet.py", "kl"),
        ("isbi2015_swin_unetr.py", ""),
        ("isbi2015_vit_lora.py", "b"),
        ("medsapiens_mixture.py", "generalist"),
        ("isbi2015_vgg.py", "unet"),
        ("phantom_hrnet.py", "proposed"),
        ("isbi2015_unet_heatmap.py", "cpu"),
        ("pelvis_detector.py", "paper"),
    ],
)
def test_configs_that_name_a_paper_use_its_augmentation(name, arg):
    config = configs.load(f"{EXPERIMENTS / name}:{arg}")
    papers = [p for p in PAPER_PRESETS if config.paper.startswith(p)]
    if not papers:  # lmjax's own recipe says so, and uses lmjax's preset
        assert config.paper.startswith("none: lmjax's") and config.data.augment == "default"
    elif name not in AUGMENT_DEVIATIONS:
        assert config.data.augment == PAPER_PRESETS[papers[0]], config.paper


def test_the_pelvis_paper_unet_is_the_papers_network():
    config = configs.load(f"{EXPERIMENTS / 'isbi2015_pelvis_unet.py'}:gpu")
    m, t = config.model, config.task
    assert m.name == "unet" and m.upsample == "transpose" and m.features == 32
    assert m.num_deep_supervision == m.num_levels - 1 and t.deep_supervision  # every level
    assert dict(t.losses) == {"heatmap_mse": 1.0} and t.target == "gaussian"
    assert max(config.data.input_size) == 512


def test_saved_config_round_trips_and_is_never_executed(tmp_path):
    config = configs.apply_overrides(configs.load(), ["train.steps=3"])
    path = configs.save_json(config, tmp_path)
    assert json.loads(path.read_text())["train"]["steps"] == 3
    assert configs.read_json(tmp_path).to_dict() == config.to_dict()
    (tmp_path / "config.py").write_text("raise SystemExit('executed')\n")
    assert configs.read_json(tmp_path).train.steps == 3
    path.write_text(json.dumps({"train": {"stepz": 1}}))
    with pytest.raises(configs.ConfigError, match="config.json: unknown field"):
        configs.read_json(tmp_path)

import pytest

from ray_al.core import config
from ray_al.core.config import ConfigError


def test_defaults_and_overrides_parse_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("al:\n  rounds: 3\ntrain:\n  lr: 0.1\n")
    cfg = config.load(path, ["al.budget=7", "train.milestones=[0.5]", "train.use_gpu=true",
                             "train.ssl_options.temperature=0.1", "data.dataset=cifar10"])
    assert cfg.al.rounds == 3 and cfg.al.budget == 7 and cfg.train.lr == 0.1
    assert cfg.train.milestones == (0.5,) and cfg.train.use_gpu is True
    assert cfg.train.ssl_options == {"temperature": 0.1} and cfg.data.dataset == "cifar10"
    assert config.from_dict(cfg.to_dict()) == cfg  # the snapshot in run.json round-trips


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["al.budgett=3"])
    msg = str(err.value)
    assert "al.budgett" in msg and "Did you mean 'budget'" in msg and "initial_size" in msg


def test_unknown_section_and_bad_values():
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*Did you mean 'train'"):
        config.load(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="'al.rounds': 'many' is not a valid int"):
        config.load(None, ["al.rounds=many"])
    with pytest.raises(ConfigError, match="'train.use_gpu'"):
        config.load(None, ["train.use_gpu=maybe"])
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(None, ["rounds=3"])


@pytest.mark.parametrize(("override", "message"), [
    ("train.mode=jiont", "train.mode='jiont' is not valid; choose one of joint, pretrain, frozen, finetune. Did you mean 'joint'?"),
    ("train.optimizer=adamw", "train.optimizer='adamw' is not valid; choose one of sgd, adam. Did you mean 'adam'?"),
    ("train.lr_schedule=poly", "train.lr_schedule='poly' is not valid; choose one of step, cosine."),
    ("train.resident=sometimes", "train.resident='sometimes' is not valid; choose one of auto, always, never."),
    ("embed.dtype=float16", "embed.dtype='float16' is not valid; choose one of float32, bfloat16. Did you mean"),
    ("data.on_corrupt=skp", "data.on_corrupt='skp' is not valid; choose one of skip, error. Did you mean 'skip'?"),
    ("al.oracle=human", "al.oracle='human' is not valid; choose one of simulated, file."),
    ("al.initial=typclust", "al.initial='typclust' is not valid; choose one of random, typiclust, probcover, kcenter, auto."),
    ("select.committee=head", "select.committee='head' is not valid; choose one of mc_dropout, heads. Did you mean"),
    ("select.features=ssl", "select.features='ssl' is not valid; choose one of model, pretrained."),
])
def test_a_key_with_fixed_choices_is_checked_when_the_config_loads(override, message):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert message in str(err.value), str(err.value)


def test_every_key_with_fixed_choices_is_a_literal():
    """The keys with fixed choices are Literal types (else nothing checks them on load), defaults among them."""
    import dataclasses
    import typing

    for name, cls in config.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                assert getattr(cls(), f.name) in typing.get_args(hints[f.name]), f"{name}.{f.name}"
    literal = {f"{n}.{f.name}" for n, c in config.SECTIONS.items() for f in dataclasses.fields(c)
               if typing.get_origin(typing.get_type_hints(c)[f.name]) is typing.Literal}
    assert {"train.mode", "train.optimizer", "train.lr_schedule", "train.resident", "embed.dtype",
            "data.on_corrupt", "al.oracle", "al.initial", "select.committee", "select.features"} <= literal


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(bad)


def test_smoke_shrinks_everything():
    cfg = config.smoke(config.load(None, ["train.epochs=200", "al.budget=1000"]))
    assert cfg.train.epochs == 1 and cfg.al.rounds == 2 and cfg.al.budget <= 20 and cfg.data.pool_size <= 400


def test_readme_documents_every_config_key():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [f"{section}.{key}" for section, cls in config.SECTIONS.items()
               for key in cls.__dataclass_fields__ if f"`{section}.{key}`" not in readme]
    assert not missing, f"README's config table lacks {missing}"
    assert readme.index("make run") < 600 and readme.index("make test") < 600  # the two commands open it

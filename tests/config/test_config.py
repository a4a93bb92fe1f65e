from __future__ import annotations

import re

import pytest

from modtrain.config import config_from_dict, config_to_dict, load_config, save_config
from modtrain.errors import ModtrainError


def test_dotted_overrides_are_typed():
    c = load_config(None, ["model.mod.capacity=0.25", "train.lr=3e-4", "model.mod.enabled=true",
                           "model.mod.routed_layers=[0,2]"])
    assert c.model.mod.capacity == 0.25 and c.train.lr == pytest.approx(3e-4)
    assert c.model.routed_layer_ids == [0, 2]


def test_default_routing_is_every_other_block():
    c = load_config(None, ["model.mod.enabled=true", "model.num_layers=6"])
    assert c.model.routed_layer_ids == [1, 3, 5]


@pytest.mark.parametrize("override,message", [
    ("model.mod.capacty=0.5", "did you mean 'model.mod.capacity'"),
    ("trian.lr=1", "did you mean 'train.lr'"),
    ("model.mod.capacity=0", "outside (0, 1]"),
    ("model.mod.capacity=1.5", "outside (0, 1]"),
    ("data.seq_length=128", "larger than the model's model.max_seq_length=64"),
    ("train.lr=fast", "expects float"),
    ("model.num_layers=2.5", "expects int"),
    ("train.micro_batch_size=5", "not a multiple of train.micro_batch_size=5"),
    ("train.lr=0", "train.lr=0.0 is outside (0, inf)"),
    ("train.lr=-1e-3", "train.lr=-0.001 is outside (0, inf)"),
    ("train.min_lr=-1e-5", "train.min_lr=-1e-05 is outside [0, inf)"),
    ("model.dropout=1", "model.dropout=1.0 is outside [0, 1)"),
    ("model.dropout=-0.1", "model.dropout=-0.1 is outside [0, 1)"),
    ("model.init_std=0", "model.init_std=0.0 is outside (0, inf)"),
    ("train.beta1=1", "train.beta1=1.0 is outside [0, 1)"),
    ("train.beta2=-0.5", "train.beta2=-0.5 is outside [0, 1)"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 is outside [0, inf)"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0 is outside [0, inf)"),
    ("train.eps=0", "train.eps=0.0 is outside (0, inf)"),
    ("model.mod.router_bce_coef=-1", "model.mod.router_bce_coef=-1.0 is outside [0, inf)"),
    ("model.mod.predictor_loss_coef=-1", "predictor_loss_coef=-1.0 is outside [0, inf)"),
    ("model.moe.balance_loss_coef=-1", "model.moe.balance_loss_coef=-1.0 must be 0 or more"),
    ("model.moe.z_loss_coef=-1", "model.moe.z_loss_coef=-1.0 must be 0 or more"),
    ("model.mod.routed_layers=[1,1,3]", "routed_layers lists layer(s) [1] more than once"),
    ("model.rope_base=0", "model.rope_base=0.0 is outside (0, inf)"),
    ("model.norm_eps=-1e-5", "model.norm_eps=-1e-05 is outside (0, inf)"),
])
def test_bad_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(ModtrainError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


@pytest.mark.parametrize("overrides,message", [
    (["train.zero_stage=2"], "train.zero_stage=2 does not work with DeepSpeed's pipeline"),
    (["train.zero_stage=0"], "clips by a wrong gradient norm"),
])
def test_pipeline_refuses_zero_settings_deepspeed_gets_wrong(overrides, message):
    with pytest.raises(ModtrainError, match=message) as err:
        load_config(None, ["parallel.pipeline=2", *overrides])
    assert str(err.value).endswith("use train.zero_stage=1")
    load_config(None, ["parallel.pipeline=2", "train.zero_stage=0", "train.grad_clip=0"])


@pytest.mark.parametrize("key", ["data.document_mask", "data.reset_positions"])
def test_documents_in_a_row_refuse_pipeline_stages(key):
    with pytest.raises(ModtrainError, match="need parallel.pipeline=1"):
        load_config(None, ["parallel.pipeline=2", f"{key}=true"])
    load_config(None, ["parallel.pipeline=1", f"{key}=true"])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hiden_size: 64\n")
    with pytest.raises(ModtrainError, match="'model.hiden_size'; did you mean 'model.hidden_size'"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    c = load_config("configs/shakespeare_mod.yaml", ["train.steps=7"])
    save_config(c, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == c
    assert config_from_dict(config_to_dict(c)) == c


def test_shipped_configs_share_dimensions():
    dense = load_config("configs/shakespeare_dense.yaml")
    mod = load_config("configs/shakespeare_mod.yaml")
    assert not dense.model.mod.enabled and mod.model.mod.enabled
    for key in ("num_layers", "num_heads", "hidden_size", "max_seq_length"):
        assert getattr(dense.model, key) == getattr(mod.model, key)
    assert (dense.model.num_layers, dense.model.num_heads, dense.model.hidden_size) == (4, 4, 128)
    assert dense.train == mod.train and dense.data == mod.data


def test_steps_within_warm_up_are_warned_about():
    assert load_config(None, ["train.steps=200", "train.warmup_steps=100"]).warnings() == []
    (message,) = load_config(None, ["train.steps=50", "train.warmup_steps=100"]).warnings()
    assert message.startswith("train.steps=50 is not more than train.warmup_steps=100: "
                              "the whole run is warm-up")
    assert "set train.warmup_steps below 50 or raise train.steps" in message


def test_config_warnings_print_once_per_job(capsys):
    from modtrain.train.commands import print_config_warnings

    config = load_config(None, ["train.steps=5", "train.warmup_steps=10"])
    print_config_warnings(config, is_main=False)
    assert capsys.readouterr().err == ""
    print_config_warnings(config, is_main=True)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("modtrain: warning: train.steps=5 is not more than "
                           "train.warmup_steps=10")


MOE = ["model.moe.enabled=true"]


@pytest.mark.parametrize("overrides,message", [
    (["parallel.tensor=2"], "not with parallel.tensor=2 or parallel.pipeline=1"),
    (["parallel.pipeline=2"], "not with parallel.tensor=1 or parallel.pipeline=2"),
    (["train.zero_stage=3"], "use train.zero_stage=2"),
    (["parallel.expert=3"], "model.moe.num_experts=4 is not divisible by parallel.expert=3"),
    (["model.moe.top_k=3"], "model.moe.top_k=3; use 1 or 2"),
    (["model.moe.layers=odd"], "model.moe.layers='odd'; use all | every_other"),
    (["model.moe.capacity_factor=0"], "model.moe.capacity_factor=0.0 must be positive"),
    (["model.moe.enabled=false", "parallel.expert=2"], "parallel.expert=2 needs experts"),
])
def test_expert_layouts_deepspeed_cannot_run_are_refused(overrides, message):
    with pytest.raises(ModtrainError, match=re.escape(message)):
        load_config(None, [*MOE, *overrides])


def test_expert_configs_are_the_dense_model_with_experts():
    dense = load_config("configs/shakespeare_dense.yaml")
    for name, mod, noop in (("moe", False, 0), ("mode_staged", True, 0),
                            ("mode_integrated", False, 4)):
        config = load_config(f"configs/shakespeare_{name}.yaml")
        assert config.model.moe_layer_ids == [0, 1, 2, 3]
        assert config.model.mod.enabled is mod and config.model.moe.noop_experts == noop
        assert (config.model.hidden_size, config.model.num_layers) == (128, 4)
        assert config.train == dense.train and config.data == dense.data


@pytest.mark.parametrize("overrides,message", [
    (["train.loss_chunk_tokens=-1"], "train.loss_chunk_tokens=-1; use 0"),
    (["train.recompute=partial"], "train.recompute='partial'; use none | selective | full"),
    (["train.recompute=full", "train.recompute_layers=every_0"],
     "train.recompute_layers='every_0'; use all, every_N"),
    (["train.recompute=full", "train.recompute_layers=[7]"],
     "train.recompute_layers contains 7, but the model has 4 layers"),
])
def test_bad_memory_settings_are_refused(overrides, message):
    with pytest.raises(ModtrainError, match=re.escape(message)):
        load_config(None, overrides)


def test_recompute_layers_from_the_command_line():
    config = load_config(None, ["train.recompute=full", "train.recompute_layers=[3,1]"])
    assert config.train.recompute_layer_ids(config.model.num_layers) == [1, 3]
    config = load_config(None, ["train.recompute=full", "train.recompute_layers=every_2"])
    assert config.train.recompute_layer_ids(config.model.num_layers) == [0, 2]


BOMB = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
) + "train:\n  lr: *l8\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)  # 9**9 strings once expanded
    with pytest.raises(ModtrainError, match=r"bomb\.yaml:1:5: invalid YAML, YAML anchors"):
        load_config(path)
    with pytest.raises(ModtrainError, match="anchors .* and aliases .* are not allowed") as err:
        load_config(None, ["train.lr=[&a [1, 2], *a, *a]"])
    assert len(str(err.value)) < 300


def test_values_in_error_messages_are_capped():
    with pytest.raises(ModtrainError) as err:
        load_config(None, [f"train.precision={'x' * 10_000}"])
    assert len(str(err.value)) < 200 and "xxx…" in str(err.value)
    with pytest.raises(ModtrainError) as err:
        load_config(None, [f"train.lr=[{', '.join(['1'] * 10_000)}]"])
    assert len(str(err.value)) < 200


SP = ["parallel.sequence_parallel=true", "model.vocab_multiple=2"]


@pytest.mark.parametrize("overrides,message", [
    ([], "parallel.sequence_parallel=true needs parallel.tensor > 1"),
    (["parallel.tensor=2", "parallel.pipeline=2"],
     "does not work with parallel.pipeline=2 (pipeline stages pass whole sequences)"),
    (["parallel.tensor=2", "model.moe.enabled=true"], "not with parallel.tensor=2"),
    (["parallel.tensor=2", "data.seq_length=63"],
     "data.seq_length=63 is not divisible by parallel.tensor=2"),
    (["parallel.tensor=2", "data.document_mask=true"],
     "does not work with data.document_mask or data.reset_positions yet"),
    # k = ceil(0.1 * 64) = 7 routed tokens do not split over 2 ranks.
    (["parallel.tensor=2", "model.mod.enabled=true", "model.mod.capacity=0.1"],
     "model.mod.capacity=0.1 routes 7 of data.seq_length=64 tokens, not divisible by "
     "parallel.tensor=2"),
])
def test_sequence_parallel_layouts_it_cannot_run_are_refused(overrides, message):
    with pytest.raises(ModtrainError, match=re.escape(message)) as err:
        load_config(None, [*SP, *overrides])
    assert "\n" not in str(err.value)


def test_sequence_parallel_runs_where_the_sequence_and_the_routed_tokens_split():
    config = load_config(None, [*SP, "parallel.tensor=2", "model.mod.enabled=true",
                                "model.mod.capacity=0.125"])
    assert config.parallel.sequence_parallel
    # Without routed layers only the sequence length has to split.
    load_config(None, [*SP, "parallel.tensor=2", "model.mod.capacity=0.1"])

from __future__ import annotations

import numpy as np
import pytest

from modtrain.config import load_config
from modtrain.data.read.blend import BlendedSequences, BlendSchedule
from modtrain.data.read.dataset import BatchLoader, TrainSequences, train_val_split
from modtrain.data.read.loading import build_training_data
from modtrain.data.read.store import TokenStore
from modtrain.data.tokenizer import Tokenizer
from modtrain.data.write.build import write_store
from modtrain.data.write.prepare import prepare_store
from modtrain.errors import ModtrainError
from modtrain.train.inputs import check_inputs


@pytest.fixture(scope="module")
def second_store(tmp_path_factory, char_tokenizer, mixed_corpus):
    out = tmp_path_factory.mktemp("blend") / "mixed.zarr"
    return prepare_store(char_tokenizer, [mixed_corpus], out, jsonl_field="body")


def _parts(paths, seed=3):
    parts = []
    for i, p in enumerate(paths):
        s = TokenStore(p)
        parts.append(TrainSequences(s, train_val_split(s.num_tokens, 0.1)[0], 32, seed, stream=i))
    return parts


@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1, 2]])
def test_any_prefix_holds_each_store_in_proportion(weights):
    schedule = BlendSchedule(weights)
    target = np.asarray(weights) / sum(weights)
    for n in (10, 1000, 70_000, 200_001):
        taken = schedule.taken(n)
        assert taken.sum() == n
        assert np.all(np.abs(taken - target * n) <= 2), (n, taken)  # within 2 samples
    # locate() and taken() agree, and each store's samples come in order, none skipped
    seen = [[] for _ in weights]
    for g in range(3000):
        d, i = schedule.locate(g)
        seen[d].append(i)
    assert [len(s) for s in seen] == list(schedule.taken(3000))
    assert all(s == list(range(len(s))) for s in seen)


def test_blended_samples_come_from_their_stores(char_store, second_store):
    parts = _parts([char_store, second_store])
    blend = BlendedSequences(parts, [0.7, 0.3])
    counts = [0, 0]
    for g in range(3000):
        d, i = blend.schedule.locate(g)
        assert np.array_equal(blend[g], parts[d][i])
        counts[d] += 1
    assert abs(counts[0] / 3000 - 0.7) < 0.01 and abs(counts[1] / 3000 - 0.3) < 0.01
    again = BlendedSequences(_parts([char_store, second_store]), [0.7, 0.3])
    other = BlendedSequences(_parts([char_store, second_store], seed=4), [0.7, 0.3])
    assert all(np.array_equal(blend[g], again[g]) for g in range(50))
    assert not all(np.array_equal(blend[g], other[g]) for g in range(50))


def _config(tmp_path, *overrides):
    return load_config(None, [
        f"run.dir={tmp_path / 'run'}", "data.seq_length=32", "model.max_seq_length=32",
        "train.global_batch_size=6", "train.micro_batch_size=3", "train.eval_batches=2",
        "train.steps=100", *overrides])


def test_training_reads_a_blend_and_logs_its_proportions(tmp_path, char_store, second_store,
                                                         char_tokenizer):
    config = _config(tmp_path, f"data.stores=[{char_store},{second_store}]",
                     "data.weights=[3,1]", f"data.tokenizer={char_tokenizer}")
    sources = check_inputs(config)
    lines = []
    loader, val = build_training_data(config, sources, 0, 1, log=lines.append)
    (line,) = lines
    assert line.startswith("data blend over 600 samples: s.zarr 0.7500 (weight 0.7500")
    assert "mixed.zarr 0.2500 (weight 0.2500" in line
    assert len(val) == 12 and val[11].shape == (33,)
    assert val.sources() == [("s", range(0, 9)), ("mixed", range(9, 12))]  # by weight 3:1
    steps = [loader.next_step() for _ in range(4)]
    assert [m.shape for m in steps[0]] == [(3, 33), (3, 33)]
    state = loader.state_dict()
    resumed, _ = build_training_data(config, check_inputs(config), 0, 1, log=lines.append)
    resumed.load_state_dict(state)
    fresh, _ = build_training_data(config, check_inputs(config), 0, 1, log=lines.append)
    for _ in range(4):
        fresh.next_step()
    for _ in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(resumed.next_step(), fresh.next_step()))


def test_store_checks_are_one_line_errors(tmp_path, char_store, char_tokenizer):
    from modtrain.data.tokenizer import train_tokenizer

    few = tmp_path / "few.txt"
    few.write_text("abc\nabd\n")
    other = train_tokenizer([few], tmp_path / "other", "char")
    with pytest.raises(ModtrainError, match="was tokenized with a different tokenizer"):
        check_inputs(_config(tmp_path, f"data.store={char_store}", f"data.tokenizer={other}"))
    tok = Tokenizer(char_tokenizer)
    liar = write_store(tmp_path / "liar.zarr", [np.array([5, 1])], vocab_size=tok.vocab_size + 5,
                       tokenizer_sha256=tok.sha256, eos_id=1, sources=["x"])
    with pytest.raises(ModtrainError, match=f"has vocab_size {tok.vocab_size + 5} but tokenizer"):
        check_inputs(_config(tmp_path, f"data.store={liar}", f"data.tokenizer={char_tokenizer}"))
    ok = [f"data.store={char_store}", f"data.tokenizer={char_tokenizer}"]
    with pytest.raises(ModtrainError, match="model.vocab_size=10 is smaller"):
        check_inputs(_config(tmp_path, *ok, "model.vocab_size=10"))
    with pytest.raises(ModtrainError, match="data.weights needs data.stores"):
        check_inputs(_config(tmp_path, *ok, "data.weights=[1]"))
    with pytest.raises(ModtrainError, match="2 entries for 1 data.stores"):
        check_inputs(_config(tmp_path, *ok, f"data.stores=[{char_store}]", "data.weights=[1,2]"))
    with pytest.raises(ModtrainError, match="must be positive"):
        check_inputs(_config(tmp_path, *ok, f"data.stores=[{char_store}]", "data.weights=[0]"))


def test_loader_state_names_the_epoch(char_store):
    (seq,) = _parts([char_store])
    loader = BatchLoader(seq, 6, 6, 0, 1)
    steps = seq.windows_per_epoch // 6 + 1
    for _ in range(steps):
        loader.next_step()
    assert loader.state_dict()["epoch"] == 1
    assert loader.state_dict()["consumed_samples"] == steps * 6


def test_each_phase_of_a_schedule_holds_its_weights_and_stores_continue():
    from modtrain.data.read.blend import PhasedSchedule

    phases = [(40_000, [0.7, 0.3]), (90_000, [0.2, 0.8]), (None, [0.5, 0.5])]
    schedule = PhasedSchedule(phases)
    seen: list[list[int]] = [[], []]
    for start, (end, w) in zip([0, 40_000, 90_000], phases):
        stores = [schedule.locate(g) for g in range(start, end or 120_000)]
        n = len(stores)
        for d, store_w in enumerate(w):
            count = sum(1 for s, _ in stores if s == d)
            p = store_w / sum(w)
            assert abs(count - n * p) <= 4 * (n * p * (1 - p)) ** 0.5, (start, d, count)
        for d, i in stores:
            seen[d].append(i)
    # across the changes each store's samples go on where they stopped: none skipped or reused
    assert all(s == list(range(len(s))) for s in seen)
    assert list(schedule.taken(120_000)) == [len(s) for s in seen]
    assert list(schedule.taken(40_000)) == list(BlendSchedule([0.7, 0.3]).taken(40_000))


def test_resume_across_a_change_of_weights_is_exact(tmp_path, char_store, second_store,
                                                   char_tokenizer):
    schedule = "data.weights=[{until: 10, weights: [0.9, 0.1]}, {weights: [0.1, 0.9]}]"
    config = _config(tmp_path, f"data.stores=[{char_store},{second_store}]", schedule,
                     f"data.tokenizer={char_tokenizer}")
    loader, _ = build_training_data(config, check_inputs(config), 0, 1, log=lambda s: None)
    for _ in range(8):
        loader.next_step()
    state = loader.state_dict()
    resumed, _ = build_training_data(config, check_inputs(config), 0, 1, log=lambda s: None)
    resumed.load_state_dict(state)
    fresh, _ = build_training_data(config, check_inputs(config), 0, 1, log=lambda s: None)
    for _ in range(8):
        fresh.next_step()
    for _ in range(5):  # steps 9-13: the weights change after step 10
        assert all(np.array_equal(a, b) for a, b in zip(resumed.next_step(), fresh.next_step()))
    blend = fresh.sequences
    assert [blend.schedule.locate(g)[0] for g in range(60)].count(0) == 54  # 0.9 of 60
    assert [blend.schedule.locate(g)[0] for g in range(60, 120)].count(1) == 54
    plain = _config(tmp_path, f"data.stores=[{char_store},{second_store}]",
                    "data.weights=[0.9, 0.1]", f"data.tokenizer={char_tokenizer}")
    assert blend.fingerprint != build_training_data(
        plain, check_inputs(plain), 0, 1, log=lambda s: None)[0].sequences.fingerprint


@pytest.mark.parametrize("weights, message", [
    ("[{until: 10, weights: [1, 1]}]", "every phase but the last needs 'until'"),
    ("[{until: 10, weights: [1, 1]}, {until: 5, weights: [1, 1]}, {weights: [1, 1]}]",
     "must increase"),
    ("[{until: 10, weights: [1]}, {weights: [1, 1]}]", "has 1 entries for 2"),
    ("[{until: 10, mix: [1, 1]}, {weights: [1, 1]}]", "is not {until: STEP"),
])
def test_bad_schedules_are_one_line_errors(tmp_path, char_store, second_store, char_tokenizer,
                                           weights, message):
    config = _config(tmp_path, f"data.stores=[{char_store},{second_store}]",
                     f"data.weights={weights}", f"data.tokenizer={char_tokenizer}")
    with pytest.raises(ModtrainError, match=message):
        check_inputs(config)

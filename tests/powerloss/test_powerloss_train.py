"""Power cuts during ``aegis-ckpt train`` (guarantees 1, 7 and 9): one real run of the tiny config is recorded
in-process, operation by operation, from the empty output directory to the completion record. Its crash states
are then checked where the run writes files of its own (the tokenizer cache; the final checkpoint, the final-model
export and ``completed.json``), and restarts from cuts at several moments must finish by themselves with the
weights of the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from crashcheck import Expect, check_recording
from recorder import Recorder
from safetensors.torch import load_file
from simfs import SimFS

from aegis_ckpt.runstate.completion import read_completion
from aegis_ckpt.storage.layout import AEGIS_DIR, COMPLETED_NAME, FINAL_MODEL_DIR, MODEL_WEIGHTS
from aegis_ckpt.train.builders import TOKENIZER_CACHE_DIR, build_tokenizer, load_cached_tokenizer
from aegis_ckpt.train.config import load_config
from aegis_ckpt.train.runner import run_training

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 4
SMALL = [
    "model.config={n_layer: 1, n_head: 2, n_embd: 32}",
    "tokenizer.vocab_size=300",
    "data.block_size=32",
    "data.max_samples=64",
    "training.per_device_train_batch_size=4",
    "training.logging_steps=100",
    "training.warmup_steps=1",
    f"training.max_steps={MAX_STEPS}",
    "checkpoint.save_interval_sec=1000000",
    "resume.verify=full",
]


def tiny_config(out: Path):
    return load_config(REPO / "configs" / "tiny.yaml", [*SMALL, f"training.output_dir={out}"])


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / FINAL_MODEL_DIR / MODEL_WEIGHTS)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """One uninterrupted ``aegis-ckpt train`` run, recorded from the empty output directory to the end."""
    out = tmp_path_factory.mktemp("train") / "out"
    out.mkdir()
    with Recorder(out) as rec:
        result = run_training(tiny_config(out))
        rec.mark("done")
    assert result.status == "finished" and result.step == MAX_STEPS
    return rec, out, final_weights(out)


def _index(rec: Recorder, predicate) -> int:
    return next(i for i, op in enumerate(rec.ops) if predicate(op))


def test_power_cut_while_the_tokenizer_cache_is_written(recorded_run, scratch):
    """Up to the tokenizer cache's rename into place (and a little beyond): the cache is complete or absent,
    and when present it loads as the tokenizer that was trained."""
    rec, out, _ = recorded_run
    published = _index(rec, lambda op: op.kind == "rename" and op.dst == TOKENIZER_CACHE_DIR)
    expected = load_cached_tokenizer(out / TOKENIZER_CACHE_DIR).get_vocab()

    def cache_loads(state_dir: Path, cut: int, family: str) -> list[str]:
        cache = state_dir / TOKENIZER_CACHE_DIR
        if not (cache / "tokenizer.json").exists():
            # publish_dir's last step (the folder flush) follows the rename: from there on the cache is durable
            return [] if cut <= published or family != "durable" else ["the published cache was lost"]
        from transformers import PreTrainedTokenizerFast

        try:
            vocab = PreTrainedTokenizerFast.from_pretrained(str(cache)).get_vocab()
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            return [f"the tokenizer cache does not load: {type(e).__name__}: {e}"]
        return [] if vocab == expected else ["the tokenizer cache holds another tokenizer"]

    report = check_recording(
        rec, Expect(resume=False), scratch, cache_loads, cuts=range(published + 4), per_cut=True
    )
    print(report.summary())
    assert not report.problems, report.summary()
    assert report.distinct >= 10


def test_a_cache_that_does_not_load_is_rebuilt(recorded_run, tmp_path):
    """A tokenizer cache cut short by an older version (an empty tokenizer.json under its final name) is built
    again, the same as before, instead of failing every restart."""
    _, out, _ = recorded_run
    cfg = tiny_config(tmp_path)
    cache = tmp_path / TOKENIZER_CACHE_DIR
    build_tokenizer(cfg.tokenizer, cfg.model, ["a few words"], tmp_path)  # any cache, then damage it
    (cache / "tokenizer.json").write_bytes(b"")
    from aegis_ckpt.train.builders import read_texts

    rebuilt = build_tokenizer(cfg.tokenizer, cfg.model, read_texts(cfg.data), tmp_path)
    assert rebuilt.get_vocab() == load_cached_tokenizer(out / TOKENIZER_CACHE_DIR).get_vocab()
    assert load_cached_tokenizer(cache).get_vocab() == rebuilt.get_vocab(), "the rebuilt cache replaced it"


def test_power_cut_during_the_final_save_export_and_completion(recorded_run, scratch):
    """From the final checkpoint's save to the end: resume finds the final checkpoint or the state before it,
    ``completed.json`` never names a model that is not durable, and once the run returned, everything is."""
    rec, _, _ = recorded_run
    start = _index(rec, lambda op: op.kind == "mkdir" and op.path == f"checkpoint-{MAX_STEPS}")
    report = check_recording(
        rec, Expect(new_step=MAX_STEPS, done_mark="done"), scratch, cuts=range(start, len(rec.ops))
    )
    print(report.summary())
    assert not report.problems, report.summary()
    assert report.distinct >= 30


def _cut_points(rec: Recorder) -> dict[str, int]:
    """Moments of the run to cut at (op index after which the power goes)."""
    tokenizer = _index(rec, lambda op: op.kind == "rename" and op.dst == TOKENIZER_CACHE_DIR)
    manifest = _index(
        rec, lambda op: op.kind == "rename" and op.dst == f"checkpoint-{MAX_STEPS}/aegis_manifest.json"
    )
    export = _index(rec, lambda op: op.kind == "rename" and op.dst == FINAL_MODEL_DIR)
    completed = _index(rec, lambda op: op.kind == "rename" and op.dst == f"{AEGIS_DIR}/{COMPLETED_NAME}")
    return {
        "before the first step": tokenizer + 1,
        "during the final checkpoint's commit": manifest - 1,
        "during the final-model export": export,
        "right after the completion record": completed + 1,  # its folder flushed: the record is durable
    }


RESTARTS = [
    ("before the first step", "meta"),
    ("during the final checkpoint's commit", "durable"),
    ("during the final-model export", "durable"),
    ("right after the completion record", "durable"),
]


@pytest.mark.parametrize(("moment", "family"), RESTARTS)
def test_a_restart_after_a_power_cut_finishes_with_the_uninterrupted_weights(
    recorded_run, tmp_path, moment, family
):
    """The state a power cut at ``moment`` leaves (``family``, see ``simfs``) is restarted with the same
    command: it finishes by itself (or says it already had) with a final model identical to the uninterrupted
    run's."""
    rec, _, reference = recorded_run
    cut = _cut_points(rec)[moment]
    fs = SimFS(rec.initial)
    for op in rec.ops[: cut + 1]:
        fs.apply(op)
    files = dict(fs.crash_states())[family]
    out = tmp_path / "out"
    out.mkdir()
    for rel in sorted(files, key=lambda r: r.count("/")):
        if files[rel] is None:
            (out / rel).mkdir(exist_ok=True)
        else:
            (out / rel).write_bytes(files[rel])
    result = run_training(tiny_config(out))
    assert result.step == MAX_STEPS, result
    assert read_completion(out) is not None
    got = final_weights(out)
    assert got.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(got[k], reference[k])]
    assert not differ, f"weights differ from the uninterrupted run: {differ}"
